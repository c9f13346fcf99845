"""`videokv selftest`: chunked prefill with stored de-rotated KVs reproduces one full forward
(models/selftest.py), for the embedded default and tiny random checkpoints; and each storage
codec's logit error (kvstore/codecs.py) on the embedded default, within its documented bound."""

from __future__ import annotations

import argparse
import json

# The largest logit difference over the question's tokens each codec may cause on the
# embedded default (4 chunks of 32 random visual tokens, stored KVs round-tripped through
# the codec; measured 2026-12-06 on this build: bf16 0.085, fp16 0.010, fp8 1.03, int8
# 0.145, int4 2.79). About twice the measured error: beyond it the codec is broken, not
# merely lossy. What the loss costs in answers is `videokv bench quant`'s to say.
CODEC_LOGIT_BOUND = {"bf16": 0.2, "fp16": 0.025, "fp8": 2.0, "int8": 0.3, "int4": 5.5}


def codec_errors(backend, n_chunks: int = 4, tokens: int = 32) -> dict:
    """{codec: {max_abs_logit_diff, bound, pass}}: the chunked path's question logits with
    every stored part (prefix and chunks) round-tripped through the codec, against the same
    path stored as is."""
    import dataclasses

    import torch

    from videokv.engine.decode import assemble, question_logits
    from videokv.engine.prefill import ChunkPrefiller
    from videokv.kvstore.codecs import codec_named
    from videokv.models.selftest import EXACT, random_chunks

    pre = ChunkPrefiller(backend, EXACT)
    _, suffix = backend.prompt_parts(EXACT.system_prompt, "What digit was shown on the red card?")
    prefix = pre.prefix()
    parts = [prefix] + [p.L for p in pre.run(prefix, random_chunks(backend, n_chunks, tokens))]
    with torch.no_grad():
        ref = question_logits(backend, assemble(backend, parts), suffix)
        out = {}
        for name, bound in CODEC_LOGIT_BOUND.items():
            codec = codec_named(name)
            coded = []
            for p in parts:
                kv = torch.stack((p.keys, p.values), dim=1)
                back = codec.decode_into(codec.encode(kv), torch.empty_like(kv))
                coded.append(dataclasses.replace(p, keys=back[:, 0], values=back[:, 1]))
            diff = float((question_logits(backend, assemble(backend, coded), suffix) - ref).abs().max())
            out[name] = {"max_abs_logit_diff": diff, "bound": bound, "pass": diff <= bound}
    return out


def main(argv: list[str] | None = None) -> int:
    from videokv.models.selftest import TOLERANCE, run

    ap = argparse.ArgumentParser(prog="videokv selftest", description=__doc__)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--chunks", type=int, default=4, help="video chunks per check")
    ap.add_argument("--tokens", type=int, default=32, help="visual tokens per chunk")
    ap.add_argument("--skip-embedded", action="store_true", help="tiny random models only (no codec check)")
    args = ap.parse_args(argv)
    from videokv.runtime import Runtime

    def show(name: str, r: dict) -> None:
        if not args.json:
            print(f"{name:<20} max_abs_logit_diff={r['max_abs_logit_diff']:.2e} "
                  f"(logits up to {r['logit_scale']:.1f}, {r['context_tokens']} ctx tokens) "
                  f"{'ok' if r['pass'] else 'OVER ' + str(TOLERANCE)}")

    backend = Runtime().backend
    report = run(backend, not args.skip_embedded, args.chunks, args.tokens, show)
    if not args.skip_embedded:
        from videokv.kvstore import native

        report["codecs"] = codec_errors(backend, args.chunks, args.tokens)
        report["pass"] = report["pass"] and all(c["pass"] for c in report["codecs"].values())
        report["int_decode"] = "kernel" if native.built() else "torch"
        if not args.json:
            for name, c in report["codecs"].items():
                print(f"codec {name:<13} max_abs_logit_diff={c['max_abs_logit_diff']:.2e} "
                      f"{'ok' if c['pass'] else 'OVER'} (bound {c['bound']:g})")
            print("fp8/int8/int4 decode: " + (f"the one-pass kernel ({native.LIBRARY})" if native.built() else
                                          f"torch ({native.LIBRARY} not built: run scripts/setup.sh)"))
    if args.json:
        print(json.dumps(report, indent=1))
    return 0 if report["pass"] else 1
