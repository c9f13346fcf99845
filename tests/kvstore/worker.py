"""A separate ingest process for the kvstore tests (run as a script, never forked).

usage: worker.py HOME VIDEO_ID VIDEO_NO [--delay S] [--map-size B] [--l-tokens T]
Prints "resume FIRST_MISSING", then "done I" per chunk (flushed), then "written N".
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kvstore_helpers as h  # noqa: E402

from videokv.kvstore import KVStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("home")
    ap.add_argument("video_id")
    ap.add_argument("video_no", type=int)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--map-size", type=int, default=1 << 20)
    ap.add_argument("--l-tokens", type=int, default=None)
    a = ap.parse_args()
    store = KVStore(a.home, map_size=a.map_size)
    print("resume", store.first_missing_chunk(a.video_id), flush=True)

    def on_chunk(i):
        print("done", i, flush=True)
        if a.delay:
            time.sleep(a.delay)

    n = h.ingest(store, a.video_id, a.video_no, on_chunk=on_chunk, l_tokens=a.l_tokens)
    print("written", n, "grew", store.env.grow_count, flush=True)


if __name__ == "__main__":
    main()
