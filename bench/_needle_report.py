"""The needle bench's summary and outputs (`videokv bench needle`, bench/needle.py): accuracy,
bytes and TTFT per mode over lengths, depths and question types; the side-by-side table, the
README's markdown and the heatmap."""

from __future__ import annotations

import math
from pathlib import Path

from ._common import mean, rounded

SINGLE_NEEDLE_TYPES = ("retrieval", "attribute", "temporal")


def _cell(rows: list[dict], mode: str) -> dict:
    ran = [r["results"][mode] for r in rows if mode in r["results"] and "skipped" not in r["results"][mode]]
    skipped = sum(1 for r in rows if "skipped" in r["results"].get(mode, {}))
    return {
        "n": len(ran), "skipped": skipped,
        "accuracy": rounded(mean([float(x["correct"]) for x in ran])),
        "kv_bytes_mean": rounded(mean([x["kv_bytes_loaded"] for x in ran]), 1),
        "bytes_vs_dense": rounded(mean([x["bytes_vs_dense"] for x in ran])),
        "ttft_ms_mean": rounded(mean([x["ttft_ms"] for x in ran]), 2),
        "context_tokens_mean": rounded(mean([x["context_tokens"] for x in ran]), 1),
        "needle_in_l": rounded(mean([float(x["needle_in_l"]) for x in ran])),
    }


def _recall(rows: list[dict]) -> float | None:
    return rounded(mean([float(r["recall_at_k"]) for r in rows]))


def summarize(questions: list[dict], modes, lengths, depths, types) -> dict:
    single = [r for r in questions if r["type"] in SINGLE_NEEDLE_TYPES]
    by = lambda **kw: [r for r in questions if all(r[k] == v for k, v in kw.items())]  # noqa: E731
    return {
        "by_mode": {m: _cell(questions, m) for m in modes},
        "by_length": {str(n): {m: _cell(by(length=n), m) for m in modes} for n in lengths},
        "by_type": {t: {m: _cell(by(type=t), m) for m in modes} for t in types},
        "grid": {m: {str(n): {f"{d:g}": _cell(by(length=n, depth=d), m) for d in depths} for n in lengths}
                 for m in modes},
        "cells": [{"length": n, "depth": d, "type": t, "recall_at_k": _recall(by(length=n, depth=d, type=t)),
                   **{m: _cell(by(length=n, depth=d, type=t), m) for m in modes}}
                  for n in lengths for d in depths for t in types if by(length=n, depth=d, type=t)],
        "counting_by_counter": {
            "by_length": {str(n): _counter([r for r in questions if r["length"] == n]) for n in lengths},
            "overall": _counter(questions)},
        "recall_at_k": {
            "single_needle_types": list(SINGLE_NEEDLE_TYPES),
            "overall": _recall(single),
            "by_length": {str(n): _recall([r for r in single if r["length"] == n]) for n in lengths},
            "by_type": {t: _recall(by(type=t)) for t in types},
            "grid": {str(n): {f"{d:g}": _recall([r for r in single if r["length"] == n and r["depth"] == d])
                              for d in depths} for n in lengths},
        },
    }


def _counter(rows: list[dict]) -> dict:
    """The span counter's accuracy on the counting questions among rows that have it."""
    ran = [r["counter"] for r in rows if "counter" in r]
    return {"n": len(ran), "accuracy": rounded(mean([float(x["correct"]) for x in ran]))}


def _fmt_cell(c: dict, with_ttft: bool = True) -> str:
    if not c["n"]:
        return "does not fit" if c["skipped"] else "-"
    s = f"{c['accuracy']:.2f} acc, {c['bytes_vs_dense']:.2f}x bytes"
    return s + (f", {c['ttft_ms_mean']:.0f} ms" if with_ttft else "")


