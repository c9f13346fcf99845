"""`videokv bench moments`: temporal grounding, Charades-STA style. For every event of a
toy-world haystack, "When did the {color} {card|shape} appear?" is answered two ways over the
same stored video, side by side:

  moments   the query's best moment (query/grounding.py: the visual oracle's frame scores,
            cut into runs), the answer the service gives by default (when_by="moments")
  lm        the LLM's own answer (when_by="lm", bilevel): the times it states; two or more
            make a span [first, last], one a point (IoU 0 with any span of positive length)

Per event kind (card, shape: a single shape event, repeated shape: the counting pair, two or
three appearances, any of which counts): recall@1 at IoU >= 0.5 and >= 0.3 and mean IoU of
the top-1 span; per haystack length: temporal answers right by the TOYWORLD rule (a stated
time inside the event's span +/- one chunk), for both.

Haystacks are `videokv bench needle`'s (bench/_haystack.py) with --seed 5: never the needle
bench's (0), nor the counting bench's (1), on which the oracle's frame threshold, the one
calibrated value moments use, was measured. Text: on the text bench's videos (bench/text.py,
match and announcements; OCR and subtitles on), recall@1 of the query's best moment against
the banner's or the spoken sentence's span, and the source that found it.

Writes --out JSON (default runs/bench_moments.json), a PNG and markdown next to it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from ._common import bench_settings, floats, ints, log, store_args, write_outputs
from ._haystack import make_haystack
from .needle import TENANT

KINDS = ("card", "shape", "repeated shape")
METHODS = ("moments", "lm")
TAG = "moments"


def event_questions(truth: dict, chunk_seconds: float) -> list[dict]:
    """One "when" question per distinct event identity of a haystack, with every span it had."""
    groups: dict[tuple, list[dict]] = {}
    for e in truth["events"]:
        key = (e["color"], e["kind"]) if e["kind"] == "card" else (e["color"], e["shape"])
        groups.setdefault(key, []).append(e)
    out = []
    for (color, what), evs in groups.items():
        kind = "card" if what == "card" else ("shape" if len(evs) == 1 else "repeated shape")
        out.append({"kind": kind, "question": f"When did the {color} {what} appear?",
                    "spans": [(e["t_start"], e["t_end"]) for e in evs], "tolerance_s": chunk_seconds})
    return out


def right(q: dict, answer: str) -> bool:
    """TOYWORLD's temporal rule against any of the event's appearances."""
    from videokv.toyworld.grading import is_correct

    return any(is_correct({"type": "temporal", "answer_span": list(s), "tolerance_s": q["tolerance_s"]}, answer)
               for s in q["spans"])


def stated_span(answer: str) -> tuple[float, float] | None:
    from videokv.toyworld.grading import times_in

    ts = times_in(answer)
    return (min(ts), max(ts)) if ts else None


def best_iou(span, spans) -> float:
    from videokv.query.moments import iou

    return max((iou(span, s) for s in spans), default=0.0) if span else 0.0


def toy_rows(args, rt, t0: float) -> list[dict]:
    q = rt.queries
    fps = float(rt.settings.sample_fps)
    chunk_seconds = rt.settings.chunk_frames / fps
    rows = []
    for n in sorted(args.lengths):
        for d in args.depths:
            for r in range(args.repeats):
                path, truth, _, _ = make_haystack(args.workdir / "videos", n, d, r, args.seed, fps,
                                                  args.needle_seconds, 1.0, chunk_seconds)
                res = rt.pipeline.ingest(path, tenant=TENANT)
                rec = rt.store.get_video(res.video_id)
                for eq in event_questions(truth, chunk_seconds):
                    found = q.grounding.in_video(rec, eq["question"])
                    top = (found[0].start, found[0].end) if found else None
                    by_moment = q.ask(rec.video_id, eq["question"], when_by="moments")
                    row = {"length": n, "depth": d, "repeat": r, "kind": eq["kind"], "question": eq["question"],
                           "spans": eq["spans"], "moments": {"span": top, "iou": best_iou(top, eq["spans"]),
                                                             "answer": by_moment.answer,
                                                             "right": right(eq, by_moment.answer)}}
                    if args.lm:
                        a = q.ask(rec.video_id, eq["question"], when_by="lm", max_new_tokens=args.max_new_tokens)
                        span = stated_span(a.answer)
                        row["lm"] = {"span": span, "iou": best_iou(span, eq["spans"]) if span and span[1] > span[0]
                                     else 0.0, "answer": a.answer, "right": right(eq, a.answer)}
                    rows.append(row)
                log(t0, TAG, f"haystack n={n} d={d} r={r}: {sum(x['moments']['iou'] >= 0.5 for x in rows)}"
                             f"/{len(rows)} moments at IoU>=0.5 so far")
    return rows


def text_rows(args, rt, t0: float) -> list[dict]:
    from .text import make_video

    rows = []
    (args.workdir / "text").mkdir(parents=True, exist_ok=True)
    for i, kind in enumerate(args.text_kinds):
        v = make_video(args.workdir / "text", kind, args.text_minutes, args.seed + i)
        opts = rt.text_defaults.overridden(ocr=True, asr=False, subtitles=bool(v["srt"]), subtitle_file=v["srt"])
        res = rt.pipeline.ingest(v["path"], tenant=TENANT, text=opts)
        rec = rt.store.get_video(res.video_id)
        for qq in v["questions"]:
            found = rt.queries.grounding.in_video(rec, qq["question"])
            top = found[0] if found else None
            span = (top.start, top.end) if top else None
            rows.append({"video": kind, "kind": qq["kind"], "question": qq["question"], "span": qq["span"],
                         "top": span, "source": top.source if top else None, "text": top.text if top else "",
                         "iou": best_iou(span, [tuple(qq["span"])])})
        log(t0, TAG, f"text video {kind}: {sum(r['iou'] >= 0.5 for r in rows)}/{len(rows)} at IoU>=0.5 so far")
    return rows


def _rate(xs) -> float | None:
    xs = list(xs)
    return round(sum(xs) / len(xs), 4) if xs else None


def summarize(rows: list[dict], methods) -> dict:
    out = {}
    for m in methods:
        per_kind = {}
        for k in KINDS + ("all",):
            got = [r[m] for r in rows if k in ("all", r["kind"])]
            per_kind[k] = {"n": len(got), "r1_iou50": _rate(g["iou"] >= 0.5 for g in got),
                           "r1_iou30": _rate(g["iou"] >= 0.3 for g in got),
                           "mean_iou": round(statistics.fmean(g["iou"] for g in got), 4) if got else None}
        per_length = {str(n): _rate(r[m]["right"] for r in rows if r["length"] == n)
                      for n in sorted({r["length"] for r in rows})}
        out[m] = {"by_kind": per_kind, "temporal_right_by_length": per_length}
    return out


def run(args) -> dict:
    from videokv.runtime import Runtime

    t0 = time.perf_counter()
    rt = Runtime(bench_settings(args.threads, args.home))
    rows = toy_rows(args, rt, t0)
    trows = text_rows(args, rt, t0) if args.text_kinds else []
    methods = METHODS if args.lm else METHODS[:1]
    summary = summarize(rows, methods)
    text = {"n": len(trows), "r1_iou50": _rate(r["iou"] >= 0.5 for r in trows),
            "r1_iou30": _rate(r["iou"] >= 0.3 for r in trows),
            "by_kind": {k: _rate(r["iou"] >= 0.5 for r in trows if r["kind"] == k)
                        for k in sorted({r["kind"] for r in trows})}}
    m = summary["moments"]
    lowest = min((v for v in m["temporal_right_by_length"].values() if v is not None), default=None)
    targets = {"toy_r1_iou50_ge_0.80": {"value": m["by_kind"]["all"]["r1_iou50"],
                                         "met": (m["by_kind"]["all"]["r1_iou50"] or 0) >= 0.80},
               "temporal_right_ge_0.90_every_length": {"value": lowest, "met": (lowest or 0) >= 0.90}}
    cfg = {"lengths": args.lengths, "depths": args.depths, "repeats": args.repeats, "seed": args.seed,
           "needle_seconds": args.needle_seconds, "text_kinds": args.text_kinds, "text_minutes": args.text_minutes,
           "frame_floor": rt.queries.grounding.runs.floor, "rel": rt.queries.grounding.runs.rel}
    return {"config": cfg, "summary": summary, "text": text, "targets": targets, "rows": rows, "text_rows": trows,
            "total_s": round(time.perf_counter() - t0, 1)}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def side_by_side(res: dict) -> str:
    s = res["summary"]
    methods = list(s)
    lines = [f"{'kind':<16}" + "".join(f"{m + ' R@1 .5':>14}{m + ' R@1 .3':>14}{m + ' mIoU':>12}" for m in methods)]
    for k in KINDS + ("all",):
        cells = ""
        for m in methods:
            b = s[m]["by_kind"][k]
            cells += f"{_pct(b['r1_iou50']):>14}{_pct(b['r1_iou30']):>14}{b['mean_iou'] if b['mean_iou'] is not None else '-':>12}"
        lines.append(f"{k + ' (' + str(s[methods[0]]['by_kind'][k]['n']) + ')':<16}{cells}")
    lines.append("")
    lines.append(f"{'length':<10}" + "".join(f"{m + ' right':>16}" for m in methods))
    for n in s[methods[0]]["temporal_right_by_length"]:
        lines.append(f"{n:<10}" + "".join(f"{_pct(s[m]['temporal_right_by_length'][n]):>16}" for m in methods))
    t = res["text"]
    lines.append(f"\ntext moments (n={t['n']}): R@1 IoU>=0.5 {_pct(t['r1_iou50'])}, >=0.3 {_pct(t['r1_iou30'])}, "
                 + ", ".join(f"{k} {_pct(v)}" for k, v in t["by_kind"].items()))
    return "\n".join(lines)


def markdown(res: dict) -> str:
    s = res["summary"]
    methods = list(s)
    head = "| event kind (n) | " + " | ".join(f"{m}: R@1 IoU≥0.5 | {m}: R@1 IoU≥0.3 | {m}: mean IoU" for m in methods)
    lines = [head + " |", "|" + "---|" * (1 + 3 * len(methods))]
    for k in KINDS + ("all",):
        cells = []
        for m in methods:
            b = s[m]["by_kind"][k]
            cells += [_pct(b["r1_iou50"]), _pct(b["r1_iou30"]), f"{b['mean_iou']:.2f}" if b["mean_iou"] is not None else "-"]
        lines.append(f"| {k} ({s[methods[0]]['by_kind'][k]['n']}) | " + " | ".join(cells) + " |")
    lines += ["", "| haystack (frames) | " + " | ".join(f"temporal right, {m}" for m in methods) + " |",
              "|" + "---|" * (1 + len(methods))]
    for n in s[methods[0]]["temporal_right_by_length"]:
        lines.append(f"| {n} | " + " | ".join(_pct(s[m]["temporal_right_by_length"][n]) for m in methods) + " |")
    t = res["text"]
    lines += ["", f"Text moments (the text bench's videos, n={t['n']}): recall@1 at IoU≥0.5 {_pct(t['r1_iou50'])}, "
                  f"at IoU≥0.3 {_pct(t['r1_iou30'])}; " + ", ".join(f"{k} {_pct(v)}" for k, v in t["by_kind"].items())]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    from PIL import Image

    from ._common import line_chart

    s = res["summary"]
    img = Image.new("RGB", (900, 380), "white")
    series = {f"{m}, IoU≥{th}": [(i, s[m]["by_kind"][k][f"r1_iou{int(th * 100)}"]) for i, k in enumerate(KINDS + ("all",))]
              for m in s for th in (0.5, 0.3)}
    line_chart(img, (0, 0, 450, 380), series, "recall@1 by event kind: card, shape, repeated, all", "kind (0-3)", "")
    lengths = list(s["moments"]["temporal_right_by_length"])
    series = {m: [(int(n), s[m]["temporal_right_by_length"][n]) for n in lengths] for m in s}
    line_chart(img, (450, 0, 900, 380), series, "temporal answers right", "haystack frames", "", xlog=True)
    img.save(path)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv bench moments", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=ints, default=[256, 1024, 4096], help="haystack sizes in sampled frames")
    ap.add_argument("--depths", type=floats, default=[0.2, 0.5, 0.8], help="where the needles sit (0..1)")
    ap.add_argument("--repeats", type=int, default=1, help="haystacks per length and depth")
    ap.add_argument("--seed", type=int, default=5, help="haystack seed (needle bench: 0, counting bench: 1)")
    ap.add_argument("--needle-seconds", type=float, default=3.0, help="how long each event is shown")
    ap.add_argument("--text-kinds", type=lambda s: [x for x in s.split(",") if x], default=["match", "announcements"],
                    help="the text bench's videos to search (empty: none)")
    ap.add_argument("--text-minutes", type=float, default=3.0, help="length of each text video")
    ap.add_argument("--no-lm", dest="lm", action="store_false", help="skip the LLM's temporal answers")
    ap.add_argument("--max-new-tokens", type=int, default=24, help="longest LLM answer")
    store_args(ap, "moments")
    args = ap.parse_args(argv)
    write_outputs(run(args), args.out, None, plot, markdown, side_by_side)
    return 0
