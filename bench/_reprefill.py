"""The baseline `videokv bench query` measures the stored KVs against: the same model re-reading
the whole video for one question (decode + sample + vision tower + prefill, nothing stored),
then the question on top; and the context sizes that decide whether full prefill fits."""

from __future__ import annotations

import time
from pathlib import Path

from ._common import rounded


def plan_tokens(rt, video_id: str, question: str, max_new_tokens: int) -> dict:
    """Context sizes (positions) of the whole video in full prefill and at L / H, from the
    stored plan and records, plus the question and answer after it."""
    from videokv.engine.prefill import timestamp_text

    be, cfg = rt.backend, rt.config
    rec = rt.store.get_video(video_id)
    recs = {r.index: r for r in rt.store.chunk_records(video_id)}
    before, suffix = be.prompt_parts(cfg.system_prompt, question)
    after = len(be.tokenize(suffix)) + max_new_tokens
    prefix = len(be.tokenize(before))
    full = prefix + sum(len(be.tokenize(timestamp_text(s.t_start))) + (s.frame_end - s.frame_start)
                        * cfg.tokens_per_frame for s in rec.plan)
    lvl = {x: recs[-1].tokens["full"] + sum(recs[s.index].tokens[x] for s in rec.plan) for x in ("L", "H")}
    return {"full": full + after, "L": lvl["L"] + after, "H": lvl["H"] + after}


def reprefill(rt, path: Path, question: str, method: str, max_new_tokens: int, answer_level: str = "L") -> dict:
    """Re-read the whole video for one question: decode + sample + vision + prefill (full or
    chunk-based), nothing stored, then the question and its answer. Timed from the start."""
    import torch

    from videokv.engine.batch import generate
    from videokv.engine.decode import AssembledCache, GenerationConfig, assemble
    from videokv.engine.prefill import ChunkInput
    from videokv.ingest.chunks import plan_chunks
    from videokv.ingest.pipeline import frames_to_tensor
    from videokv.ingest.sampling import sample_frames
    from videokv.ingest.video import probe

    be, cfg = rt.backend, rt.config
    pre = rt.pipeline.prefiller
    cuda = be.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    calls = be.vision_calls
    sync()
    t0 = time.perf_counter()
    info = probe(path)
    sampled = sample_frames(path, cfg.sample_fps, rt.config.max_frames, size=be.vision.input_size, info=info)
    plan = plan_chunks(sampled.timestamps, info.duration, cfg.chunk_frames, cfg.sample_fps)
    t_decode = time.perf_counter()

    def inputs():
        for c in plan.chunks:
            x = frames_to_tensor(sampled.frames[c.frame_start:c.frame_end])
            visual = be.vision_tokens(x)
            yield ChunkInput(c.index, visual.reshape(-1, visual.shape[-1]), c.frame_start, c.frame_end,
                             c.t_start, c.t_end)

    with torch.no_grad():
        if method == "full":
            embeds, _ = pre.prefix_embeds()
            parts = [embeds] + [pre.chunk_embeds(ci)[0] for ci in inputs()]
            out = be.forward(torch.cat(parts), logits=False)
            cache = AssembledCache(out.keys, out.values)
            del out
        else:
            prefix = pre.prefix()
            done = [d.level(answer_level) for d in pre.run(prefix, inputs())]
            cache = assemble(be, [prefix] + done)
        sync()
        t_prefill = time.perf_counter()
        _, suffix = be.prompt_parts(cfg.system_prompt, question)
        gen = GenerationConfig(max_new_tokens=max_new_tokens, stop=("<|im_end|>",))
        pieces, first = [], None
        for piece in generate(be, cache, suffix, gen):
            if first is None:
                first = time.perf_counter()
            pieces.append(piece)
    t_end = time.perf_counter()
    first = first or t_end
    ms = lambda a, b: rounded((b - a) * 1e3, 2)  # noqa: E731
    return {"method": method, "ttft_ms": ms(t0, first), "total_ms": ms(t0, t_end),
            "decode_sample_ms": ms(t0, t_decode), "prefill_ms": ms(t_decode, t_prefill),
            "question_ms": ms(t_prefill, first), "context_tokens": cache.tokens,
            "answer_context": "full" if method == "full" else f"chunks at {answer_level}",
            "frames": len(sampled), "chunks": len(plan), "vision_calls": be.vision_calls - calls,
            "answer": "".join(pieces).strip()}
