"""The web page in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium) against the real API, Celery worker, query worker and Redis: a wrong key reads as
a sentence; a key, an upload that reaches READY in the list, a question whose answer streams
in (the same greedy answer as the REST endpoint), an evidence thumbnail that seeks the player
into its span, a transcript, a search hit that opens the video at its time. Screenshots of the
video page (desk and phone width) go to docs/."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT

from .conftest import auth

CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
QUESTION = "What color was the first card?"


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/setup.sh installs them "
                    "with apt-get; this machine could not)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def wait(fn, timeout: float = 30, what: str = "", page=None):
    """fn's first truthy value; on timeout, what it waited for and the page's error banner.
    An element the page replaced meanwhile (the list redraws a row on every progress event)
    counts as not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            got = fn()
        except (StaleElementReferenceException, NoSuchElementException):
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            banner = page.execute_script("return document.getElementById('error').textContent") if page else ""
            raise AssertionError(f"timed out waiting for {what}; the page says: {banner!r}")
        time.sleep(0.1)


def test_web_page_upload_ask_seek_search(api, browser, service_env, videos):
    from selenium.webdriver.common.by import By

    from videokv.api.auth import KeyRing
    key = KeyRing(service_env["home"]).create("web")            # its own tenant: the upload is ingested
    d = browser
    js = d.execute_script
    d.get(api.url + "/")
    assert "videokv" in d.title

    # A wrong key: a sentence, not a blank page.
    d.find_element(By.ID, "key").send_keys("vkv_not-a-key")
    d.find_element(By.ID, "key-use").click()
    err = wait(lambda: d.find_element(By.ID, "error").is_displayed() and d.find_element(By.ID, "error").text,
               what="the error banner")
    assert "refused this API key" in err and "invalid API key" in err

    d.find_element(By.ID, "key").send_keys(key)
    d.find_element(By.ID, "key-use").click()
    wait(lambda: d.find_elements(By.ID, "upload-file"), what="the videos view")
    assert not d.find_element(By.ID, "error").is_displayed()
    assert js("return sessionStorage.getItem('videokv-key')") == key       # the tab's session only
    assert js("return localStorage.length") == 0

    # Upload with a subtitles file; the list follows the ingest live (server-sent events) to READY.
    subs = service_env["work"] / "web.srt"
    subs.write_text("1\n00:00:06,000 --> 00:00:09,000\nA red card comes in\n\n"
                    "2\n00:00:21,500 --> 00:00:24,000\nThen a purple square\n")
    d.find_element(By.ID, "upload-file").send_keys(str(videos["a"]))
    d.find_element(By.ID, "upload-subs").send_keys(str(subs))
    d.find_element(By.ID, "upload-go").click()
    row_id = wait(lambda: [r.get_attribute("id") for r in d.find_elements(By.CSS_SELECTOR, "#video-table tbody tr")
                           if "a.mp4" in r.text], what="the uploaded video's row", page=d)[0]
    vid = row_id[2:]
    wait(lambda: "READY" in d.find_element(By.ID, f"v-{vid}").text, 180, "READY in the list")
    assert js("return document.getElementById('upload-progress').value") == 1

    # The video page: the player plays the original file through a signed link (Range).
    d.find_element(By.LINK_TEXT, "a.mp4").click()              # routed on hashchange, a moment later
    wait(lambda: js("const p = document.getElementById('player'); return p && p.readyState >= 1"),
         what="the player's metadata")
    assert js("return document.getElementById('player').duration") > 20
    lines = wait(lambda: d.find_elements(By.CSS_SELECTOR, "#transcript .line"), what="the transcript")
    assert [x.text for x in lines] == ["0:06 subtitle: A red card comes in", "0:21 subtitle: Then a purple square"]

    # Ask: the answer streams in token by token and ends as the REST endpoint's answer.
    js("""window.seen = []; const a = document.getElementById('answer');
          new MutationObserver(() => window.seen.push(a.textContent)).observe(a, {childList: true, subtree: true,
                                                                                   characterData: true});""")
    d.find_element(By.ID, "question").send_keys(QUESTION)
    d.find_element(By.ID, "ask-go").click()
    thumbs = wait(lambda: d.find_elements(By.CSS_SELECTOR, "#thumbs .thumb"), 120, "evidence thumbnails")
    direct = httpx.post(f"{api.url}/v1/videos/{vid}/query", headers=auth(key), timeout=120,
                        json={"question": QUESTION, "mode": "bilevel"}).json()
    assert d.find_element(By.ID, "answer").text == direct["answer"]
    partial = [s for s in js("return window.seen") if s and s != direct["answer"]]
    assert len(set(partial)) >= 2, js("return window.seen")                  # it grew piece by piece
    assert len(thumbs) == len(direct["evidence"])
    wait(lambda: js("return [...document.querySelectorAll('#thumbs img')].every(i => i.complete && "
                    "i.naturalWidth > 0)"), what="the thumbnails' frames")

    # A thumbnail seeks the player into its evidence span.
    last = thumbs[-1]
    span = float(last.get_attribute("data-t-start")), float(last.get_attribute("data-t-end"))
    assert span[0] > 0
    last.click()
    wait(lambda: span[0] <= js("return document.getElementById('player').currentTime") <= span[1],
         what=f"the player's time in {span}")
    # A transcript line seeks there too.
    lines[1].click()
    wait(lambda: abs(js("return document.getElementById('player').currentTime") - 21.5) < 0.1,
         what="the player at the second subtitle")
    docs = ROOT / "docs"
    d.save_screenshot(str(docs / "web_video_page.png"))
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",                 # a phone, 390 px wide
                      {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    wide = js("return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 391)"
              ".map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 8)")
    assert js("return document.documentElement.scrollWidth") <= 390, wide    # no sideways scrolling
    d.save_screenshot(str(docs / "web_video_page_phone.png"))
    d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    # Search, and open a hit at its time.
    d.find_element(By.LINK_TEXT, "Search").click()
    wait(lambda: d.find_elements(By.ID, "search-q"), what="the search page")[0].send_keys("a card")
    d.find_element(By.ID, "search-go").click()
    hits = wait(lambda: d.find_elements(By.CSS_SELECTOR, "#hits a.hit"), 60, "search hits")
    target = [h for h in hits if vid in h.get_attribute("href")][0]
    t = float(target.get_attribute("href").split("t=")[1])
    target.click()
    wait(lambda: js("const p = document.getElementById('player'); return p && p.readyState >= 1"), what="the hit's video")
    wait(lambda: abs(js("return document.getElementById('player').currentTime") - t) < 0.5, what="the hit's time")
    assert not d.find_element(By.ID, "error").is_displayed()

    # A batch job from the page, followed to DONE.
    d.find_element(By.LINK_TEXT, "Jobs").click()
    wait(lambda: d.find_elements(By.CSS_SELECTOR, "#job-videos input"), what="the READY videos")
    d.find_element(By.ID, "job-questions").send_keys("What shape came last?")
    d.find_element(By.ID, "job-go").click()
    wait(lambda: "DONE" in d.find_element(By.ID, "job-table").text, 120, "the job DONE", page=d)
    assert "1/1" in d.find_element(By.ID, "job-table").text


def test_original_file_ranges_signed_links_and_tenants(api, keys, videos):
    """The file the player streams: Range requests (206), a signed link for the owner's video
    only, another tenant's key a 404."""
    with httpx.Client(base_url=api.url, timeout=30) as c:
        vid = c.post("/v1/videos", headers=auth(keys["acme"]),
                     files={"file": ("a.mp4", videos["a"].read_bytes(), "video/mp4")}).json()["id"]
        data = videos["a"].read_bytes()
        part = c.get(f"/v1/videos/{vid}/file", headers={**auth(keys["acme"]), "Range": "bytes=100-1099"})
        assert part.status_code == 206 and part.content == data[100:1100]
        assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
        assert part.headers["content-type"] == "video/mp4"
        links = c.get(f"/v1/videos/{vid}/media", headers=auth(keys["acme"])).json()
        whole = c.get(links["file_url"])                                   # no key: the signature
        assert whole.status_code == 200 and whole.content == data
        frame = c.get(links["frame_url"] + "&t=1.5&max_side=64")
        assert frame.status_code == 200 and frame.content[:2] == b"\xff\xd8"
        assert c.get(f"/v1/videos/{vid}/file", headers=auth(keys["globex"])).status_code == 404
        assert c.get(f"/v1/videos/{vid}/media", headers=auth(keys["globex"])).status_code == 404
        forged = links["file_url"].replace("sig=", "sig=0")
        bad = c.get(forged)
        assert bad.status_code == 403 and bad.json()["code"] == "bad_media_link"
        exp = int(links["file_url"].split("exp=")[1].split("&")[0])
        later = links["file_url"].replace(f"exp={exp}", f"exp={exp + 1}")   # the expiry is signed too
        assert c.get(later).status_code == 403
        assert c.get(f"/v1/videos/{vid}/file").status_code == 401
        page = c.get("/")
        assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
