"""The one settings object. Every field is read from an env var `VIDEOKV_<FIELD>`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir("videokv"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIDEOKV_", extra="ignore")

    # All state (LMDB, uploads, converted models) lives under home.
    home: Path = Field(default_factory=_default_home)
    # "smollm2" = the embedded default; otherwise a local checkpoint folder, whose config.json
    # model_type picks the backend (llama/mistral/qwen2 text LLMs, qwen2_vl, qwen2_5_vl).
    model: str = "smollm2"
    # Converted model folders; defaults to HOME/models. Shared across homes in tests.
    model_cache: Path | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # How new chunks' K,V are stored (kvstore/codecs.py; README "Quantized KV"): none (the
    # model's dtype), bf16, fp16, fp8, int8, int4. Part of the fingerprint. The groups: tokens
    # per key scale (0: the chunk's), channels per value scale (0: the head's).
    kv_codec: Literal["none", "bf16", "fp16", "fp8", "int8", "int4"] = "int8"
    kv_codec_key_group: int = Field(0, ge=0, lt=4096)
    kv_codec_value_group: int = Field(0, ge=0, lt=4096)
    device: str = "auto"

    # Sampling and chunking.
    sample_fps: float = 1.0
    # A cap on sampled frames per video; unset (the default): every video is sampled at
    # sample_fps whatever its length. When a cap applies, the video is sampled uniformly
    # below sample_fps and its record and answers say the rate used (`sample_fps`).
    max_frames: int | None = Field(default=None, gt=0)
    chunk_frames: int = 16
    tokens_per_frame: int = 8
    # "toyworld": the trained toy-world tower + LLM adapter (embedded model only);
    # "patch": an untrained patch projection (any model; sees colours, not objects).
    vision: Literal["toyworld", "patch"] = "toyworld"
    # "WxH" frames are sampled at for models with their own vision tower (Qwen2-VL/2.5-VL),
    # snapped to the model's patch grid; empty = 448x252.
    frame_size: str = ""
    # Relevance oracle: "auto" = the toy-world dual encoder when the toy-world tower is
    # loaded, else the model-internal key/query oracle; "dualenc"; "keyquery"; or an encoder
    # checkpoint folder: "clip:PATH", "siglip:PATH", "languagebind:PATH" (LanguageBind video).
    oracle: str = "auto"

    # Bi-level compression: L-KV (dense-ish) and H-KV (sparse) per chunk.
    l_policy: str = "avgpool"
    l_ratio: int = 2
    h_policy: str = "avgpool"
    h_ratio: int = 16

    # Chunk-based prefill context: `window` earlier chunks at `window_level`; -1 = all.
    window: int = 4
    window_level: Literal["H", "L", "full"] = "H"
    prev_level: Literal["H", "L", "full"] | None = None

    # The text channel (ingest/text): on-screen text (Tesseract), speech (PocketSphinx) and
    # subtitles (an uploaded .srt/.vtt, else the file's own subtitle stream) as a text line
    # per chunk. Per-ingest overrides: CLI flags, API form fields.
    text_ocr: bool = False
    text_asr: bool = False
    text_subtitles: bool = True
    # Longest text line per chunk, in LLM tokens; Tesseract word confidence (0-100) to keep.
    text_max_tokens: int = 48
    ocr_min_conf: float = 60.0
    # Hybrid retrieval: weight of the text oracle's z-scores against the visual oracle's.
    text_weight: float = 1.0

    # The gist level G: the H-KVs of gist_chunks consecutive chunks pooled gist_ratio-fold
    # into one part, stored at ingest (0: none); used when a video's bi-level context does
    # not fit the context budget (docs/long-video.md).
    gist_chunks: int = Field(default=8, ge=0)
    gist_ratio: int = Field(default=8, ge=1)

    # Query.
    top_k: int = 3
    # Most context tokens a question's assembled video context may take (unset: the model's
    # maximum positions less room for the question and the answer). Past it: "pyramid" keeps
    # L for the top-k, H around them and for the next-best groups of chunks, the gist level
    # G for every other group; "drop" keeps L for the top-k and H for as many of the most
    # relevant chunks as fit, and leaves the rest out.
    context_budget: int | None = Field(default=None, gt=0)
    budget_policy: Literal["pyramid", "drop"] = "pyramid"
    # Pyramid: groups of chunks paged chunk by chunk (those of the top-k first).
    pyramid_open_groups: int = Field(default=8, ge=0)
    always_first_last: bool = True
    h_cache_bytes: int = 1 << 30
    # Freed heap memory a process keeps for its next question instead of returning it to the
    # OS and faulting it back in (videokv/hostmem.py; 0: the C library's own policy).
    malloc_keep_bytes: int = Field(default=512 << 20, ge=0, lt=1 << 31)
    # Unselected chunks are paged at H without ("drop") or with ("keep") their timestamp and
    # text rows; stored bytes are the same either way (query/pager.py).
    h_text: Literal["drop", "keep"] = "drop"
    # "How many times" questions: "oracle" = the span counter over the visual oracle's
    # per-frame (else per-chunk) scores (query/counting.py says why), "lm" = decoded like any
    # other question. The counter needs thresholds calibrated for the oracle, kept with its
    # weights (the toy world's manifest); count_threshold sets the per-chunk one for an oracle
    # without them. Other oracles fall back to "lm".
    count_by: Literal["oracle", "lm"] = "oracle"
    count_threshold: float | None = None
    # "When" questions: "moments" = the best moment's span, to a frame (query/grounding.py
    # says why), "lm" = decoded like any other question (the LLM names a chunk's start).
    when_by: Literal["moments", "lm"] = "moments"
    # Adaptive top-k: a question whose best moment is the one match (the only one over the
    # oracle's calibrated frame threshold; for an oracle without one: ahead of the next by
    # this margin) loads only the chunks it spans at L (query/grounding.py `focus`); unset
    # (VIDEOKV_ADAPTIVE_MARGIN=): always the top-k. README "Event-dense footage" says why.
    adaptive_margin: float | None = 0.05
    # How many of the question's best moments every answer carries (`moments` in its JSON).
    answer_moments: int = Field(3, ge=0, le=20)

    # Service (workers/, api/).
    # Celery broker and result backend.
    redis_url: str = "redis://localhost:6379/0"
    # Largest accepted upload, in MiB (HTTP 413 above).
    max_upload_mb: int = 2048
    # "keys": every request needs `Authorization: Bearer KEY` (videokv keys create);
    # "open": no auth, everything is tenant "default" (local use only; never the default).
    auth: Literal["keys", "open"] = "keys"
    # Seconds before Redis re-delivers a task whose worker vanished without acking it.
    visibility_timeout: int = 3600
    # Seconds an ingest's lease in Redis outlives its worker (renewed every third of it): a
    # worker that dies has its ingest re-queued this long after (workers/leases.py).
    lease_ttl_s: int = Field(30, ge=3)
    # Retries (exponential backoff) of an ingest that failed with a transient error.
    ingest_max_retries: int = 3
    # Longest accepted question, in characters; longest answer a request may ask for, in tokens.
    max_question_chars: int = 4000
    max_answer_tokens: int = 1024
    # Share stored KVs between tenants that upload the same bytes (with the same text channels
    # and model config). Off by default: a second tenant's upload would be READY at once and
    # so tell it that someone else has the file. Within one tenant, uploads always dedupe.
    share_kv_across_tenants: bool = False
    # Largest JSON request body, in KiB (413 above; read no further).
    max_json_kb: int = 1024
    # Questions in flight from one API process (queued or decoding on the query workers)
    # before more get 503 + Retry-After.
    max_queued_questions: int = 64
    # Questions a query worker decodes together (continuous batching); 1: one at a time.
    query_max_batch: int = Field(16, ge=1, le=256)
    # Longest a question may take through the query workers, queueing included (504 after).
    question_timeout_s: float = Field(600.0, gt=0)
    # Batch jobs: at most this many rows (videos x questions).
    max_job_rows: int = 10000
    # /readyz reports unavailable below this much free disk under VIDEOKV_HOME, in MiB.
    min_free_mb: int = 512

    # Shards (docs/service.md "Shards"). The shard this process belongs to (its home holds
    # that shard's videos; its queues and Redis keys are that shard's); empty: a single host.
    shard: str = ""
    # Where the front API reaches this shard's API (`videokv serve --shard`); empty: the
    # address it listens on.
    shard_url: str = ""
    # The secret the front API and the shard APIs share: a shard API trusts the tenant a
    # request names (X-Videokv-Tenant) only with it. Required for shards and the front.
    cluster_token: str = ""
    # The front API's deadline for one shard's reply to a view, list or search (seconds);
    # past it the shard counts as missing.
    shard_timeout_s: float = Field(5.0, gt=0)

    # Prometheus metrics (docs/service.md "Metrics"); the API serves its own at /metrics.
    # A Celery worker's and a query worker's own /metrics port (0: none; the CLI's
    # --metrics-port overrides), on metrics_host (0.0.0.0 to be scraped from other hosts).
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    query_worker_metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    @property
    def models_dir(self) -> Path:
        return Path(self.model_cache) if self.model_cache else self.home / "models"

    @field_validator("max_frames", "context_budget", "count_threshold", "adaptive_margin", mode="before")
    @classmethod
    def _unset(cls, v):
        # An empty variable (VIDEOKV_MAX_FRAMES=) means unset, as it does in a shell.
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str) -> str:
        # The one rule for shard names (Redis keys and Celery queues are made of them).
        from videokv.workers.shards import check_name

        return check_name(v.strip(), f"VIDEOKV_SHARD={v.strip()!r}")

    @field_validator("oracle")
    @classmethod
    def _oracle(cls, v: str) -> str:
        kind, _, path = v.partition(":")
        if kind in ORACLE_NAMES and not path:
            return v
        if kind in ORACLE_ENCODERS and path:
            return v
        raise ValueError(f"VIDEOKV_ORACLE={v!r}: expected one of {', '.join(ORACLE_NAMES)}, or "
                         f"{' / '.join(k + ':PATH' for k in ORACLE_ENCODERS)} (a local checkpoint folder)")

    @field_validator("frame_size")
    @classmethod
    def _frame_size(cls, v: str) -> str:
        if v:
            w, _, h = v.lower().partition("x")
            if not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
                raise ValueError(f"VIDEOKV_FRAME_SIZE={v!r}: expected WIDTHxHEIGHT, e.g. 448x252")
        return v

    @property
    def frame_wh(self) -> tuple[int, int] | None:
        """frame_size as (W, H), None when unset."""
        if not self.frame_size:
            return None
        w, _, h = self.frame_size.lower().partition("x")
        return int(w), int(h)

    @property
    def oracle_spec(self) -> tuple[str, str]:
        """(kind, checkpoint path or "")."""
        kind, _, path = self.oracle.partition(":")
        return kind, path


ORACLE_NAMES = ("auto", "dualenc", "keyquery")
ORACLE_ENCODERS = ("clip", "siglip", "languagebind")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
