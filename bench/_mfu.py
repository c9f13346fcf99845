"""Model FLOP utilisation of chunk-based prefill at a 7B model's size (`videokv bench ingest`
on CUDA): a model with Qwen2.5-7B's geometry and random bf16 weights (nothing is fetched),
timed through the ingest's own prefill and against the bare forward of one chunk."""

from __future__ import annotations

import time

from ._common import rounded


def mfu_7b(tokenizer, device: str = "cuda", chunks: int = 12, warmup: int = 2, visual_tokens: int = 1152,
           window: int = 4, peak: float | None = None, geometry: dict | None = None) -> dict:
    """MFU of chunk-based prefill (engine.prefill.ChunkPrefiller.run: context assembly, forward,
    un-rotation, L/H compression, device->host) of a model with Qwen2.5-7B's geometry and random
    bf16 weights; plus the MFU of the bare forward of one chunk on the same context."""
    import torch

    from videokv.engine.backend import HFCausalBackend
    from videokv.engine.config import EngineConfig, PrefillConfig
    from videokv.engine.prefill import ChunkInput, ChunkPrefiller

    from ._common import QWEN25_7B, llm_prefill_flops, peak_tflops, random_qwen25_7b

    cuda = torch.device(device).type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = peak or peak_tflops(name)
    t0 = time.perf_counter()
    model = random_qwen25_7b(device, geometry)
    build_s = time.perf_counter() - t0
    be = HFCausalBackend(model, tokenizer, vision=None, weights_id="random-qwen2.5-7b-geometry")
    cfg = EngineConfig(dtype="bfloat16", tokens_per_frame=visual_tokens // 16, chunk_frames=16,
                       prefill=PrefillConfig(window, "H"))
    pre = ChunkPrefiller(be, cfg)
    mc = model.config
    params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    g = torch.Generator(device=device).manual_seed(0)

    def inputs(n, first=0):
        return [ChunkInput(i, torch.randn(visual_tokens, mc.hidden_size, generator=g, device=device,
                                          dtype=torch.bfloat16) * 0.02, 16 * i, 16 * i + 16, 16.0 * i, 16.0 * i + 16)
                for i in range(first, first + n)]

    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    with torch.no_grad():
        prefix = pre.prefix()
        list(pre.run(prefix, iter(inputs(warmup))))                 # warm-up (kernels, allocator)
        xs = inputs(chunks)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        sync()
        t = time.perf_counter()
        done = [(pc.L, pc.H.tokens) for pc in pre.run(prefix, iter(xs))]
        sync()
        secs = time.perf_counter() - t
        flops, hist = 0.0, []
        from videokv.engine.chunkkv import TokenKind
        for L, h_tokens in done:
            T = int((L.kinds == TokenKind.TEXT).sum()) + visual_tokens
            ctx = prefix.tokens + sum(hist[-window:]) if window else prefix.tokens
            flops += llm_prefill_flops(mc, T, ctx)
            hist.append(h_tokens)
        # the bare forward of one chunk on a context of the same size (the ceiling)
        ctx_tokens = prefix.tokens + window * (hist[-1] if hist else 0)
        kv = torch.randn(mc.num_hidden_layers, mc.num_key_value_heads, ctx_tokens, be.head_dim, device=device,
                         dtype=torch.bfloat16, generator=g)
        emb = torch.randn(T, mc.hidden_size, device=device, dtype=torch.bfloat16, generator=g) * 0.02
        fwd = []
        for _ in range(3):
            cache = be.make_cache(kv, kv)
            sync()
            t = time.perf_counter()
            be.forward(emb, cache, positions=torch.arange(ctx_tokens, ctx_tokens + T), logits=False, kv=False)
            sync()
            fwd.append(time.perf_counter() - t)
        f1 = llm_prefill_flops(mc, T, ctx_tokens)
    out = {"device": name, "geometry": {k: getattr(mc, k) for k in QWEN25_7B if hasattr(mc, k)},
           "params_non_embedding": params, "dtype": "bfloat16",
           "attn_implementation": getattr(mc, "_attn_implementation", None), "chunks": chunks,
           "visual_tokens_per_chunk": visual_tokens, "window": window, "seconds": rounded(secs, 3),
           "chunks_per_s": rounded(chunks / secs, 2), "llm_tokens_per_s": rounded(sum(
               int((L.kinds == TokenKind.TEXT).sum()) + visual_tokens for L, _ in done) / secs, 1),
           "tflops_achieved": rounded(flops / secs / 1e12, 3), "forward_only_tflops": rounded(f1 / min(fwd) / 1e12, 3),
           "peak_tflops_bf16": peak, "model_build_s": rounded(build_s, 1)}
    if peak:
        out["mfu"] = rounded(flops / secs / 1e12 / peak, 3)
        out["forward_only_mfu"] = rounded(f1 / min(fwd) / 1e12 / peak, 3)
    if cuda:
        out["peak_memory_gb"] = rounded(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    del model, be, pre, kv
    if cuda:
        torch.cuda.empty_cache()
    return out
