"""An OpenAI-compatible face: `GET /v1/models`, `POST /v1/chat/completions`, for the client
libraries developers already use. The video goes in the last user message the way
OpenAI-compatible servers take videos:

    {"role": "user", "content": [{"type": "text", "text": "What happens first?"},
                                 {"type": "video_url", "video_url": {"url": "videokv://VIDEO_ID"}}]}

The question is that message's text; the answer is decoded by the query workers from the
video's stored KV exactly as `POST /v1/videos/{id}/query` does (temperature 0: the same
greedy answer). `max_tokens`, `temperature`, `top_p`, `seed` and `stop` are honoured;
evidence, timings and the context's levels are in the extension field `videokv`. Errors are
OpenAI's shape: {"error": {"message", "type", "param", "code"}}, with the same API keys.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from videokv.errors import VideoKVError
from videokv.kvstore import Status

from ..problems import Problem

VIDEO_SCHEME = "videokv://"
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 409: "invalid_request_error", 413: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_error"}


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")       # OpenAI clients send fields we have no use for
    model: str = ""
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None


class OpenAIErrorBody(BaseModel):
    class Detail(BaseModel):
        message: str
        type: str
        param: str | None = None
        code: str | None = None
    error: Detail


def openai_errors(*statuses: int) -> dict:
    return {s: {"model": OpenAIErrorBody, "description": "an error in OpenAI's shape"} for s in statuses}


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def response(self) -> JSONResponse:
        kind = ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return JSONResponse({"error": {"message": self.message, "type": kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


def question_and_video(messages: list[dict]) -> tuple[str, str]:
    """The last user message's text and the id of its videokv:// video."""
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise OpenAIError(400, "messages has no user message", "invalid_messages", "messages")
    content = users[-1].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    texts, videos = [], []
    for p in parts if isinstance(parts, list) else []:
        if isinstance(p, dict) and p.get("type") == "text":
            texts.append(str(p.get("text", "")))
        elif isinstance(p, dict) and p.get("type") == "video_url":
            url = (p.get("video_url") or {}).get("url", "") if isinstance(p.get("video_url"), dict) else ""
            if not url.startswith(VIDEO_SCHEME):
                raise OpenAIError(400, f"video_url must be {VIDEO_SCHEME}VIDEO_ID (upload the video to "
                                       f"POST /v1/videos first); got {url[:80]!r}", "invalid_video_url", "messages")
            videos.append(url[len(VIDEO_SCHEME):])
    question = " ".join(t.strip() for t in texts if t.strip())
    if not videos:
        raise OpenAIError(400, "the last user message has no video: add {\"type\": \"video_url\", \"video_url\": "
                               "{\"url\": \"videokv://VIDEO_ID\"}} to its content", "missing_video", "messages")
    if len(set(videos)) > 1:
        raise OpenAIError(400, "one video per question", "too_many_videos", "messages")
    if not question:
        raise OpenAIError(400, "the last user message has no text to answer", "missing_question", "messages")
    return question, videos[0]


