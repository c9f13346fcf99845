"""`videokv selftest`: chunked prefill with stored de-rotated KVs reproduces one full forward
(models/selftest.py), for the embedded default and tiny random checkpoints."""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> int:
    from videokv.models.selftest import TOLERANCE, run

    ap = argparse.ArgumentParser(prog="videokv selftest", description=__doc__)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--chunks", type=int, default=4, help="video chunks per check")
    ap.add_argument("--tokens", type=int, default=32, help="visual tokens per chunk")
    ap.add_argument("--skip-embedded", action="store_true", help="tiny random models only")
    args = ap.parse_args(argv)
    from videokv.runtime import Runtime

    def show(name: str, r: dict) -> None:
        if not args.json:
            print(f"{name:<20} max_abs_logit_diff={r['max_abs_logit_diff']:.2e} "
                  f"(logits up to {r['logit_scale']:.1f}, {r['context_tokens']} ctx tokens) "
                  f"{'ok' if r['pass'] else 'OVER ' + str(TOLERANCE)}")

    report = run(Runtime().backend, not args.skip_embedded, args.chunks, args.tokens, show)
    if args.json:
        print(json.dumps(report, indent=1))
    return 0 if report["pass"] else 1
