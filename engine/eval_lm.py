"""Evaluating the adapted LLM on caption videos through the run-time path (ChunkPrefiller
with its window, stored levels, assembly, generation) with perfect captions and a perfect
oracle: this isolates the language side from the tower and from retrieval.

With `text=True` every video also gets a text channel (engine/lm_text_data.py; a line after
each chunk's timestamp, as ingest writes it) and the text questions are asked besides the
toy ones. `python -m videokv.engine.eval_lm --adapter PATH [--text]` evaluates an adapter
file (merged into the embedded SmolLM2) and prints JSON."""

from __future__ import annotations

import argparse
import json
import re
import sys

import numpy as np
import torch

from videokv.ingest.grading import counts_in

from .backend import HFCausalBackend
from .captions import caption_ids, piece_ids
from .config import EngineConfig
from .decode import GenerationConfig, assemble, generate
from .lm_data import QA, busy_video, questions, random_video
from .lm_text_data import text_questions, text_video
from .prefill import ChunkInput, ChunkPrefiller


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


def adapted_backend(adapter: str, alpha: float = 16.0) -> HFCausalBackend:
    """The embedded SmolLM2 with an adapter file merged in (no tower: captions are given)."""
    from safetensors.torch import load_file

    from videokv.settings import get_settings

    from . import lora
    from .models import convert_embedded, load_folder

    model, tok, _ = load_folder(convert_embedded(get_settings().models_dir))
    lora.merge(model, load_file(adapter), alpha)
    return HFCausalBackend(model, tok)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="accuracy of an adapter on held-out caption videos")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--text", action="store_true", help="videos with a text channel, text questions too")
    ap.add_argument("--busy", action="store_true", help="busy scenes (4+ events back to back) instead of random videos")
    ap.add_argument("--modes", default="dense,bilevel")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--examples", default=None, help="write every question and answer here (JSONL)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    be = adapted_backend(args.adapter)
    ex: list = []
    got = evaluate(be, EngineConfig(tokens_per_frame=8), seed=args.seed, videos=args.videos, n_chunks=args.chunks,
                   modes=tuple(args.modes.split(",")), text=args.text, examples=ex, busy=args.busy)
    if args.examples:
        with open(args.examples, "w") as fh:
            for m, qa, out in ex:
                fh.write(json.dumps({"mode": m, "type": qa.type, "q": qa.question, "key": qa.key, "got": out,
                                     "ok": answer_ok(qa, out)}) + "\n")
    print(json.dumps(got, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
