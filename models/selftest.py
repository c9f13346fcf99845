"""The exactness check behind `videokv selftest`: chunked prefill with stored de-rotated KVs reproduces one full forward.

For each model: (a) one full forward over prompt prefix + all chunks + question, and (b)
chunk-based prefill with all earlier chunks dense in context and identity compression,
keys stored de-rotated, re-assembled at contiguous positions, question decoded on top.
The question's logits must agree to <= 1e-4 (fp32).

Text LLMs get random visual embeddings. The tiny random Qwen2-VL / Qwen2.5-VL checkpoints
(saved to disk, loaded back through the real loader) get random frames through the whole
vision path: (a) is the native model's forward over input ids with one video placeholder
block per chunk, all chunks' pixel patches and their grids (its own vision tower, merger and
placeholder scatter) at the M-RoPE positions of the whole sequence; (b) runs each chunk's
frames through the vision tower on its own, with per-chunk M-RoPE positions."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from videokv.engine.backend import HFCausalBackend
from videokv.engine.config import CompressionConfig, EngineConfig, PrefillConfig
from videokv.engine.decode import assemble, question_logits
from videokv.engine.prefill import ChunkInput, ChunkPrefiller, timestamp_text

TOLERANCE = 1e-4
EXACT = EngineConfig(l_kv=CompressionConfig("identity", 1), h_kv=CompressionConfig("identity", 1),
                     prefill=PrefillConfig(window=-1, window_level="full"))


def random_chunks(backend: HFCausalBackend, n_chunks: int, tokens: int, seed: int = 0) -> list[ChunkInput]:
    """Chunks of random visual embeddings with the scale of the model's token embeddings."""
    g = torch.Generator().manual_seed(seed)
    scale = backend.model.get_input_embeddings().weight.detach().float().std().item()
    return [ChunkInput(index=i, visual=torch.randn(tokens, backend.hidden_size, generator=g) * scale,
                       frame_start=2 * i, frame_end=2 * i + 2, t_start=2.0 * i, t_end=2.0 * i + 2)
            for i in range(n_chunks)]


@torch.no_grad()
def exactness(backend: HFCausalBackend, n_chunks: int = 4, tokens: int = 32, seed: int = 0,
              question: str = "What digit was shown on the red card?") -> dict:
    pre = ChunkPrefiller(backend, EXACT)
    chunks = random_chunks(backend, n_chunks, tokens, seed)
    _, suffix = backend.prompt_parts(EXACT.system_prompt, question)

    # (a) one full forward over everything
    prefix_embeds, _ = pre.prefix_embeds()
    parts = [prefix_embeds] + [pre.chunk_embeds(c)[0] for c in chunks]
    suffix_ids = backend.tokenize(suffix)
    full = torch.cat(parts + [backend.embed_text(suffix_ids)])
    ref = backend.forward(full, logits=True).logits[-len(suffix_ids):]

    # (b) chunked prefill -> stored pre-RoPE -> assembled -> question
    prefix = pre.prefix()
    stored = [p.L for p in pre.run(prefix, chunks)]
    cache = assemble(backend, [prefix] + stored)
    got = question_logits(backend, cache, suffix)
    return {"max_abs_logit_diff": float((got - ref).abs().max()), "context_tokens": cache.tokens,
            "question_tokens": len(suffix_ids), "logit_scale": float(ref.abs().max())}


