"""The composition root: settings in, the wired parts out (backend, engine config, store,
oracles, ingest pipeline, query engine). The CLI, the workers, the API and the benches each
build one Runtime per process; nothing below `videokv/` reads settings.

The toy world plugs in here, through the interfaces a real checkpoint uses: its tower and
LoRA through `models.loading.load_backend(attach_vision=...)`, its relevance oracle as a
`RelevanceOracle`, its count calibration from its weights' manifest.
"""

from __future__ import annotations

from functools import cached_property

from pydantic import ValidationError

from .errors import VideoKVError
from .hostmem import keep_freed_memory
from .settings import Settings, get_settings


class SettingsError(VideoKVError):
    """A VIDEOKV_* value that does not validate: one sentence naming the variable."""

    code = "bad_setting"

    exit_code = 2


def load_settings(**overrides) -> Settings:
    """The settings from the environment (VIDEOKV_*), with `overrides` on top. A bad value is
    a SettingsError naming the variable and what it accepts (never a pydantic traceback)."""
    try:
        s = get_settings()
        return s.model_copy(update=overrides) if overrides else s
    except ValidationError as e:
        raise SettingsError(settings_error_text(e)) from None


def settings_error_text(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        field = ".".join(str(x) for x in err.get("loc", ()))
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        name = f"VIDEOKV_{field.upper()}" if field else "a VIDEOKV_ setting"
        got = err.get("input")
        if msg.startswith(name) or not field or isinstance(got, dict):
            parts.append(msg if msg.startswith(name) else f"{name}: {msg}")
        else:
            parts.append(f"{name}={got!r}: {msg}")
    return "bad setting: " + "; ".join(parts)


class Runtime:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or load_settings()
        keep_freed_memory(self.settings.malloc_keep_bytes)        # process-wide; 0 changes nothing

    # ------------------------------------------------------------------ model
    @cached_property
    def model_spec(self):
        from .models.loading import ModelSpec
        s = self.settings
        return ModelSpec(model=s.model, models_dir=s.models_dir, dtype=s.dtype, device=s.device,
                         tokens_per_frame=s.tokens_per_frame, frame_wh=s.frame_wh, sample_fps=s.sample_fps)

    @cached_property
    def backend(self):
        from .models.embedded import EMBEDDED
        from .models.loading import load_backend
        attach = None
        if self.settings.model == EMBEDDED and self.settings.vision == "toyworld":
            from .toyworld.loader import attach_toyworld, check_tokens_per_frame
            check_tokens_per_frame(self.settings.tokens_per_frame)    # before minutes of loading
            attach = attach_toyworld
        return load_backend(self.model_spec, attach_vision=attach)

    @cached_property
    def config(self):
        """The EngineConfig: every knob the stored bytes depend on (its fingerprint keys them)."""
        from .engine.config import CompressionConfig, EngineConfig, PrefillConfig
        s, be = self.settings, self.backend
        # A model's own vision tower (Qwen-VL) decides its tokens per frame, not the setting.
        tpf = getattr(be.vision, "tokens_per_frame", s.tokens_per_frame)
        return EngineConfig(weights_id=be.weights_id, backend=be.name, dtype=s.dtype, tokens_per_frame=tpf,
                            chunk_frames=s.chunk_frames, sample_fps=s.sample_fps, max_frames=s.max_frames,
                            gist_chunks=s.gist_chunks, gist_ratio=s.gist_ratio,
                            l_kv=CompressionConfig(s.l_policy, s.l_ratio), h_kv=CompressionConfig(s.h_policy, s.h_ratio),
                            prefill=PrefillConfig(s.window, s.window_level, s.prev_level),
                            vision_id=be.vision.identity if be.vision else "",
                            kv_codec=self.kv_codec.label if self.kv_codec else "none")

    @property
    def device(self) -> str:
        from .models.loading import resolve_device
        return resolve_device(self.settings.device)

    # ------------------------------------------------------------------ storage
    @cached_property
    def kv_codec(self):
        """VIDEOKV_KV_CODEC (kvstore/codecs.py): how new chunks' K,V are stored; None: as they are."""
        from .kvstore.codecs import codec_named
        s = self.settings
        return codec_named(s.kv_codec, s.kv_codec_key_group, s.kv_codec_value_group)

    @cached_property
    def store(self):
        from .kvstore import KVStore
        return KVStore(self.settings.home, kv_codec=self.kv_codec)

    # ------------------------------------------------------------------ oracles
    @cached_property
    def oracle(self):
        """VIDEOKV_ORACLE: an encoder checkpoint (clip:PATH, siglip:PATH, languagebind:PATH);
        "auto": the toy world's dual encoder (tower + MiniLM) when its tower is loaded, else the
        model-internal key/query oracle (any model, no extra weights)."""
        from .engine.prefill import ChunkPrefiller
        from .oracles.keyquery import KeyQueryOracle
        kind, path = self.settings.oracle_spec
        if path:
            from .oracles import make_encoder_oracle
            return make_encoder_oracle(kind, path, self.device)
        want = self.settings.oracle
        toy = self._toyworld_tower()
        if want == "auto":
            want = "dualenc" if toy is not None else "keyquery"
        if want == "dualenc":
            if toy is None:
                raise SettingsError("VIDEOKV_ORACLE=dualenc needs the toy-world tower (VIDEOKV_VISION=toyworld "
                                    "with the embedded model)")
            from .toyworld.loader import count_calibration
            from .toyworld.oracle import DualEncoderOracle
            return DualEncoderOracle(tower=toy, count_thresholds=count_calibration(toy.weights_sha256))
        prefix = ChunkPrefiller(self.backend, self.config).prefix()
        return KeyQueryOracle(backend=self.backend, prefix=prefix)

    def _toyworld_tower(self):
        """The backend's vision tower when it is the toy world's, else None."""
        from .toyworld.tower import ToyWorldTower
        tower = self.backend.vision
        return tower if isinstance(tower, ToyWorldTower) else None

    @cached_property
    def text_oracle(self):
        """MiniLM over chunk text lines (oracles/text.py), loaded on first use."""
        from .oracles.text import TextOracle
        return TextOracle()

    # ------------------------------------------------------------------ ingest
    @cached_property
    def text_defaults(self):
        """The text channel's default options (VIDEOKV_TEXT_*); per ingest: `.overridden(...)`."""
        from .ingest.text import TextOptions
        s = self.settings
        return TextOptions(ocr=s.text_ocr, asr=s.text_asr, subtitles=s.text_subtitles, ocr_min_conf=s.ocr_min_conf,
                           max_tokens=s.text_max_tokens)

    @cached_property
    def pipeline(self):
        from .ingest.pipeline import IngestPipeline
        return IngestPipeline(self.backend, self.store, self.config, [self.oracle],
                              text_oracle=self.text_oracle, text_defaults=self.text_defaults,
                              share_across_tenants=self.settings.share_kv_across_tenants)

    # ------------------------------------------------------------------ query
    @cached_property
    def counter(self):
        """The span counter for "how many times" questions (query/counting.py), or None."""
        from .query.counting import counter_for
        s = self.settings
        return counter_for(self.oracle, s.count_threshold) if s.count_by == "oracle" else None

    @cached_property
    def queries(self):
        from .query.engine import QueryEngine
        s = self.settings
        return QueryEngine(self.backend, self.store, self.config, self.oracle, s.top_k,
                           s.always_first_last, s.h_cache_bytes, text_oracle=self.text_oracle,
                           text_weight=s.text_weight, h_text=s.h_text, counter=self.counter,
                           context_budget=s.context_budget, budget_policy=s.budget_policy,
                           open_groups=s.pyramid_open_groups, when_by=s.when_by, answer_moments=s.answer_moments,
                           adaptive_margin=s.adaptive_margin)
