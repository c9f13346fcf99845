"""The OpenAI-compatible endpoint with the official `openai` client: a real uvicorn API, the
real query worker and Redis. Its greedy answers are /v1/videos/{id}/query's, streamed or not;
a video the caller cannot see and a bad key are OpenAI-shaped errors with the right status."""

from __future__ import annotations

import httpx
import openai
import pytest

from .conftest import auth, wait_status

QUESTION = "What color was the first card?"


@pytest.fixture(scope="module")
def ready_video(api, keys, videos):
    r = httpx.post(api.url + "/v1/videos", headers=auth(keys["acme"]),
                   files={"file": ("oa.mp4", videos["a"].read_bytes(), "video/mp4")})
    assert r.status_code in (200, 202), r.text
    vid = r.json()["id"]
    assert wait_status(httpx.Client(base_url=api.url), vid, keys["acme"], timeout=180)["status"] == "READY"
    return vid


def message(vid: str, text: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "video_url", "video_url": {"url": f"videokv://{vid}"}}]}]


def test_openai_client_gets_the_query_endpoints_answer_streamed_or_not(api, keys, ready_video):
    client = openai.OpenAI(base_url=api.url + "/v1", api_key=keys["acme"], max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == ["smollm2"]
    direct = httpx.post(f"{api.url}/v1/videos/{ready_video}/query", headers=auth(keys["acme"]), timeout=120,
                        json={"question": QUESTION, "max_new_tokens": 10}).json()
    done = client.chat.completions.create(model="smollm2", messages=message(ready_video), max_tokens=10,
                                          temperature=0)
    assert done.choices[0].message.content == direct["answer"] and direct["answer"]
    assert done.choices[0].finish_reason == ("length" if direct["answer_tokens"] >= 10 else "stop")
    assert done.usage.completion_tokens == direct["answer_tokens"] > 0
    short = client.chat.completions.create(model="smollm2", messages=message(ready_video), max_tokens=2,
                                           temperature=0)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    ext = done.model_extra["videokv"]
    assert ext["evidence"] and ext["video_id"] == ready_video and ext["video_prefill_runs"] == 0
    pieces, last = [], None
    for chunk in client.chat.completions.create(model="smollm2", messages=message(ready_video), max_tokens=10,
                                                temperature=0, stream=True):
        pieces.append(chunk.choices[0].delta.content or "")
        last = chunk
    assert "".join(pieces).strip() == direct["answer"] and len(pieces) > 2
    assert last.choices[0].finish_reason == done.choices[0].finish_reason and last.model_extra["videokv"]["evidence"]
    # A stop string ends the answer before it.
    cut = direct["answer"].split()[-1]
    stopped = client.chat.completions.create(model="smollm2", messages=message(ready_video), max_tokens=10,
                                             temperature=0, stop=[cut])
    assert cut not in stopped.choices[0].message.content
    assert direct["answer"].startswith(stopped.choices[0].message.content.strip())


def test_openai_errors_have_openais_shape_and_status(api, keys, ready_video):
    bad = openai.OpenAI(base_url=api.url + "/v1", api_key="vkv_not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="smollm2", messages=message(ready_video))
    assert e.value.status_code == 401 and e.value.body["type"] == "authentication_error"
    other = openai.OpenAI(base_url=api.url + "/v1", api_key=keys["globex"], max_retries=0)
    for vid in (ready_video, "0123456789ab"):                      # another tenant's, and none at all
        with pytest.raises(openai.NotFoundError) as e:
            other.chat.completions.create(model="smollm2", messages=message(vid))
        assert e.value.status_code == 404 and e.value.body["code"] == "video_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        other.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "no video here"}])
    assert e.value.body["code"] == "missing_video" and "videokv://" in e.value.body["message"]
