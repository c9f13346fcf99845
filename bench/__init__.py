"""`videokv bench NAME ...`: each benchmark is a module here with `main(argv) -> int`."""

from __future__ import annotations

import importlib
import pkgutil
import sys


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: videokv bench NAME [ARGS]\n\nbenchmarks: " + ", ".join(names))
        return 0
    if argv[0] not in names:
        print(f"videokv bench: unknown benchmark {argv[0]!r}; known: {', '.join(names)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(f"{__name__}.{argv[0]}").main(argv[1:]) or 0)
