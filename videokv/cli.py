"""The `videokv` command: a thin dispatcher. Each command lives in its own module with a
`main(argv) -> int`, imported only when that command runs (so `--help` is instant)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "selftest": ("videokv.commands.selftest", "check KV exactness: chunked prefill vs one full forward"),
    "synth": ("videokv.commands.synth", "render a toy-world video and its ground-truth questions"),
    "ingest": ("videokv.commands.embedded", "ingest a video file into the KV store (prints its id)"),
    "ask": ("videokv.commands.embedded", "ask a question about an ingested video"),
    "search": ("videokv.commands.embedded", "find the moments a query describes, in one video or all (--all)"),
    "transcript": ("videokv.commands.embedded", "print a video's time-aligned text (OCR, speech, subtitles)"),
    "demo": ("videokv.commands.demo", "make a toy-world video, ingest it, ask it its questions"),
    "bench": ("videokv.bench", "benchmarks: `videokv bench NAME --help`"),
    "serve": ("videokv.commands.serve", "serve the REST API (uvicorn; needs Redis and a worker)"),
    "worker": ("videokv.commands.worker", "run a Celery worker (queues ingest, query)"),
    "query-worker": ("videokv.commands.query_worker", "answer the service's questions (owns the model; one per GPU)"),
    "keys": ("videokv.commands.serve", "API keys: create --tenant T | list | revoke PREFIX"),
    "train-vision": ("videokv.commands.train_vision", "train the toy-world tower + LLM adapter (--seed S)"),
    "eval-adapter": ("videokv.commands.train_vision", "accuracy of a toy-world adapter on held-out videos"),
}


def _usage() -> str:
    lines = ["usage: videokv COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<12} {doc}" for name, (_, doc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"videokv: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from .errors import VideoKVError

    module = importlib.import_module(COMMANDS[name][0])
    # Modules serving several commands expose `main_<command>`; others a plain `main`.
    fn = getattr(module, f"main_{name.replace('-', '_')}", None) or module.main
    try:
        return int(fn(rest) or 0)
    except VideoKVError as e:
        print(f"videokv {name}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"videokv {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
