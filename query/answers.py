"""What a question gets back (`Answer`, its `Evidence`) and the ways it can be refused."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from videokv.errors import VideoKVError

# How a question's context is made (query/engine.py), and who answers "how many" questions;
# here, with no torch, so the API can validate requests without loading the engine.
MODES = ("bilevel", "dense", "sparse")
COUNT_BY = ("oracle", "lm")
WHEN_BY = ("moments", "lm")          # who answers "when" questions (query/grounding.py)


class QueryError(VideoKVError):
    """A question that cannot be answered as asked (bad mode, video not ready, ...)."""

    code = "invalid_request"


class VideoNotReady(QueryError):
    code = "video_not_ready"
    http_status = 409


class ContextTooLong(QueryError):
    """What the question would load does not fit the model's positions."""

    code = "context_too_long"
    http_status = 422


class ReingestRequired(QueryError):
    """The video's KVs were made with another model or config (fingerprint): never read them."""

    code = "reingest_required"
    http_status = 409


@dataclass
class Evidence:
    chunk: int
    t_start: float
    t_end: float
    score: float
    level: str


@dataclass
class Answer:
    """levels: how many chunks the context held at each level ("L", "H", "G": in a group's
    gist, "dropped": left out); policy: how they were chosen ("bilevel", "pyramid", "drop",
    "dense", "sparse"; budget.py); context_tokens: positions of the assembled video context;
    sample_fps: the rate the video was sampled at; answer_tokens, finish_reason: how the decode
    ended."""

    answer: str
    evidence: list[Evidence]
    timings: dict[str, float]
    kv_bytes_loaded: int
    kv_bytes_read: int
    context_tokens: int
    video_prefill_runs: int = 0
    mode: str = "bilevel"
    video_id: str = ""
    question: str = ""
    extra: dict = field(default_factory=dict)
    levels: dict = field(default_factory=dict)
    policy: str = ""
    context_budget: int = 0
    sample_fps: float = 0.0
    answer_tokens: int = 0          # tokens decoded (0: none decoded, e.g. counted by the span counter)
    finish_reason: str = ""         # "stop" (end of sequence or a stop string), "length" (max_new_tokens)
    moments: list = field(default_factory=list)     # the question's best moments in the video (query/moments.py)

    def to_dict(self) -> dict:
        return asdict(self)