def side_by_side(result: dict) -> str:
    modes, summ = result["config"]["modes"], result["summary"]
    w = 32
    lines = [f"{'frames':>7} {'recall@k':>8} | " + " | ".join(f"{m:<{w}}" for m in modes)]
    lines.append("-" * len(lines[0]))
    for n, cells in summ["by_length"].items():
        rc = summ["recall_at_k"]["by_length"].get(n)
        lines.append(f"{n:>7} {('-' if rc is None else f'{rc:.2f}'):>8} | "
                     + " | ".join(f"{_fmt_cell(cells[m]):<{w}}" for m in modes))
    rc = summ["recall_at_k"]["overall"]
    lines.append(f"{'all':>7} {('-' if rc is None else f'{rc:.2f}'):>8} | "
                 + " | ".join(f"{_fmt_cell(summ['by_mode'][m]):<{w}}" for m in modes))
    cc = summ.get("counting_by_counter", {})
    if cc.get("overall", {}).get("n"):
        lines.append("counting by the span counter (the service's default; the modes above decode it with the "
                     "LLM): " + ", ".join(f"{n} frames {c['accuracy']:.2f}" for n, c in cc["by_length"].items()
                                         if c["n"]) + f"; all {cc['overall']['accuracy']:.2f}")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    cfg, summ = result["config"], result["summary"]
    modes = cfg["modes"]
    out = [f"### Needle in a haystack ({cfg['model']}, vision `{cfg['vision']}`)", "",
           f"Toy-world haystacks, {cfg['sample_fps']:g} fps sampling, {cfg['chunk_frames']} frames/chunk, "
           f"L-KV {cfg['l_ratio']}x / H-KV {cfg['h_ratio']}x, top-k {cfg['top_k']}"
           + (" (+ first/last chunk)" if cfg["always_first_last"] else "")
           + (", H chunks paged without their timestamp rows" if cfg.get("h_text") == "drop" else "")
           + f", depths {', '.join(f'{d:g}' for d in cfg['depths'])}, {cfg['repeats']} repeat(s), "
           f"{len(cfg['types'])} question types. Each cell: accuracy / KV bytes vs dense / mean TTFT. "
           f"Dense runs only where the context fits {cfg['context_limit']} positions.", "",
           "| frames | oracle recall@k | " + " | ".join(modes) + " |",
           "|---:|---:|" + "---|" * len(modes)]

    def cell(c):
        if not c["n"]:
            return "does not fit" if c["skipped"] else "-"
        return f"{c['accuracy']:.2f} / {c['bytes_vs_dense']:.2f}x / {c['ttft_ms_mean']:.0f} ms"

    rc = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    for n, cells in summ["by_length"].items():
        out.append(f"| {n} | {rc(summ['recall_at_k']['by_length'].get(n))} | "
                   + " | ".join(cell(cells[m]) for m in modes) + " |")
    out.append(f"| all | {rc(summ['recall_at_k']['overall'])} | "
               + " | ".join(cell(summ["by_mode"][m]) for m in modes) + " |")
    out += ["", "Accuracy by question type:", "", "| type | oracle recall@k | " + " | ".join(modes) + " |",
            "|---|---:|" + "---:|" * len(modes)]
    for t, cells in summ["by_type"].items():
        out.append(f"| {t} | {rc(summ['recall_at_k']['by_type'].get(t))} | "
                   + " | ".join("-" if cells[m]["accuracy"] is None else f"{cells[m]['accuracy']:.2f}"
                                for m in modes) + " |")
    cc = summ.get("counting_by_counter", {})
    if cc.get("overall", {}).get("n"):
        out += ["", "Counting answered by the span counter (query/counting.py, the service's default for "
                "\"how many times\" questions; the table above decodes them with the LLM): "
                + ", ".join(f"{n} frames {c['accuracy']:.2f}" for n, c in cc["by_length"].items() if c["n"])
                + f"; all {cc['overall']['accuracy']:.2f}."]
    hs = result["haystacks"]
    fresh = [h for h in hs if not h["reused_ingest"]]
    fps = sum(h["frames"] for h in fresh) / sum(h["ingest_s"] for h in fresh) if fresh else None
    out += ["", f"{len(hs)} haystacks, {sum(h['frames'] for h in hs)} frames; ingest "
            + (f"{fps:.1f} frames/s" if fps else "reused") + f"; device {cfg['device']}, "
            f"{cfg['torch_threads']} torch threads. `videokv bench needle` (bench/needle.py).", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- heatmap

def _rgb(x: float) -> tuple[int, int, int]:
    """Accuracy 0..1 -> red .. yellow .. green (the usual needle-figure palette)."""
    x = min(max(x, 0.0), 1.0)
    stops = [(0.0, (214, 47, 39)), (0.5, (250, 220, 90)), (1.0, (26, 152, 80))]
    for (a, ca), (b, cb) in zip(stops, stops[1:]):
        if x <= b:
            f = (x - a) / (b - a)
            return tuple(int(round(ca[i] + f * (cb[i] - ca[i]))) for i in range(3))
    return stops[-1][1]


def heatmap(result: dict, path: Path) -> None:
    """One panel per mode (x: haystack length in frames, y: needle depth; colour: accuracy)
    plus a panel of the oracle's recall@k; PIL only (matplotlib is not a dependency)."""
    from PIL import Image, ImageDraw

    from videokv.toyworld.render import load_font

    cfg, summ = result["config"], result["summary"]
    lengths, depths = [str(n) for n in sorted(cfg["lengths"])], [f"{d:g}" for d in cfg["depths"]]
    order = [m for m in ("bilevel", "adaptive", "dense", "sparse", "bilevel-random") if m in cfg["modes"]]
    panels = [(f"{m}: accuracy", {n: {d: summ["grid"][m][n][d] for d in depths} for n in lengths}, "acc")
              for m in order]
    panels.append((f"oracle recall@{cfg['top_k']}", summ["recall_at_k"]["grid"], "recall"))
    f_title, f, f_small = load_font("DejaVuSans-Bold.ttf", 15), load_font("DejaVuSans.ttf", 13), \
        load_font("DejaVuSans.ttf", 11)
    heading = f"Needle in a haystack: {cfg['model']} + {cfg['vision']}, top-k {cfg['top_k']}"
    legend = "accuracy / recall; grey: no question ran (dense: context does not fit)"
    cw, ch = 64, 34
    left, top, gap = 62, 46, 34
    pw = left + max([cw * len(lengths), f_small.getlength("haystack (frames)")]
                    + [f_title.getlength(t) for t, _, _ in panels]) + 10
    pw, ph = int(pw), top + ch * len(depths) + 48
    cols = min(3, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    W = int(max(cols * pw + (cols - 1) * gap + 20, f_title.getlength(heading) + 20,
                left + 240 + f_small.getlength(legend) + 20))
    H = rows_n * (ph + gap) + 60
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    dr.text((10, 8), heading, fill="black", font=f_title)
    for p, (title, grid, kind) in enumerate(panels):
        ox, oy = 10 + (p % cols) * (pw + gap), 40 + (p // cols) * (ph + gap)
        dr.text((ox + left, oy), title, fill="black", font=f_title)
        for j, d in enumerate(depths):
            dr.text((ox + left - 8, oy + top + j * ch + ch / 2), d, fill="black", font=f, anchor="rm")
        for i, n in enumerate(lengths):
            dr.text((ox + left + i * cw + cw / 2, oy + top + len(depths) * ch + 6), n, fill="black", font=f,
                    anchor="mt")
            for j, d in enumerate(depths):
                c = grid[n][d]
                val = c if kind == "recall" else c["accuracy"]
                x0, y0 = ox + left + i * cw, oy + top + j * ch
                box = (x0, y0, x0 + cw - 2, y0 + ch - 2)
                if val is None:
                    fit = kind == "acc" and c["skipped"]
                    dr.rectangle(box, fill=(215, 215, 215))
                    dr.text((x0 + cw / 2 - 1, y0 + ch / 2 - 1), "no fit" if fit else "n/a", fill=(90, 90, 90),
                            font=f_small, anchor="mm")
                else:
                    dr.rectangle(box, fill=_rgb(val))
                    dr.text((x0 + cw / 2 - 1, y0 + ch / 2 - 1), f"{val:.2f}", fill="black", font=f, anchor="mm")
        dr.text((ox + left + cw * len(lengths) / 2, oy + top + len(depths) * ch + 24), "haystack (frames)",
                fill="black", font=f_small, anchor="mt")
        dr.text((ox + 2, oy + top - 18), "depth", fill="black", font=f_small)
    # colour bar
    bx, by = 10 + left, H - 26
    for k in range(200):
        dr.line([(bx + k, by), (bx + k, by + 10)], fill=_rgb(k / 199))
    dr.text((bx - 6, by + 5), "0", fill="black", font=f_small, anchor="rm")
    dr.text((bx + 206, by + 5), "1", fill="black", font=f_small, anchor="lm")
    dr.text((bx + 220, by + 5), legend, fill="black", font=f_small, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
