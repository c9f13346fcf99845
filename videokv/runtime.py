"""Wires the parts together from settings: backend, store, oracle, ingest pipeline, query engine.
Used by the CLI, the workers and the API; each builds one Runtime per process."""

from __future__ import annotations

from functools import cached_property

from videokv.settings import Settings, get_settings


class Runtime:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()

    @cached_property
    def backend(self):
        from videokv.engine.models import load_backend
        return load_backend(self.settings)

    @cached_property
    def config(self):
        from dataclasses import replace

        from videokv.engine.config import EngineConfig
        be = self.backend
        cfg = EngineConfig.from_settings(self.settings, weights_id=be.weights_id, backend=be.name,
                                         vision_id=be.vision.identity if be.vision else "")
        # A model's own vision tower (Qwen-VL) decides its tokens per frame, not the setting.
        tpf = getattr(be.vision, "tokens_per_frame", cfg.tokens_per_frame)
        return cfg if tpf == cfg.tokens_per_frame else replace(cfg, tokens_per_frame=tpf)

    @property
    def device(self) -> str:
        d = self.settings.device
        if d == "auto":
            import torch
            d = "cuda" if torch.cuda.is_available() else "cpu"
        return d

    @cached_property
    def store(self):
        from videokv.kvstore import KVStore
        return KVStore(self.settings)

    @cached_property
    def oracle(self):
        """VIDEOKV_ORACLE: an encoder checkpoint (clip:PATH, siglip:PATH, languagebind:PATH);
        "auto": the dual encoder (tower + MiniLM) when the toy-world tower is loaded, else the
        model-internal key/query oracle (any model, no extra weights)."""
        from videokv.engine.oracle import DualEncoderOracle, KeyQueryOracle
        from videokv.engine.prefill import ChunkPrefiller
        from videokv.engine.toytower import ToyWorldTower
        kind, path = self.settings.oracle_spec
        if path:
            from videokv.engine.encoder_oracles import make_encoder_oracle
            return make_encoder_oracle(kind, path, self.device)
        want = self.settings.oracle
        tower = self.backend.vision
        if want == "auto":
            want = "dualenc" if isinstance(tower, ToyWorldTower) else "keyquery"
        if want == "dualenc":
            if not isinstance(tower, ToyWorldTower):
                raise ValueError("VIDEOKV_ORACLE=dualenc needs the toy-world tower (VIDEOKV_VISION=toyworld "
                                 "with the embedded model)")
            return DualEncoderOracle(tower=tower)
        prefix = ChunkPrefiller(self.backend, self.config).prefix()
        return KeyQueryOracle(backend=self.backend, prefix=prefix)

    @cached_property
    def text_oracle(self):
        """MiniLM over chunk text lines (engine/text_oracle.py), loaded on first use."""
        from videokv.engine.text_oracle import TextOracle
        return TextOracle()

    @cached_property
    def pipeline(self):
        from videokv.ingest.pipeline import IngestPipeline
        from videokv.ingest.text import options_from_settings
        return IngestPipeline(self.backend, self.store, self.config, [self.oracle], self.settings.max_frames,
                              text_oracle=self.text_oracle, text_defaults=options_from_settings(self.settings))

    @cached_property
    def queries(self):
        from videokv.query.counting import counter_for
        from videokv.query.engine import QueryEngine
        s = self.settings
        counter = counter_for(self.oracle.identity, s.count_threshold) if s.count_by == "oracle" else None
        return QueryEngine(self.backend, self.store, self.config, self.oracle, s.top_k,
                           s.always_first_last, s.h_cache_bytes, text_oracle=self.text_oracle,
                           text_weight=s.text_weight, h_text=s.h_text, counter=counter)
