"""`videokv ingest FILE` and `videokv ask VIDEO_ID QUESTION`: embedded mode, no server."""

from __future__ import annotations

import argparse
import json
import sys

from .engine import MODES


def progress_bar(desc: str):
    """A tqdm bar on stderr driven by the pipeline's (done, total) callback."""
    from tqdm import tqdm

    state = {"bar": None}

    def update(done: int, total: int) -> None:
        bar = state["bar"]
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc=desc, unit="chunk", file=sys.stderr, leave=True)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def runtime(model: str | None):
    """A Runtime from the settings, with `--model` (a checkpoint folder) over VIDEOKV_MODEL."""
    from videokv.runtime import Runtime
    from videokv.settings import get_settings

    settings = get_settings()
    if model:
        settings = settings.model_copy(update={"model": model})
    return Runtime(settings)


MODEL_HELP = ("local checkpoint folder (default: VIDEOKV_MODEL); its config.json selects the backend, "
              "e.g. Qwen2-VL / Qwen2.5-VL. Ask with the same model a video was ingested with")


def main_ingest(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv ingest", description="Ingest a video into the KV store; "
                                 "prints the video id alone on the last line.")
    ap.add_argument("file")
    ap.add_argument("--tenant", default="default")
    ap.add_argument("--json", action="store_true", help="print the ingest result as JSON before the id")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--model", default=None, metavar="PATH", help=MODEL_HELP)
    args = ap.parse_args(argv)
    rt = runtime(args.model)
    res = rt.pipeline.ingest(args.file, tenant=args.tenant, progress=None if args.quiet else progress_bar("prefill"))
    if args.json:
        print(json.dumps(res.__dict__))
    elif not args.quiet:
        how = "already ingested (same file and model config)" if res.deduplicated else \
            f"{res.chunks_prefilled} chunks in {res.seconds:.1f} s, {res.frames_per_s:.1f} frames/s, " \
            f"{res.tokens_per_s:.0f} tokens/s" + (f", resumed at chunk {res.resumed_from}" if res.resumed_from else "")
        print(f"{args.file}: {res.status}, {how}", file=sys.stderr)
    print(res.video_id)
    return 0


def main_ask(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv ask", description="Ask a question about an ingested video.")
    ap.add_argument("video_id")
    ap.add_argument("question")
    ap.add_argument("--top-k", type=int, default=None, help="chunks re-loaded at L level (default: settings)")
    ap.add_argument("--mode", choices=MODES, default="bilevel")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--model", default=None, metavar="PATH", help=MODEL_HELP)
    args = ap.parse_args(argv)
    rt = runtime(args.model)
    stream = None if args.json else (lambda piece: print(piece, end="", flush=True))
    ans = rt.queries.ask(args.video_id, args.question, top_k=args.top_k, mode=args.mode,
                         max_new_tokens=args.max_new_tokens, on_token=stream)
    if args.json:
        print(json.dumps(ans.to_dict(), indent=1))
        return 0
    print()
    for e in ans.evidence:
        print(f"  evidence: chunk {e.chunk} [{e.t_start:.1f}s-{e.t_end:.1f}s] score={e.score:.3f} level={e.level}")
    t = ans.timings
    print(f"  ttft {t['ttft_ms']:.0f} ms, total {t['ttft_ms'] + t['decode_ms']:.0f} ms, "
          f"{ans.kv_bytes_loaded / 1e6:.1f} MB KV in context ({ans.context_tokens} tokens), "
          f"{ans.kv_bytes_read / 1e6:.1f} MB read, video prefill runs: {ans.video_prefill_runs}")
    return 0
