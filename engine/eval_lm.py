"""Evaluating the adapted LLM on caption videos through the run-time path (ChunkPrefiller
with its window, stored levels, assembly, generation) with perfect captions and a perfect
oracle: this isolates the language side from the tower and from retrieval."""

from __future__ import annotations

import re

import numpy as np
import torch

from .backend import HFCausalBackend
from .captions import caption_ids, piece_ids
from .config import EngineConfig
from .decode import GenerationConfig, assemble, generate
from .lm_data import QA, questions, random_video
from .prefill import ChunkInput, ChunkPrefiller


def answer_ok(qa: QA, text: str) -> bool:
    t = text.lower()
    if qa.type == "temporal":
        want = float(qa.key.rstrip("s"))
        return any(abs(float(x) - want) < 1e-6 for x in re.findall(r"(\d+(?:\.\d+)?)\s*s", t))
    return re.search(rf"\b{re.escape(qa.key.lower())}\b", t) is not None


@torch.no_grad()
def evaluate(backend: HFCausalBackend, config: EngineConfig, seed: int = 1234, videos: int = 8,
             n_chunks: int = 16, modes=("dense", "bilevel", "sparse"), top_k: int = 3,
             max_new_tokens: int = 16) -> dict:
    """Accuracy per mode and question type on `videos` random caption videos."""
    rng = np.random.default_rng(seed)
    ids = piece_ids(backend.tokenizer)
    pf = ChunkPrefiller(backend, config)
    prefix = pf.prefix()
    tpf, f = config.tokens_per_frame, config.chunk_frames
    right: dict[str, dict[str, list[int]]] = {m: {} for m in modes}
    for _ in range(videos):
        video = random_video(rng, n_chunks, f)
        chunks = []
        times = video.chunk_times
        step = times[1] - times[0] if len(times) > 1 else float(f)
        for i, t in enumerate(times):
            tok = torch.tensor([x for lb in video.frames[i * f:(i + 1) * f] for x in caption_ids(lb, ids, tpf)])
            chunks.append(ChunkInput(i, backend.embed_text(tok), i * f, (i + 1) * f, t, t + step))
        done = list(pf.run(prefix, chunks))
        for qa in questions(video, rng):
            chosen = set(sorted(qa.chunks)[:top_k]) | {0, n_chunks - 1}
            _, suffix = backend.prompt_parts(config.system_prompt, qa.question)
            for m in modes:
                parts = [prefix] + [d.L if m == "dense" or (m == "bilevel" and i in chosen) else d.H
                                    for i, d in enumerate(done)]
                gen = GenerationConfig(max_new_tokens=max_new_tokens, stop=("<|im_end|>",))
                text = "".join(generate(backend, assemble(backend, parts), suffix, gen))
                right[m].setdefault(qa.type, []).append(int(answer_ok(qa, text)))
    return {m: {t: float(np.mean(v)) for t, v in sorted(by.items())} | {"n": sum(len(v) for v in by.values())}
            for m, by in right.items()}