def router(svc, models) -> APIRouter:
    r = APIRouter(tags=["openai"])

    def model_name() -> str:
        from videokv.workers.questions import announced_engine
        try:
            engine = announced_engine(svc.questions.r, svc.names) or {}
        except Exception:                   # noqa: BLE001
            engine = {}
        return engine.get("model") or svc.settings.model

    def tenant(request: Request) -> str:
        try:
            return svc.tenant(request)
        except VideoKVError as e:
            raise OpenAIError(int(getattr(e, "http_status", 401)), str(e), e.code) from None

    @r.get("/v1/models", description="The model the query workers answer with (OpenAI's list shape).",
           responses=openai_errors(401))
    async def list_models(request: Request):
        try:
            tenant(request)
        except OpenAIError as e:
            return e.response()
        return {"object": "list", "data": [{"id": model_name(), "object": "model", "created": 0,
                                            "owned_by": "videokv"}]}

    @r.post("/v1/chat/completions", description="OpenAI chat completions over a stored video: the last user "
                                                "message's text, and its video as videokv://VIDEO_ID.",
            responses={200: {"content": {"text/event-stream": {}}}, **openai_errors(400, 401, 404, 409, 413, 503, 504)},
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                "schema": ChatRequest.model_json_schema()}}}})
    async def chat_completions(request: Request):
        try:
            t = tenant(request)
            try:
                body = ChatRequest.model_validate(json.loads(await request.body() or b"{}"))
            except (ValueError, ValidationError) as e:
                raise OpenAIError(400, f"invalid request: {e}", "invalid_request") from None
            question, video_id = question_and_video(body.messages)
            svc.check_question(question)
            rec = svc.owned(video_id, t)
            if rec.status is not Status.READY:
                raise OpenAIError(409, f"video {video_id} is {rec.status.value}: ask again once it is READY",
                                  "video_not_ready")
        except OpenAIError as e:
            return e.response()
        except Problem as e:
            return OpenAIError(e.status, e.detail, e.code).response()
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        ask = _Asked(question=question, max_new_tokens=body.max_completion_tokens or body.max_tokens or 48)
        sampling = {"temperature": body.temperature, "top_p": body.top_p, "seed": body.seed, "stop": stop[:4]}
        cid, created, name = f"chatcmpl-{secrets.token_hex(12)}", int(time.time()), body.model or model_name()
        if not body.stream:
            try:
                d = await svc.ask(video_id, ask, sampling=sampling)
            except Problem as e:
                return OpenAIError(e.status, e.detail, e.code).response()
            n = d.get("answer_tokens", 0)
            return {"id": cid, "object": "chat.completion", "created": created, "model": name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": d["answer"]},
                                 "finish_reason": d.get("finish_reason") or "stop"}],
                    "usage": {"prompt_tokens": d.get("context_tokens", 0), "completion_tokens": n,
                              "total_tokens": d.get("context_tokens", 0) + n},
                    "videokv": _extension(d)}
        return await _stream(svc, video_id, ask, sampling, cid, created, name)

    return r


class _Asked:
    """A question as Service.ask takes it (the fields of a QueryRequest, defaults but two)."""

    def __init__(self, question: str, max_new_tokens: int):
        self.question, self.max_new_tokens = question, max_new_tokens
        self.top_k, self.mode, self.count_by, self.when_by = None, "bilevel", None, None


def _extension(d: dict) -> dict:
    return {k: d.get(k) for k in ("video_id", "evidence", "timings", "kv_bytes_loaded", "context_tokens", "levels",
                                  "policy", "mode", "video_prefill_runs")}


async def _stream(svc, video_id: str, ask: _Asked, sampling: dict, cid: str, created: int, name: str):
    """text/event-stream of chat.completion.chunk objects, then `data: [DONE]`; refused before
    its first token (no query worker, ...): an OpenAI error response instead."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    answer = asyncio.ensure_future(svc.ask(video_id, ask, on_token=lambda p: loop.call_soon_threadsafe(
        q.put_nowait, p), sampling=sampling))
    answer.add_done_callback(lambda _f: q.put_nowait(None))
    head = await q.get()
    if head is None and isinstance(answer.exception(), Problem):
        e = answer.exception()
        return OpenAIError(e.status, e.detail, e.code).response()

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        return "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                      "model": name, "choices": [{"index": 0, "delta": delta,
                                                                  "finish_reason": finish}], **extra}) + "\n\n"

    async def gen():
        yield chunk({"role": "assistant", "content": ""})
        piece = head
        while piece is not None:
            yield chunk({"content": piece})
            piece = await q.get()
        try:
            d = answer.result()
            yield chunk({}, d.get("finish_reason") or "stop", videokv=_extension(d))
        except Problem as e:              # headers are sent: the failure is an error event
            kind = ERROR_TYPES.get(e.status, "server_error")
            yield "data: " + json.dumps({"error": {"message": e.detail, "type": kind, "code": e.code}}) + "\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
