"""The text channel through the service: form fields and a subtitle file at upload, the
channel report on the video, GET /v1/videos/{id}/transcript; bad input is a 4xx that
stores and queues nothing. Real Redis, a real worker, the real API."""

from __future__ import annotations

from .conftest import auth, wait_status
from .test_api import _problem

SRT = """1
00:00:02,000 --> 00:00:05,500
The referee blows the whistle.

2
00:00:21,000 --> 00:00:24,000
<i>A corner kick for the home side.</i>
"""


def _upload(client, key, path, subtitles: tuple | None = None, **fields):
    files = {"file": (path.name, open(path, "rb"), "video/mp4")}
    if subtitles:
        files["subtitles_file"] = subtitles
    return client.post("/v1/videos", headers=auth(key), files=files, data={k: str(v) for k, v in fields.items()})


def test_subtitles_upload_transcript_and_bad_text_input(svc, worker, app_client, keys, videos, tmp_path):
    from videokv.api.auth import KeyRing
    k = KeyRing(svc["home"]).create("subtitled")    # its own tenant: other tests' uploads stay theirs
    # Bad input first: nothing may be stored or queued.
    before = len(app_client.get("/v1/videos", headers=auth(k)).json()["videos"])
    body = _problem(_upload(app_client, k, videos["a"], subtitles=("subs.srt", b"1\nnot a time\nhello\n")), 422)
    assert body["code"] == "bad_subtitles" and "subtitles_file" in body["detail"]
    body = _problem(_upload(app_client, k, videos["a"], ocr="perhaps"), 422)
    assert "ocr" in body["detail"] and "true or false" in body["detail"]
    assert len(app_client.get("/v1/videos", headers=auth(k)).json()["videos"]) == before
    assert svc["redis"].client().llen("ingest") == 0
    tmp = svc["home"] / "uploads" / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir())

    r = _upload(app_client, k, videos["a"], subtitles=("match.srt", SRT.encode()), ocr="false", asr="false")
    assert r.status_code == 202, r.text
    vid = r.json()["id"]
    v = wait_status(app_client, vid, k)
    assert v["status"] == "READY", v
    assert v["text_channels"]["subtitle"]["ran"] and v["text_channels"]["subtitle"]["segments"] == 2
    assert not v["text_channels"]["ocr"]["ran"] and not v["text_channels"]["asr"]["ran"]

    t = app_client.get(v["transcript_url"], headers=auth(k))
    assert t.status_code == 200, t.text
    segs = t.json()["segments"]
    assert [s["source"] for s in segs] == ["subtitle", "subtitle"]
    assert segs[0]["text"] == "The referee blows the whistle." and segs[0]["t_start"] == 2.0
    assert segs[1]["text"] == "A corner kick for the home side." and segs[1]["t_end"] == 24.0
    # chunks of 4 frames at 1 fps: 2 s is in chunk 0, 21 s in chunk 5
    assert [s["chunk"] for s in segs] == [0, 5]

    # Search is hybrid too: the subtitled chunk is among the top 3, within the video and
    # across the tenant's videos (8 chunks: too few for a sure rank 1, see query/retrieval.py;
    # tests/query/test_text_e2e.py checks rank 1 on a 10-minute video).
    for scope in ({"video_ids": [vid]}, {}):
        r = app_client.post("/v1/search", headers=auth(k),
                            json={"query": "a corner kick for the home side", "top_k": 3, **scope})
        assert r.status_code == 200, r.text
        assert (vid, 5) in [(h["video_id"], h["chunk"]) for h in r.json()["results"]], r.json()

    # The same file without subtitles is another content (its KVs differ): a new video.
    r = _upload(app_client, k, videos["a"], subtitles=None)
    assert r.json()["id"] != vid
    # ... and with the same subtitles again it is the same video.
    r = _upload(app_client, k, videos["a"], subtitles=("again.srt", SRT.encode()))
    assert r.status_code == 200 and r.json()["id"] == vid and r.json()["deduplicated"]

    # Another tenant cannot read it.
    _problem(app_client.get(f"/v1/videos/{vid}/transcript", headers=auth(keys["globex"])), 404)
