"""Request and response bodies. Requests are validated (a bad body is a 422 problem, never a
500); every endpoint declares its response model, so /openapi.json documents every body.

The question limit is a setting (VIDEOKV_MAX_QUESTION_CHARS), so the request models are made
per app with that limit in their schema (`request_models`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from videokv.query.answers import COUNT_BY, MODES, WHEN_BY
from videokv.query.moments import SOURCES

Mode = Literal[MODES]
CountBy = Literal[COUNT_BY]
WhenBy = Literal[WHEN_BY]
# Ids as the service makes them (video: 12 hex, job: 16 hex); anything else is no such object.
VIDEO_ID = r"^[0-9a-f]{12}$"
JOB_ID = r"^[0-9a-f]{16}$"
VideoId = Annotated[str, StringConstraints(min_length=12, max_length=12, pattern=VIDEO_ID)]
COUNT_BY_HELP = ('who answers "how many times" questions: the span counter over the oracle\'s frame scores '
                 '("oracle", the default where calibrated) or the LLM ("lm")')
WHEN_BY_HELP = ('who answers "when" questions: the best moment\'s span, to a frame ("moments") or the LLM '
                '("lm"); default: VIDEOKV_WHEN_BY')


# ---------------------------------------------------------------- requests
class RequestModels(NamedTuple):
    QueryRequest: type[BaseModel]
    SearchRequest: type[BaseModel]
    JobRequest: type[BaseModel]


@lru_cache(maxsize=8)
def request_models(max_question_chars: int = 4000, max_answer_tokens: int = 1024) -> RequestModels:
    """The request bodies with questions of at most `max_question_chars` characters and
    answers of at most `max_answer_tokens` tokens (VIDEOKV_MAX_ANSWER_TOKENS)."""
    answer_tokens = Field(48 if max_answer_tokens >= 48 else max_answer_tokens, ge=1, le=max_answer_tokens,
                          description=f"longest answer, in tokens (at most {max_answer_tokens}: VIDEOKV_MAX_ANSWER_TOKENS)")
    def question_field(what: str = "the question"):
        return Field(min_length=1, max_length=max_question_chars,
                     description=f"{what} (at most {max_question_chars} characters: VIDEOKV_MAX_QUESTION_CHARS)")

    class QueryRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        question: str = question_field()
        top_k: int | None = Field(None, ge=1, le=256, description="chunks re-loaded at L level (default: settings)")
        mode: Mode = "bilevel"
        count_by: CountBy | None = Field(None, description=COUNT_BY_HELP)
        when_by: WhenBy | None = Field(None, description=WHEN_BY_HELP)
        max_new_tokens: int = answer_tokens
        stream: bool = Field(False, description="stream tokens as server-sent events")

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        query: str = question_field("the search text")
        video_ids: list[VideoId] | None = Field(None, min_length=1, max_length=1000)
        top_k: int = Field(10, ge=1, le=1000, description="chunks in `results`")
        limit: int = Field(10, ge=1, le=1000, description="moments in this page")
        page_token: str | None = Field(None, max_length=512, description="the `next_page_token` of the page before")
        min_score: float | None = Field(None, description="leave out moments scored below this")

    class JobRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        video_ids: list[VideoId] = Field(min_length=1, max_length=1000)
        questions: list[Annotated[str, StringConstraints(min_length=1, max_length=max_question_chars)]] = Field(
            min_length=1, max_length=1000)
        top_k: int | None = Field(None, ge=1, le=256)
        mode: Mode = "bilevel"
        count_by: CountBy | None = Field(None, description=COUNT_BY_HELP)
        max_new_tokens: int = answer_tokens

    return RequestModels(QueryRequest, SearchRequest, JobRequest)


# ---------------------------------------------------------------- responses
class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(description="each dependency: 'ok ...' or 'error: ...'")


class Video(BaseModel):
    id: str
    status: Literal["QUEUED", "INGESTING", "READY", "FAILED"]
    filename: str
    duration: float
    fps: float
    container: str
    codec: str
    sample_fps: float = Field(description="the rate frames were sampled at: VIDEOKV_SAMPLE_FPS, or lower "
                                          "where VIDEOKV_MAX_FRAMES capped a long video (0 until probed)")
    chunks_total: int = Field(description="chunks of the video (while ingesting: those its sampling will give)")
    chunks_done: int
    progress: float = Field(description="0..1")
    error: str = Field(description="why it FAILED ('' otherwise)")
    note: str = Field(description="e.g. why an ingest is being retried")
    created: float
    updated: float
    status_url: str
    events_url: str
    text_channels: dict[str, Any] = Field(description="per text channel (ocr, asr, subtitle): what ran")
    transcript_url: str
    shard: str | None = Field(None, description="the shard holding the video's KV (null on a single host)")


class UploadedVideo(Video):
    deduplicated: bool = Field(description="the same file was already uploaded by this tenant (same id)")


class VideoList(BaseModel):
    videos: list[Video]
    missing_shards: list[str] = Field([], description="shards that did not answer in time (their videos "
                                                      "are not listed); always empty on a single host")


class TranscriptSegment(BaseModel):
    model_config = ConfigDict(extra="allow")
    t_start: float
    t_end: float
    text: str
    source: str
    chunk: int | None = None


class Transcript(BaseModel):
    id: str
    channels: dict[str, Any]
    segments: list[TranscriptSegment]


class Evidence(BaseModel):
    chunk: int
    t_start: float
    t_end: float
    score: float
    level: str = Field(description="L, H, G (in its group's gist), '-' (left out of a budgeted context) "
                                   "or 'count' (a span the counter counted)")


class MomentOut(BaseModel):
    video_id: str
    start: float = Field(description="seconds")
    end: float = Field(description="seconds")
    score: float = Field(description="the oracle's cosine; each channel's z-score where text and visual "
                                     "moments are ranked together")
    source: Literal[SOURCES] = Field(
        description="what found it: the visual oracle's frame scores, a text segment (ocr, speech, subtitle), "
                    "or 'chunk': the video has no per-frame vectors, so the span is a whole chunk")
    chunk: int
    text: str = Field("", description="what was read or said (text sources)")
    thumbnail_url: str | None = Field(None, description="a frame of the moment (needs the API key, as every "
                                                        "/v1 path)")
    filename: str | None = None
    shard: str | None = None


class Answer(BaseModel):
    answer: str
    evidence: list[Evidence]
    timings: dict[str, float] = Field(description="retrieve_ms, load_ms, prefill_ms, decode_ms, ttft_ms")
    kv_bytes_loaded: int
    kv_bytes_read: int
    context_tokens: int = Field(description="positions the assembled video context took (at most context_budget)")
    video_prefill_runs: int
    mode: str
    video_id: str
    question: str
    extra: dict[str, Any]
    levels: dict[str, int] = Field(default_factory=dict,
                                   description="chunks at each level: L, H, G (a group's gist), dropped")
    policy: str = Field("", description="how the context was chosen: bilevel, pyramid, drop, dense, sparse")
    context_budget: int = Field(0, description="most positions the video context could take")
    sample_fps: float = Field(0.0, description="the rate the video was sampled at")
    answer_tokens: int = Field(0, description="tokens decoded (0 when the span counter answered)")
    finish_reason: str = Field("", description="stop (end of sequence or a stop string) or length (max_new_tokens)")
    moments: list[MomentOut] = Field(default_factory=list, description="the question's best moments in the video")


class SearchHit(BaseModel):
    video_id: str
    filename: str
    chunk: int
    t_start: float | None
    t_end: float | None
    score: float
    shard: str | None = Field(None, description="the shard holding the video (null on a single host)")


class SearchResults(BaseModel):
    query: str
    moments: list[MomentOut] = Field([], description="the best moments, best first (one page)")
    next_page_token: str | None = Field(None, description="pass it as `page_token` for the next page; null: "
                                                          "this is the last")
    results: list[SearchHit] = Field(description="the best chunks (`top_k`), best first")
    missing_shards: list[str] = Field([], description="shards that did not answer in time (their videos' "
                                                      "hits are missing); always empty on a single host")


class Job(BaseModel):
    id: str
    video_ids: list[str]
    questions: list[str]
    top_k: int | None
    mode: str
    count_by: str | None = None
    max_new_tokens: int
    status: str = Field(description="QUEUED, WAITING, RUNNING, DONE, FAILED or CANCELLED")
    done: int
    total: int
    errors: int
    error: str
    created: float
    updated: float
    status_url: str
    results_url: str
    shards: dict[str, Any] = Field({}, description="per shard, its part of the job (through the front API of a "
                                                   "sharded service; empty on a single host)")


class Problem(BaseModel):
    """RFC 9457 problem details (`application/problem+json`)."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    code: str | None = Field(None, description="a stable snake_case name of the condition")
