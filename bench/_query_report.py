"""`videokv bench query`'s outputs (bench/query.py): the side-by-side table it prints, the
README's markdown table and the PNG of latency and KV bytes against video length."""

from __future__ import annotations

from pathlib import Path


def side_by_side(result: dict) -> str:
    rows = result["lengths"]
    lines = [f"{'min':>5} {'chunks':>6} | {'TTFT ms: re-prefill':>19} {'dense':>8} {'bilevel':>8} {'sparse':>8} | "
             f"{'speedup':>8} | {'total ms: re-prefill':>20} {'bilevel':>8} | {'KV MB dense':>11} {'bilevel':>8} "
             f"{'sparse':>7} | {'bi/dense':>8}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        m = r["modes"]
        mb = lambda x: f"{x / 1e6:.1f}"  # noqa: E731
        lines.append(
            f"{r['minutes']:>5g} {r['chunks']:>6} | {r['reprefill_ttft_ms']:>12.0f} ({r['reprefill_baseline'][:5]}) "
            f"{m['dense']['ttft_ms']:>8.1f} {m['bilevel']['ttft_ms']:>8.1f} {m['sparse']['ttft_ms']:>8.1f} | "
            f"{r['ttft_speedup_vs_reprefill']:>7.0f}x | {r['reprefill_total_ms']:>20.0f} "
            f"{m['bilevel']['total_ms']:>8.1f} | "
            f"{mb(m['dense']['kv_bytes_loaded']):>11} {mb(m['bilevel']['kv_bytes_loaded']):>8} "
            f"{mb(m['sparse']['kv_bytes_loaded']):>7} | {r['bytes_ratio_bilevel_vs_dense']:>8.3f}")
    lines.append("")
    for r in rows:
        bd = r["bytes_breakdown"]
        rt = bd["ratios"]
        lines.append(f"{r['minutes']:g} min bilevel/dense {rt['bilevel_vs_dense']:.3f}: visual tokens only "
                     f"{rt['visual_only']:.3f} (top-k alone {rt['visual_only_top_k_without_first_last']:.3f}), "
                     f"without first/last {rt['without_first_last']:.3f}; timestamp text "
                     f"{rt['timestamp_text_share_of_bilevel']:.0%} of bilevel, first/last "
                     f"{rt['first_last_share_of_bilevel']:.0%}")
        if any(x.get("beyond_context_window") for x in r["modes"].values()):
            over = [k for k, x in r["modes"].items() if x.get("beyond_context_window")]
            lines.append(f"  {', '.join(over)} beyond the {result['config']['max_position_embeddings']}-position "
                         "context window (timed; answers not meaningful)")
        if "paging" in r:
            p = r["paging"]
            lines.append(f"  GPU paging: bilevel {p['bilevel']['gb_s']} GB/s ({p['bilevel']['fraction_of_h2d']:.0%} "
                         f"of raw H2D), dense {p['dense']['gb_s']} GB/s ({p['dense']['fraction_of_h2d']:.0%})")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    cfg, mach = result["config"], result["machine"]
    out = ["| video | chunks | re-prefill TTFT | dense TTFT | bilevel TTFT | sparse TTFT | TTFT speedup (bilevel) "
           "| bilevel total | re-prefill total | KV MB dense / bilevel / sparse | bilevel / dense bytes |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["lengths"]:
        m = r["modes"]
        d = {k: "†" if x["beyond_context_window"] else "" for k, x in m.items()}
        out.append(f"| {r['minutes']:g} min | {r['chunks']} | {r['reprefill_ttft_ms'] / 1e3:.1f} s "
                   f"({r['reprefill_baseline']}) | {m['dense']['ttft_ms']:.0f} ms{d['dense']} | "
                   f"{m['bilevel']['ttft_ms']:.0f} ms{d['bilevel']} | "
                   f"{m['sparse']['ttft_ms']:.0f} ms{d['sparse']} | {r['ttft_speedup_vs_reprefill']:.0f}x | "
                   f"{m['bilevel']['total_ms']:.0f} ms | {r['reprefill_total_ms'] / 1e3:.1f} s | "
                   f"{m['dense']['kv_bytes_loaded'] / 1e6:.1f} / {m['bilevel']['kv_bytes_loaded'] / 1e6:.1f} / "
                   f"{m['sparse']['kv_bytes_loaded'] / 1e6:.1f} | {r['bytes_ratio_bilevel_vs_dense']:.3f} |")
    out += ["", f"† the context exceeds max_position_embeddings ({cfg['max_position_embeddings']}): timed, the "
            "answer is not meaningful.", "", f"{mach['date']}, {mach['cpu']} ({mach.get('affinity_cpus', mach['cpus'])} cores, "
            f"{mach['torch_threads']} torch thread(s)), device {mach['device']}, {cfg['dtype']}; "
            f"L {cfg['l_policy']}, H {cfg['h_policy']}, top-k {cfg['top_k']}"
            + (" + first/last" if cfg["always_first_last"] else "")
            + f", H chunks paged {'without' if cfg.get('h_text', 'keep') == 'drop' else 'with'} their timestamp rows"
            + f", {cfg['max_new_tokens']} new tokens max."]
    return "\n".join(out)


def plot(result: dict, path: Path) -> None:
    """Three panels vs video length (minutes): TTFT and total latency (log scale; stored modes
    and re-prefill) and KV bytes loaded per question."""
    from PIL import Image, ImageDraw

    from videokv.toyworld.render import load_font

    from ._common import line_chart

    rows = result["lengths"]
    xs = [r["minutes"] for r in rows]
    ttft = {"re-prefill": list(zip(xs, [r["reprefill_ttft_ms"] for r in rows]))}
    total = {"re-prefill": list(zip(xs, [r["reprefill_total_ms"] for r in rows]))}
    kv = {}
    for m in ("dense", "bilevel", "sparse"):
        ttft[m] = list(zip(xs, [r["modes"][m]["ttft_ms"] for r in rows]))
        total[m] = list(zip(xs, [r["modes"][m]["total_ms"] for r in rows]))
        kv[m] = list(zip(xs, [r["modes"][m]["kv_bytes_loaded"] / 1e6 for r in rows]))
    W, H = 1320, 470
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    mach, cfg = result["machine"], result["config"]
    dr.text((10, 8), f"videokv bench query: a repeated question vs re-reading the video ({cfg['model']}, "
                     f"{mach['device']}, {mach['date']})", fill="black", font=load_font("DejaVuSans-Bold.ttf", 15))
    xlog = len(set(xs)) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 4
    line_chart(img, (10, 36, 440, H - 10), ttft, "time to first token", "video length (minutes)", "ms",
               xlog=xlog, ylog=True)
    line_chart(img, (450, 36, 880, H - 10), total, "total answer latency", "video length (minutes)", "ms",
               xlog=xlog, ylog=True)
    line_chart(img, (890, 36, W - 10, H - 10), kv, "KV bytes loaded per question", "video length (minutes)", "MB",
               xlog=xlog, ylog=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