def random_frames(n: int, size: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    """n random frames [n, 3, H, W] on the uint8 grid /255, as ingest decodes them; size (W, H)."""
    return torch.randint(0, 256, (n, 3, size[1], size[0]), generator=g).float() / 255


def vl_chunks(backend, n_chunks: int = 4, frames: int = 4, seed: int = 0, seconds: float = 2.0):
    """(chunks, videos): random frames [frames, 3, H, W] per chunk and their ChunkInputs, each
    chunk spanning `seconds`."""
    g = torch.Generator().manual_seed(seed)
    videos = [random_frames(frames, backend.vision.input_size, g) for _ in range(n_chunks)]
    chunks = [ChunkInput(i, backend.vision_tokens(v), i * frames, (i + 1) * frames, seconds * i, seconds * (i + 1))
              for i, v in enumerate(videos)]
    return chunks, videos


def vl_reference_inputs(backend, chunks, videos, before: str, suffix: str) -> dict:
    """The native model's inputs for the whole sequence: input ids with one video placeholder
    block per chunk, all chunks' pixel patches and grids, and the M-RoPE segments
    (`qwen_vl.mrope_layout`) of the sequence."""
    be, vis = backend, backend.vision
    ids, pixels, grids = [be.tokenize(before)], [], []
    segs = [("text", len(ids[0]))]
    for c, v in zip(chunks, videos):
        px, grid = vis.patcher(v)
        stamp = torch.cat([be.tokenize(timestamp_text(c.t_start)), torch.tensor([be.vision_start_id])])
        ids += [stamp, torch.full((c.visual.shape[0],), be.video_token_id), torch.tensor([be.vision_end_id])]
        segs += [("text", len(stamp)), ("video", vis.merged_grid(len(v)), be.interval(len(v), c.t_end - c.t_start)),
                 ("text", 1)]
        pixels.append(px)
        grids.append(grid)
    suffix_ids = be.tokenize(suffix)
    ids.append(suffix_ids)
    segs.append(("text", len(suffix_ids)))
    return {"input_ids": torch.cat(ids), "pixel_values_videos": torch.cat(pixels),
            "video_grid_thw": torch.tensor(grids), "segments": segs, "suffix_len": len(suffix_ids)}


@torch.no_grad()
def exactness_vl(backend, n_chunks: int = 4, frames: int = 4, seed: int = 0,
                 question: str = "What digit was shown on the red card?") -> dict:
    """`exactness` for a QwenVLBackend, from frames (see the module docstring)."""
    from .qwen_vl import mrope_layout

    be = backend
    pre = ChunkPrefiller(be, EXACT)
    chunks, videos = vl_chunks(be, n_chunks, frames, seed)
    before, suffix = be.prompt_parts(EXACT.system_prompt, question)

    # (a) the native model, one forward over the whole input
    ref_in = vl_reference_inputs(be, chunks, videos, before, suffix)
    pos = mrope_layout(ref_in["segments"])
    out = be.model(input_ids=ref_in["input_ids"][None].to(be.device),
                   pixel_values_videos=ref_in["pixel_values_videos"].to(be.device),
                   video_grid_thw=ref_in["video_grid_thw"].to(be.device), position_ids=pos[:, None, :].to(be.device))
    ref = out.logits[0, -ref_in["suffix_len"]:].float()

    # (b) chunk by chunk, per-chunk vision, stored de-rotated, re-assembled
    prefix = pre.prefix()
    stored = [p.L for p in pre.run(prefix, chunks)]
    cache = assemble(be, [prefix] + stored)
    got = question_logits(be, cache, suffix)
    return {"max_abs_logit_diff": float((got - ref).abs().max()), "context_tokens": cache.tokens,
            "question_tokens": ref_in["suffix_len"], "logit_scale": float(ref.abs().max()),
            "visual_tokens": sum(c.visual.shape[0] for c in chunks), "next_position": cache.next_pos}


def models_to_check(embedded: HFCausalBackend, include_embedded: bool, workdir: Path):
    """(name, backend, exactness function) for every model checked: the embedded default as
    the runtime loads it, and tiny random checkpoints of every supported architecture (they
    share its tokenizer)."""
    from .tiny import tiny_backend
    from .tiny_vl import tiny_qwen_vl_backend

    if include_embedded:
        yield "smollm2-135m", embedded, exactness
    tok = embedded.tokenizer
    for arch, rope in (("llama", "default"), ("llama", "llama3"), ("qwen2", "default"), ("qwen2", "yarn")):
        yield f"tiny-{arch}-{rope}", tiny_backend(tok, arch, rope), exactness
    for kind, name in (("qwen2_vl", "tiny-qwen2-vl"), ("qwen2_5_vl", "tiny-qwen2.5-vl")):
        yield name, tiny_qwen_vl_backend(workdir / kind, kind, tok), exactness_vl


def run(embedded: HFCausalBackend, include_embedded: bool = True, chunks: int = 4, tokens: int = 32,
        on_result=None) -> dict:
    """{"tolerance", "pass", "models": {name: result}}; on_result(name, result) as each finishes."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="videokv-selftest-") as tmp:
        for name, backend, check in models_to_check(embedded, include_embedded, Path(tmp)):
            t0 = time.perf_counter()
            r = check(backend, chunks) if check is exactness_vl else check(backend, chunks, tokens)
            r["seconds"] = round(time.perf_counter() - t0, 2)
            r["pass"] = r["max_abs_logit_diff"] <= TOLERANCE
            results[name] = r
            if on_result:
                on_result(name, r)
    return {"tolerance": TOLERANCE, "pass": all(r["pass"] for r in results.values()), "models": results}
