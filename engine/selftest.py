"""`videokv selftest`: chunked prefill with stored de-rotated KVs reproduces one full forward.

For each model: (a) one full forward over prompt prefix + all chunks + question, and (b)
chunk-based prefill with all earlier chunks dense in context and identity compression,
keys stored pre-RoPE, re-assembled at contiguous positions, question decoded on top.
The question's logits must agree to <= 1e-4 (fp32)."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from .backend import HFCausalBackend
from .config import CompressionConfig, EngineConfig, PrefillConfig
from .decode import assemble, question_logits
from .prefill import ChunkInput, ChunkPrefiller

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


def _models(include_embedded: bool):
    from videokv.settings import get_settings
    from .models import load_backend
    from .tiny import tiny_backend

    embedded = load_backend(get_settings())
    if include_embedded:
        yield "smollm2-135m", embedded
    tok = embedded.tokenizer
    for arch, rope in (("llama", "default"), ("llama", "llama3"), ("qwen2", "default"), ("qwen2", "yarn")):
        yield f"tiny-{arch}-{rope}", tiny_backend(tok, arch, rope)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="videokv selftest", description=__doc__)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32, help="visual tokens per chunk")
    ap.add_argument("--skip-embedded", action="store_true", help="tiny random models only")
    args = ap.parse_args(argv)
    results = {}
    for name, backend in _models(not args.skip_embedded):
        t0 = time.perf_counter()
        r = exactness(backend, args.chunks, args.tokens)
        r["seconds"] = round(time.perf_counter() - t0, 2)
        r["pass"] = r["max_abs_logit_diff"] <= TOLERANCE
        results[name] = r
        if not args.json:
            print(f"{name:<20} max_abs_logit_diff={r['max_abs_logit_diff']:.2e} "
                  f"(logits up to {r['logit_scale']:.1f}, {r['context_tokens']} ctx tokens) "
                  f"{'ok' if r['pass'] else 'OVER ' + str(TOLERANCE)}")
    ok = all(r["pass"] for r in results.values())
    if args.json:
        print(json.dumps({"tolerance": TOLERANCE, "pass": ok, "models": results}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
