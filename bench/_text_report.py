"""`videokv bench text`'s outputs (bench/text.py): the side-by-side table it prints, the README's
markdown table and the PNG (recall@k per source and oracle, answers with and without the text
line, each channel's ingest rate)."""

from __future__ import annotations

from pathlib import Path

KS = (1, 3)         # the k of the recall@k figures


def _f(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def side_by_side(res: dict) -> str:
    ret, ans = res["retrieval"], res["answers"]
    pair = lambda d: f"{_f(d['recall@1'])} / {_f(d['recall@3'])}"  # noqa: E731
    lines = [f"{'retrieval r@1 / r@3':<20} {'n':>3} | {'text oracle':>11} | {'visual':>11} | {'hybrid':>11} | "
             f"{'chance':>11} | key extracted / in line"]
    lines.append("-" * len(lines[0]))
    for s, r in ret.items():
        lines.append(f"{s:<20} {r['n']:>3} | {pair(r['text']):>11} | {pair(r['visual']):>11} | "
                     f"{pair(r['hybrid']):>11} | {pair(r['chance']):>11} | {_f(r['key_extracted'])} / "
                     f"{_f(r['key_in_line'])}")
    lines += ["", f"{'answers (bilevel)':<20} {'n':>3} | {'with text':>9} | {'without':>9} | {'delta':>6}"]
    for s, a in ans.items():
        lines.append(f"{s:<20} {a['n']:>3} | {_f(a['with_text']):>9} | {_f(a['without_text']):>9} | "
                     f"{a['delta']:>+6.2f}")
    for v in res["videos"]:
        c = v["cost"]
        lines += ["", f"ingest {v['kind']} ({v['ingests']['none']['frames']} frames) | frames/s | vs none | "
                      f"extract s | segments | total s"]
        for ch, r in c.items():
            lines.append(f"  {ch:<26} | error: {r['error']}" if "error" in r else
                         f"  {ch:<26} | {r['frames_per_s']:>8.1f} | {r['ratio_vs_none']:>6.2f}x | "
                         f"{r['extract_s']:>9.1f} | {r['segments'] if r['segments'] is not None else '-':>8} | "
                         f"{r['seconds']:>7.1f}")
    return "\n".join(lines)


def markdown(res: dict) -> str:
    ret, ans, cost, cfg, m = res["retrieval"], res["answers"], res["ingest_cost"], res["config"], res["machine"]
    out = ["| source | questions | text oracle r@1 / r@3 | visual oracle r@1 / r@3 | hybrid r@1 / r@3 | chance r@3 "
           "| key extracted / in line | accuracy with text | without text |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s, r in ret.items():
        a = ans[s]
        out.append(f"| {s} | {r['n']} | {_f(r['text']['recall@1'])} / {_f(r['text']['recall@3'])} | "
                   f"{_f(r['visual']['recall@1'])} / {_f(r['visual']['recall@3'])} | {_f(r['hybrid']['recall@1'])} / "
                   f"{_f(r['hybrid']['recall@3'])} | {_f(r['chance']['recall@3'])} | {_f(r['key_extracted'])} / "
                   f"{_f(r['key_in_line'])} | "
                   f"{_f(a['with_text'])} | {_f(a['without_text'])} |")
    out += ["", f"Ingest cost ({cost['video']} video, {cost['frames']} frames):", "",
            "| channels | frames/s | vs no text | extraction s |", "|---|---:|---:|---:|"]
    for ch, r in cost["channels"].items():
        if "error" not in r:   # none_again: the no-text ingest repeated after the others
            out.append(f"| {ch} | {r['frames_per_s']:.1f} | {r['ratio_vs_none']:.2f}x | {r['extract_s']:.1f} |")
    out += ["", f"{m['date']}, {m['cpu']} ({m.get('affinity_cpus', m['cpus'])} cores, {cfg['torch_threads']} torch "
            f"thread(s)), {m['device']}; {len(cfg['videos'])} videos of {cfg['minutes']:g} min; bilevel top-k "
            f"{cfg['top_k']}. `videokv bench text` (bench/text.py)."]
    return "\n".join(out)


COLORS = [(35, 75, 225), (150, 150, 150), (26, 152, 80), (230, 140, 20), (214, 47, 39)]


def bars(img, box, groups, series: dict, title: str, ylabel: str, fonts, ymax: float | None = None) -> None:
    """Grouped bars: series {name: [value per group]} (None: no bar)."""
    from PIL import ImageDraw

    from ._common import _ticks
    f_title, f, f_small = fonts
    dr = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    left, right, top, bottom = x0 + 50, x1 - 10, y0 + 48, y1 - 30
    vals = [v for vs in series.values() for v in vs if v is not None]
    hi = ymax or (max(vals) * 1.15 if vals and max(vals) > 0 else 1.0)
    ty = lambda v: bottom - v / hi * (bottom - top)  # noqa: E731
    dr.text((x0 + 4, y0 + 4), f"{title} ({ylabel})", fill="black", font=f_title)
    for t in _ticks(0, hi, False):
        if t <= hi:
            dr.line([(left, ty(t)), (right, ty(t))], fill=(230, 230, 230))
            dr.text((left - 4, ty(t)), f"{t:g}", fill="black", font=f_small, anchor="rm")
    dr.rectangle((left, top, right, bottom), outline=(120, 120, 120))
    gw = (right - left) / max(1, len(groups))
    bw = gw * 0.8 / max(1, len(series))
    lx = left
    for si, (name, vs) in enumerate(series.items()):
        col = COLORS[si % len(COLORS)]
        dr.rectangle((lx, y0 + 26, lx + 12, y0 + 36), fill=col)
        dr.text((lx + 16, y0 + 31), name, fill="black", font=f_small, anchor="lm")
        lx += 30 + f_small.getlength(name)
        for gi, v in enumerate(vs):
            if v is None:
                continue
            xa = left + gi * gw + gw * 0.1 + si * bw
            dr.rectangle((xa, ty(v), xa + bw - 2, bottom), fill=col)
            dr.text((xa + bw / 2, ty(v) - 2), f"{v:.2g}", fill=col, font=f_small, anchor="mb")
    for gi, g in enumerate(groups):
        dr.text((left + (gi + 0.5) * gw, bottom + 6), g, fill="black", font=f, anchor="mt")


def plot(res: dict, path: Path) -> None:
    """Recall@1 and @3 per oracle and source, accuracy with/without text, frames/s per channel."""
    from PIL import Image, ImageDraw

    from videokv.toyworld.render import load_font

    fonts = (load_font("DejaVuSans-Bold.ttf", 14), load_font("DejaVuSans.ttf", 12), load_font("DejaVuSans.ttf", 10))
    ret, ans, cost = res["retrieval"], res["answers"], res["ingest_cost"]
    src = list(ret)
    W, H = 1240, 800
    img = Image.new("RGB", (W, H), "white")
    ImageDraw.Draw(img).text((10, 8), f"videokv bench text: the text channel ({res['config']['model']}, "
                             f"{res['machine']['device']}, {res['machine']['date']})", fill="black", font=fonts[0])
    for i, n in enumerate(KS):
        ser = {o: [ret[s][o][f"recall@{n}"] for s in src] for o in ("text", "visual", "hybrid", "chance")}
        bars(img, (10 + i * 615, 36, 615 + i * 615, 410), src, ser, f"recall@{n}", "fraction", fonts, ymax=1.15)
    bars(img, (10, 420, 615, H - 10), list(ans), {"with text": [a["with_text"] for a in ans.values()],
                                                 "without text": [a["without_text"] for a in ans.values()]},
         "answer accuracy, bilevel", "fraction", fonts, ymax=1.15)
    ch = [c for c, r in cost["channels"].items() if "error" not in r]
    bars(img, (625, 420, W - 10, H - 10), ch, {"frames/s": [cost["channels"][c]["frames_per_s"] for c in ch]},
         f"ingest speed ({cost['video']} video)", "frames/s", fonts)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
