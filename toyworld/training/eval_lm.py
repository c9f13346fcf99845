"""Evaluating the adapted LLM on caption videos through the run-time path (ChunkPrefiller
with its window, stored levels, assembly, generation) with perfect captions and a perfect
oracle: this isolates the language side from the tower and from retrieval.

With `text=True` every video also gets a text channel (engine/lm_text_data.py; a line after
each chunk's timestamp, as ingest writes it) and the text questions are asked besides the
toy ones. `python -m videokv.toyworld.training.eval_lm --adapter PATH [--text]` evaluates an adapter
file (merged into the embedded SmolLM2) and prints JSON."""

from __future__ import annotations

import re

import numpy as np
import torch

from videokv.engine.backend import HFCausalBackend
from videokv.engine.batch import generate
from videokv.engine.config import EngineConfig
from videokv.engine.decode import GenerationConfig, assemble
from videokv.engine.prefill import ChunkInput, ChunkPrefiller
from videokv.toyworld.captions import caption_ids, piece_ids
from videokv.toyworld.grading import counts_in

from .lm_data import QA, busy_video, questions, random_video
from .lm_text_data import text_questions, text_video


def answer_ok(qa: QA, text: str) -> bool:
    t = text.lower()
    if qa.type in ("temporal", "text_when"):
        want = float(qa.key.rstrip("s"))
        return any(abs(float(x) - want) < 1e-6 for x in re.findall(r"(\d+(?:\.\d+)?)\s*s", t))
    if qa.type == "counting":
        return qa.key in counts_in(t)
    return re.search(rf"\b{re.escape(qa.key.lower())}\b", t) is not None


@torch.no_grad()
def evaluate(backend: HFCausalBackend, config: EngineConfig, seed: int = 1234, videos: int = 8,
             n_chunks: int = 16, modes=("dense", "bilevel", "sparse"), top_k: int = 3,
             max_new_tokens: int = 16, text: bool = False, text_cap: int = 48, examples: list | None = None, busy: bool = False) -> dict:
    """Accuracy per mode and question type on `videos` random caption videos ("n": questions
    per mode; "counts": per type). text: videos with a text channel, text questions too
    (their answers quote text, so they get 3x max_new_tokens). busy: busy scenes
    (lm_data.busy_video: 4+ events back to back) instead of random videos. examples:
    (mode, QA, answer) are appended to it when given."""
    rng = np.random.default_rng(seed)
    ids = piece_ids(backend.tokenizer)
    pf = ChunkPrefiller(backend, config)
    prefix = pf.prefix()
    tpf, f = config.tokens_per_frame, config.chunk_frames
    right: dict[str, dict[str, list[int]]] = {m: {} for m in modes}
    for _ in range(videos):
        video = busy_video(rng, n_chunks, f) if busy else random_video(rng, n_chunks, f)
        tv = text_video(video, rng, lambda s: len(backend.tokenize(s)), text_cap) if text else None
        chunks = []
        times = video.chunk_times
        step = times[1] - times[0] if len(times) > 1 else float(f)
        for i, t in enumerate(times):
            tok = torch.tensor([x for lb in video.frames[i * f:(i + 1) * f] for x in caption_ids(lb, ids, tpf)])
            chunks.append(ChunkInput(i, backend.embed_text(tok), i * f, (i + 1) * f, t, t + step,
                                     text=tv.line(i) if tv else ""))
        done = list(pf.run(prefix, chunks))
        for qa in questions(video, rng) + (text_questions(tv, rng) if tv else []):
            chosen = set(sorted(qa.chunks)[:top_k]) | {0, n_chunks - 1}
            _, suffix = backend.prompt_parts(config.system_prompt, qa.question)
            for m in modes:
                parts = [prefix] + [d.L if m == "dense" or (m == "bilevel" and i in chosen) else d.H
                                    for i, d in enumerate(done)]
                budget = max_new_tokens * (3 if qa.type.startswith("text_") else 1)
                gen = GenerationConfig(max_new_tokens=budget, stop=("<|im_end|>",))
                out = "".join(generate(backend, assemble(backend, parts), suffix, gen))
                right[m].setdefault(qa.type, []).append(int(answer_ok(qa, out)))
                if examples is not None:
                    examples.append((m, qa, out))
    return {m: {t: float(np.mean(v)) for t, v in sorted(by.items())}
            | {"n": sum(len(v) for v in by.values()), "counts": {t: len(v) for t, v in sorted(by.items())}}
            for m, by in right.items()}


def adapted_backend(adapter: str, models_dir, alpha: float = 16.0) -> HFCausalBackend:
    """The embedded SmolLM2 (converted under `models_dir`) with an adapter file merged in (no
    tower: captions are given)."""
    from safetensors.torch import load_file

    from videokv.models import lora
    from videokv.models.embedded import convert_embedded
    from videokv.models.loading import load_folder

    model, tok, _ = load_folder(convert_embedded(models_dir))
    lora.merge(model, load_file(adapter), alpha)
    return HFCausalBackend(model, tok)
