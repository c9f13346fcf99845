"""`EngineConfig`: everything the stored bytes depend on, and its fingerprint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class CompressionConfig:
    """One compression level: a policy name from engine.compress.POLICIES and its ratio."""

    policy: str = "avgpool"
    ratio: int = 2

    def __post_init__(self) -> None:
        if self.ratio < 1:
            raise ValueError(f"compression ratio must be >= 1, got {self.ratio}")


@dataclass(frozen=True)
class PrefillConfig:
    """The context each chunk attends to during chunk-based prefill.

    window: how many earlier chunks are in context; -1 means all of them.
    window_level: the level those chunks are at ("H", "L" or "full").
    prev_level: an override for the immediately previous chunk (e.g. "L"); None = same.
    """

    window: int = 4
    window_level: str = "H"
    prev_level: str | None = None

    def __post_init__(self) -> None:
        for lvl in (self.window_level, self.prev_level):
            if lvl not in ("H", "L", "full", None):
                raise ValueError(f"prefill level must be 'H', 'L' or 'full', got {lvl!r}")
        if self.window < -1:
            raise ValueError(f"window must be >= -1, got {self.window}")


@dataclass(frozen=True)
class EngineConfig:
    """What a KV blob depends on besides the video: model identity and every knob.

    weights_id: content hash of the model weights (engine.models sets it).
    """

    weights_id: str = ""
    backend: str = "hf-causal"
    dtype: str = "float32"
    tokens_per_frame: int = 16
    chunk_frames: int = 16
    sample_fps: float = 1.0
    max_frames: int | None = None  # sampling cap (None: sample_fps for any length)
    gist_chunks: int = 8           # chunks per group of the gist level G (0: no gist level)
    gist_ratio: int = 8            # H visual rows per G row
    system_prompt: str = "You are a helpful assistant that answers questions about a video."
    l_kv: CompressionConfig = field(default_factory=lambda: CompressionConfig("avgpool", 2))
    h_kv: CompressionConfig = field(default_factory=lambda: CompressionConfig("avgpool", 16))
    prefill: PrefillConfig = field(default_factory=PrefillConfig)
    vision_id: str = ""
    kv_codec: str = "none"         # how the K,V are stored (kvstore/codecs.py label)

    def fingerprint(self) -> str:
        """16 hex chars of sha256 over every field: any change gives another fingerprint
        (kv_codec "none" is left out, so stores made before codecs keep their fingerprint)."""
        fields = asdict(self)
        if fields["kv_codec"] == "none":
            del fields["kv_codec"]
        blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
