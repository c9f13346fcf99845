"""`videokv bench quant`: the storage codecs side by side (kvstore/codecs.py) on the needle
bench's haystacks: bytes stored per hour, bytes paged per question, read-and-dequantize
throughput, TTFT with the hot set read from the disk, from the page cache (cold) and kept
in memory (warm), first-token logit error and greedy-answer agreement against the
unquantized store, and needle accuracy per question type (bilevel).

Every codec ingests the same haystacks into its own home (the model is loaded once) and is
asked the same questions. Bytes per hour are measured for the embedded default and computed
from the blob layout for Qwen2.5-VL-7B (28 layers, 4 KV heads, head dim 128, bf16; 1 fps,
128 tokens a frame, 16-frame chunks at L 2x and H 16x). Nothing here is tuned: the codecs
have no parameters fitted to these questions (the groups are the defaults), and the
haystacks are the needle bench's (seed 0 by default).

    videokv bench quant [--lengths 64,256,1024] [--depths 0.1,0.5,0.9] [--codecs none,bf16,...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from ._common import bench_settings, floats, ints, line_chart, log, write_outputs
from ._haystack import TYPES, make_haystack

CODECS = ("none", "bf16", "fp16", "fp8", "int8", "int4")
KERNEL_CODECS = ("fp8", "int8", "int4")     # decoded by kvstore/dequant.c where it is built
TENANT = "bench-quant"
# Qwen2.5-VL-7B's KV geometry, for the computed archive sizes.
QWEN7B = {"layers": 28, "kv_heads": 4, "head_dim": 128, "tokens_per_frame": 128, "chunk_frames": 16,
          "l_ratio": 2, "h_ratio": 16}


def _tag(t0: float, msg: str) -> None:
    log(t0, "quant", msg)


def stored_bytes(rt, video_id: str) -> int:
    """Bytes of every K,V blob of the video as stored (prefix, then each chunk's levels)."""
    records = rt.store.chunk_records(video_id)
    with rt.store.reader() as r:
        return sum(len(r.raw(video_id, c.index, lvl)) for c in records for lvl in c.nbytes)


def qwen7b_gb_per_hour(codec_name: str) -> float:
    """GB stored per hour of video at 1 fps for Qwen2.5-VL-7B's KV shape, by the blob layout."""
    import torch

    from videokv.kvstore import blob as blobfmt
    from videokv.kvstore.codecs import codec_named

    g = QWEN7B
    codec = codec_named(codec_name)
    chunk_tokens = g["tokens_per_frame"] * g["chunk_frames"]
    per_chunk = sum(blobfmt.encoded_size(g["layers"], g["kv_heads"], chunk_tokens // r, g["head_dim"], torch.bfloat16,
                                         codec) for r in (g["l_ratio"], g["h_ratio"]))
    return per_chunk * (3600 / g["chunk_frames"]) / 1e9


def first_logits(rt, video_id: str, question: str, top_k: int):
    """Logits [vocab] of the answer's first token (bilevel; the same chunk layout for every
    codec: retrieval reads the embeddings, which no codec touches)."""
    from videokv.engine.decode import question_logits

    p = rt.queries.prepare(video_id, question, mode="bilevel", top_k=top_k, max_new_tokens=1, count_by="lm", when_by="lm")
    return question_logits(rt.backend, p.cache, p.suffix)[-1].float()


def ttfts(runtimes: dict, vids: dict, question: str, top_k: int, repeats: int) -> dict:
    """Per codec: median TTFT (ms) with the hot set read from the disk (the store's file put
    out of memory first, _pagecache.py: the first question on a video of an archive larger
    than memory), read from the store with its file in the page cache (cold: the hot set
    was evicted, the bytes are in memory), and kept in memory (warm); of the first two, the
    share spent paging the KV (`load_ms`: reading, checking and dequantizing the hot set and
    the L chunks; the part a codec changes, without the prefill's noise); the store's share left
    in memory after each drop; and the read-and-dequantize throughput of the hot set (GB/s
    of K,V handed to the model, page cache warm). The codecs take turns within each repeat,
    in reverse order every other repeat, so a change of the machine's load or the order
    itself falls on all of them alike. Where the one-pass kernel is built (kvstore/native.py)
    fp8, int8 and int4 also answer the cold question with torch's decode (`*_torch_decode_ms`), after
    the warm one, so every codec's cold question follows its own disk question (README: with it
    in between, two runs saw int8's prefill 4-8 ms longer, perhaps by chance)."""
    from videokv.kvstore import native
    from videokv.query.hotset import read_hot_set

    from ._pagecache import drop_store_pages

    keys = ("disk", "cold", "warm", "cold_torch", "load_disk", "load_cold", "load_cold_torch", "rate", "resident")
    got = {name: {k: [] for k in keys} for name in runtimes}
    for i in range(repeats):
        for name in list(runtimes)[:: 1 if i % 2 == 0 else -1]:
            rt, video_id, g = runtimes[name], vids[name], got[name]
            q = rt.queries

            def ask(where: str) -> None:
                t = q.ask(video_id, question, top_k=top_k, max_new_tokens=1, count_by="lm", when_by="lm").timings
                g[where].append(t["ttft_ms"])
                if where != "warm":
                    g["load_" + where].append(t["load_ms"])

            q.hot.evict(video_id)
            g["resident"].append(drop_store_pages(rt.store))
            ask("disk")
            q.hot.evict(video_id)
            ask("cold")
            ask("warm")
            if name in KERNEL_CODECS and native.built():    # last: every codec's cold follows its disk question
                q.hot.evict(video_id)
                with native.disabled():
                    ask("cold_torch")
            t = time.perf_counter()
            hot = read_hot_set(rt.store, video_id, rt.config.fingerprint(), q.pager.h_text)
            g["rate"].append(hot.nbytes / (time.perf_counter() - t) / 1e9)
    med = {name: {k: statistics.median(v) if v else None for k, v in g.items()} for name, g in got.items()}
    out = {name: {"ttft_disk_ms": round(m["disk"], 2), "ttft_cold_ms": round(m["cold"], 2),
                  "ttft_warm_ms": round(m["warm"], 2), "load_disk_ms": round(m["load_disk"], 2),
                  "load_cold_ms": round(m["load_cold"], 2), "disk_resident_after_drop": round(m["resident"], 4),
                  "hot_set_read_gb_s": round(m["rate"], 3),
                  # Each repeat's cold figures, in order: the targets pair them across codecs.
                  "ttft_cold_runs_ms": [round(x, 2) for x in got[name]["cold"]],
                  "load_cold_runs_ms": [round(x, 2) for x in got[name]["load_cold"]]} for name, m in med.items()}
    for name, m in med.items():
        if m["cold_torch"] is not None:
            out[name].update(ttft_cold_torch_decode_ms=round(m["cold_torch"], 2),
                             load_cold_torch_decode_ms=round(m["load_cold_torch"], 2))
    return out


def run(args) -> dict:
    from videokv.runtime import Runtime

    from .needle import ask_haystack

    t0 = time.perf_counter()
    base = bench_settings(args.threads)
    fps, chunk_s = float(base.sample_fps), base.chunk_frames / float(base.sample_fps)
    runtimes = {}
    for name in args.codecs:
        rt = Runtime(base.model_copy(update={"home": args.workdir / "homes" / name, "kv_codec": name}))
        if runtimes:
            rt.backend = next(iter(runtimes.values())).backend       # one model for every codec
        runtimes[name] = rt
    ref = args.codecs[0]
    _tag(t0, f"codecs {', '.join(args.codecs)} (reference {ref}); haystacks {args.lengths} x depths {args.depths}")
    rows, stores, seconds = [], {n: 0 for n in args.codecs}, 0.0
    last = None
    for n in sorted(args.lengths):
        for d in args.depths:
            path, truth, _, _ = make_haystack(args.workdir / "videos", n, d, 0, args.seed, fps, 3.0, 1.0, chunk_s)
            seconds += truth["video"]["duration"]
            vids = {}
            for name, rt in runtimes.items():
                vids[name] = rt.pipeline.ingest(path, tenant=TENANT).video_id
                stores[name] += stored_bytes(rt, vids[name])
            answers = {name: ask_haystack(rt, vids[name], truth, ["bilevel"], args.top_k, args.max_new_tokens,
                                          args.seed, 0, args.types) for name, rt in runtimes.items()}
            for i, qa in enumerate(answers[ref]):
                ref_logits = first_logits(runtimes[ref], vids[ref], qa["question"], args.top_k)
                row = {"haystack": path.stem, "length": n, "depth": d, "type": qa["type"],
                       "question": qa["question"], "expected": qa["expected"], "codecs": {}}
                for name in args.codecs:
                    r = answers[name][i]["results"]["bilevel"]
                    row["codecs"][name] = {
                        "answer": r["answer"], "correct": r["correct"], "ttft_ms": r["ttft_ms"],
                        "agrees": r["answer"] == qa["results"]["bilevel"]["answer"],
                        "max_abs_logit_diff": 0.0 if name == ref else round(float(
                            (first_logits(runtimes[name], vids[name], qa["question"], args.top_k) - ref_logits)
                            .abs().max()), 5)}
                rows.append(row)
            _tag(t0, f"{path.stem}: " + ", ".join(
                f"{c} {sum(r['codecs'][c]['correct'] for r in rows if r['haystack'] == path.stem)}"
                for c in args.codecs) + f" right of {len(answers[ref])}")
            last = (vids, truth)
    vids, truth = last
    timing = ttfts(runtimes, vids, truth["questions"][0]["question"], args.top_k, args.repeats)
    paged = {name: _paged(rt, vids[name], truth, args.top_k) for name, rt in runtimes.items()}
    return summarize(rows, stores, seconds, timing, paged, args, time.perf_counter() - t0)


def _paged(rt, video_id: str, truth: dict, top_k: int) -> int:
    """Bytes read from the store for one question with a cold hot set (its H set + its L chunks)."""
    q = rt.queries
    q.hot.evict(video_id)
    return q.ask(video_id, truth["questions"][0]["question"], top_k=top_k, max_new_tokens=1,
                 count_by="lm", when_by="lm").kv_bytes_read


def summarize(rows, stores, seconds, timing, paged, args, total_s) -> dict:
    from videokv.kvstore import native

    ref = args.codecs[0]
    hours = seconds / 3600
    bf16 = stores.get("bf16")
    if bf16 is None:                         # no bf16 run: the reference's bytes at 2 bytes a value
        bf16 = stores[ref] * (2 / 4 if ref == "none" else 1)
    per = {}
    for name in args.codecs:
        cells = [r["codecs"][name] for r in rows]
        acc = sum(c["correct"] for c in cells) / len(cells)
        per[name] = {
            "stored_bytes": stores[name], "bytes_per_hour_embedded_gb": round(stores[name] / hours / 1e9, 3),
            "bytes_per_hour_qwen25_7b_gb": round(qwen7b_gb_per_hour(name if name != "none" else "bf16"), 2),
            "bytes_ratio_vs_bf16": round(stores[name] / bf16, 4),
            "bytes_paged_per_question": paged[name],
            "accuracy": round(acc, 4),
            "accuracy_by_type": {t: round(sum(r["codecs"][name]["correct"] for r in rows if r["type"] == t)
                                          / max(1, sum(1 for r in rows if r["type"] == t)), 4) for t in args.types},
            "answer_agreement": round(sum(c["agrees"] for c in cells) / len(cells), 4),
            "max_abs_logit_diff": round(max(c["max_abs_logit_diff"] for c in cells), 5),
            "median_abs_logit_diff": round(statistics.median(c["max_abs_logit_diff"] for c in cells), 5),
            **timing[name],
        }
    for name in args.codecs:
        per[name]["accuracy_delta_pts"] = round(100 * (per[name]["accuracy"] - per[ref]["accuracy"]), 2)
    targets = {}
    if "int8" in per:
        targets["int8"] = {"bytes_ratio_vs_bf16": per["int8"]["bytes_ratio_vs_bf16"], "max_ratio": 0.55,
                           "accuracy_delta_pts": per["int8"]["accuracy_delta_pts"], "min_delta": -1,
                           "met": per["int8"]["bytes_ratio_vs_bf16"] <= 0.55 and per["int8"]["accuracy_delta_pts"] >= -1}
    if "int4" in per:
        targets["int4"] = {"bytes_ratio_vs_bf16": per["int4"]["bytes_ratio_vs_bf16"], "max_ratio": 0.30,
                           "accuracy_delta_pts": per["int4"]["accuracy_delta_pts"], "min_delta": -3,
                           "met": per["int4"]["bytes_ratio_vs_bf16"] <= 0.30 and per["int4"]["accuracy_delta_pts"] >= -3}
    if "int8" in per and "bf16" in per:
        for where in ("disk", "cold"):
            a, b = per["int8"][f"ttft_{where}_ms"], per["bf16"][f"ttft_{where}_ms"]
            la, lb = per["int8"][f"load_{where}_ms"], per["bf16"][f"load_{where}_ms"]
            targets[f"ttft_{where}_int8_vs_bf16"] = {"int8_ms": a, "bf16_ms": b, "ratio": round(a / b, 3),
                                                     "met": a <= b, "load_int8_ms": la, "load_bf16_ms": lb,
                                                     "load_ratio": round(la / lb, 3)}
            if where == "cold":             # the same repeat's int8 over bf16, then the median of those
                for key, runs in (("paired_ratio", "ttft_cold_runs_ms"), ("load_paired_ratio", "load_cold_runs_ms")):
                    pairs = zip(per["int8"][runs], per["bf16"][runs])
                    targets["ttft_cold_int8_vs_bf16"][key] = round(statistics.median(x / y for x, y in pairs), 3)
            if where == "cold" and "ttft_cold_torch_decode_ms" in per["int8"]:
                torch_ms = per["int8"]["ttft_cold_torch_decode_ms"]
                targets["ttft_cold_int8_vs_bf16"].update(int8_torch_decode_ms=torch_ms,
                                                         torch_decode_ratio=round(torch_ms / b, 3))
    return {"bench": "quant", "config": {"lengths": args.lengths, "depths": args.depths, "codecs": args.codecs,
                                         "types": args.types, "top_k": args.top_k, "seed": args.seed,
                                         "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
                                         "reference": ref, "qwen25_7b": QWEN7B, "cpus": os.cpu_count(),
                                         "int_decode": "kernel" if native.built() else "torch"},
            "codecs": per, "targets": targets, "questions": rows, "video_hours": round(hours, 4),
            "total_s": round(total_s, 1)}


def side_by_side(result: dict) -> str:
    head = ("| codec | bytes vs bf16 | GB/h embedded | GB/h Qwen2.5-VL-7B | paged/question | accuracy | delta pts "
            "| agreement | max logit diff | TTFT disk / cold / warm ms | KV load disk / cold ms | hot-set read GB/s |")
    lines = [head, "|" + "---|" * 12]
    for name, c in result["codecs"].items():
        lines.append(f"| {name} | {c['bytes_ratio_vs_bf16']:.3f} | {c['bytes_per_hour_embedded_gb']:.3f} | "
                     f"{c['bytes_per_hour_qwen25_7b_gb']:.1f} | {c['bytes_paged_per_question'] / 2**20:.2f} MiB | "
                     f"{100 * c['accuracy']:.1f}% | {c['accuracy_delta_pts']:+.1f} | {100 * c['answer_agreement']:.1f}% | "
                     f"{c['max_abs_logit_diff']:.3g} | {c['ttft_disk_ms']:.0f} / {c['ttft_cold_ms']:.0f} / "
                     f"{c['ttft_warm_ms']:.0f} | {c['load_disk_ms']:.0f} / {c['load_cold_ms']:.1f} | "
                     f"{c['hot_set_read_gb_s']:.2f} |")
    for name, c in result["codecs"].items():
        if "ttft_cold_torch_decode_ms" in c:
            lines.append(f"\n{name}, the same cold questions with torch's decode instead of the one-pass kernel: "
                         f"TTFT {c['ttft_cold_torch_decode_ms']:.0f} ms (kernel {c['ttft_cold_ms']:.0f}), KV load "
                         f"{c['load_cold_torch_decode_ms']:.1f} ms (kernel {c['load_cold_ms']:.1f}).")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    c = result["config"]
    n = len(result["questions"])
    return (f"`videokv bench quant`: {n} needle questions (bilevel, top-k {c['top_k']}) on haystacks of "
            f"{c['lengths']} frames at depths {c['depths']} (seed {c['seed']}), against `{c['reference']}`; "
            f"{result['total_s']:.0f} s.\n\n" + side_by_side(result))


def plot(result: dict, path: Path) -> None:
    """Two panels against bytes stored (vs bf16): needle accuracy, and the largest first-token
    logit change against the reference (log scale; the reference itself, 0, is not drawn)."""
    from PIL import Image

    img = Image.new("RGB", (1240, 420), "white")
    codecs = result["codecs"].items()
    x = {name: round(c["bytes_ratio_vs_bf16"], 3) for name, c in codecs}
    accuracy = {name: [(x[name], 100 * c["accuracy"])] for name, c in codecs}
    logits = {name: [(x[name], c["max_abs_logit_diff"])] for name, c in codecs}
    line_chart(img, (0, 0, 620, 420), accuracy, "needle accuracy (bilevel) against bytes stored", "bytes vs bf16",
               "% right", xlog=True)
    line_chart(img, (620, 0, 1240, 420), logits, "largest logit change against bytes stored", "bytes vs bf16",
               "max |delta logit|", xlog=True, ylog=True)
    img.save(path)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv bench quant", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=ints, default=[64, 256, 1024], help="haystack sizes in frames")
    ap.add_argument("--depths", type=floats, default=[0.1, 0.5, 0.9], help="needle depths (0-1)")
    ap.add_argument("--codecs", type=lambda s: [x for x in s.split(",") if x], default=list(CODECS),
                    help="codecs, the reference first (default: none,bf16,fp16,fp8,int8,int4)")
    ap.add_argument("--types", type=lambda s: [x for x in s.split(",") if x], default=list(TYPES),
                    help="needle question types (default: all five)")
    ap.add_argument("--top-k", type=int, default=3, help="chunks the oracle loads at L (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="haystack seed (the needle bench's figures: 0)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="longest answer, in tokens")
    ap.add_argument("--repeats", type=int, default=5, help="TTFT and throughput repeats (medians)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench_quant"),
                    help="haystacks and one store per codec (reused by later runs)")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default WORKDIR/quant.json)")
    args = ap.parse_args(argv)
    bad = [c for c in args.codecs if c not in CODECS]
    if bad:
        ap.error(f"unknown codecs {bad}; choose from {', '.join(CODECS)}")
    out = args.out or args.workdir / "quant.json"
    result = run(args)
    write_outputs(result, out, None, plot, markdown, side_by_side)
    return 0
