"""`videokv bench ingest`: ingest throughput and peak memory against video length.

For toy-world videos of --minutes (rendered at the sampling rate, reused by spec; the same
videos as `videokv bench query`), side by side in one run:

  ingest        the real pipeline (probe, decode + sample, vision tower, chunk-based prefill,
                L/H compression, oracle embeddings, LMDB commits) into a fresh store (a temp
                VIDEOKV_HOME unless --home): frames/s and visual tokens/s end to end
  chunk-based   vision tower + chunk-based prefill from the decoded frames, nothing stored:
                frames/s, LLM tokens/s (timestamp text + visual tokens; vision time, measured
                in a separate tower-only pass, taken out), and peak memory
  full          vision tower + one full-attention forward over prompt + every chunk, where
                that fits the model's max_position_embeddings: the same figures

Peak memory is the prefill's own working set: on CUDA torch.cuda.max_memory_allocated above
what was allocated before (weights); on the CPU the peak of live tensors created inside the
prefill (engine.memtrack.PeakTensorMemory, in a separate untimed pass, since tracking slows it).
With a fixed window (--window, default VIDEOKV_WINDOW) chunk-based peak memory must stay flat
in video length; full attention's grows. `chunk_peak_growth` is the ratio of the largest to
the smallest chunk-based peak among lengths with at least window + 2 chunks (so some full-size
chunk runs with a full window; the last chunk may be shorter).

On CUDA it also measures the model FLOP utilisation (MFU) of chunk-based prefill of a
7B-shaped model: Qwen2.5-7B's geometry with random bf16 weights, --mfu-chunks chunks of
--mfu-visual-tokens visual tokens (default 1152: 16 frames at 448x252 through Qwen2.5-VL's
patching), the default window of H-KVs in context; FLOPs counted per forward (engine's
prefill loop, vision excluded) against the device's dense bf16 peak (--peak-tflops to set it).

Writes --out JSON (default runs/bench_ingest.json) and a PNG next to it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from ._common import bench_settings, floats, log, machine, max_rss_mb, rounded, toy_video, write_json, write_outputs
from ._mfu import mfu_7b

TAG = "ingest"
TENANT = "bench-ingest"


def _sync(be):
    import torch
    if be.device.type == "cuda":
        torch.cuda.synchronize(be.device)


def _writer(rt):
    """A StreamWriter of the pipeline, for its vision-tower grouping (not for writing)."""
    from videokv.ingest.text import TextOptions
    from videokv.ingest.writer import StreamWriter

    w = StreamWriter(rt.pipeline, "", Path(), None, TextOptions(), rt.config.sample_fps)
    w.wants_frames = False                # nothing is committed here: keep no frames for the oracles
    return w


def _chunk_inputs(rt, frames, plan):
    """ChunkInputs as ingest makes them (one tower call per chunk; batched on CUDA)."""
    import numpy as np

    from videokv.ingest.stream import ChunkFrames

    w = _writer(rt)
    chunks = (ChunkFrames(c, frames[c.frame_start:c.frame_end], np.zeros(0)) for c in plan.chunks)
    for group in w.vision_groups(chunks):
        yield from w.chunk_inputs(group)


def _peak(be, track: bool):
    """A context manager measuring the block's peak memory: CUDA allocator stats, or live CPU
    tensors when `track`. Returns (cm, read()) where read() gives peak bytes or None."""
    import torch

    from .memtrack import PeakTensorMemory

    if be.device.type == "cuda":
        torch.cuda.synchronize(be.device)
        torch.cuda.reset_peak_memory_stats(be.device)
        base = torch.cuda.memory_allocated(be.device)
        return nullcontext(), lambda: torch.cuda.max_memory_allocated(be.device) - base
    if track:
        mem = PeakTensorMemory()
        return mem, lambda: mem.peak_bytes
    return nullcontext(), lambda: None


def vision_only(rt, frames, plan) -> float:
    be = rt.backend
    _sync(be)
    t = time.perf_counter()
    for _ in _chunk_inputs(rt, frames, plan):
        pass
    _sync(be)
    return time.perf_counter() - t


def chunk_prefill(rt, frames, plan, track: bool = False) -> dict:
    """Vision + chunk-based prefill of every chunk, nothing stored (each chunk is dropped as
    the store would take it). Returns seconds, LLM tokens and peak bytes."""
    import torch

    from videokv.engine.chunkkv import TokenKind

    be, pre = rt.backend, rt.pipeline.prefiller
    cm, peak = _peak(be, track)
    tokens = 0
    _sync(be)
    t = time.perf_counter()
    with torch.no_grad(), cm:
        prefix = pre.prefix()
        for pc in pre.run(prefix, _chunk_inputs(rt, frames, plan)):
            n_text = int((pc.L.kinds == TokenKind.TEXT).sum())
            tokens += n_text + (pc.L.frame_end - pc.L.frame_start) * rt.config.tokens_per_frame
            del pc
    _sync(be)
    return {"seconds": time.perf_counter() - t, "llm_tokens": tokens, "peak_bytes": peak()}


def full_prefill(rt, frames, plan, track: bool = False) -> dict:
    """Vision + one full-attention forward over prompt prefix + every chunk's tokens."""
    import torch

    be, pre = rt.backend, rt.pipeline.prefiller
    cm, peak = _peak(be, track)
    _sync(be)
    t = time.perf_counter()
    with torch.no_grad(), cm:
        embeds, _ = pre.prefix_embeds()
        parts = [embeds] + [pre.chunk_embeds(ci)[0] for ci in _chunk_inputs(rt, frames, plan)]
        x = torch.cat(parts)
        del parts
        n = x.shape[0]
        out = be.forward(x, logits=False, kv=False)
        del out, x
    _sync(be)
    return {"seconds": time.perf_counter() - t, "llm_tokens": n, "peak_bytes": peak()}


def full_tokens(rt, plan) -> int:
    from videokv.engine.prefill import timestamp_text

    be, cfg = rt.backend, rt.config
    before, _ = be.prompt_parts(cfg.system_prompt, "")
    return len(be.tokenize(before)) + sum(len(be.tokenize(timestamp_text(c.t_start)))
                                          + (c.frame_end - c.frame_start) * cfg.tokens_per_frame for c in plan.chunks)


def _rates(d: dict, frames: int, vision_s: float) -> dict:
    s = d["seconds"]
    llm_s = max(s - vision_s, 1e-9)
    return {"seconds": rounded(s, 3), "frames_per_s": rounded(frames / s, 1), "llm_tokens": d["llm_tokens"],
            "llm_tokens_per_s": rounded(d["llm_tokens"] / llm_s, 1),
            "tokens_per_s_incl_vision": rounded(d["llm_tokens"] / s, 1),
            "llm_seconds": rounded(llm_s, 3)}


# ----------------------------------------------------------------------------- run

def run(args) -> dict:
    import torch

    from videokv.ingest.chunks import plan_chunks
    from videokv.ingest.sampling import sample_frames
    from videokv.ingest.video import probe
    from videokv.runtime import Runtime

    t0 = time.perf_counter()
    base = bench_settings(args.threads)
    cuda = torch.cuda.is_available() and base.device in ("auto", "cuda")
    fps = float(base.sample_fps)
    home = args.home or Path(tempfile.mkdtemp(prefix="videokv-bench-ingest-"))
    need = int(round(max(args.minutes) * 60 * fps))
    upd = {"home": home}
    if base.max_frames is not None:                       # a cap set: lift it to the longest video
        upd["max_frames"] = max(base.max_frames, need)
    if args.window is not None:
        upd["window"] = args.window
    if args.dtype or cuda:
        upd["dtype"] = args.dtype or "bfloat16"
    settings = base.model_copy(update=upd)
    rt = Runtime(settings)
    be = rt.backend
    max_pos = int(getattr(be.config, "max_position_embeddings", 0) or 0)
    chunk_seconds = settings.chunk_frames / fps
    window = settings.window
    log(t0, TAG, f"model {settings.model} on {be.device} ({str(be.dtype).removeprefix('torch.')}), window "
                 f"{window} x {settings.window_level}; lengths {', '.join(f'{m:g}' for m in args.minutes)} min; "
                 f"store {home}")
    cfg = {"minutes": args.minutes, "window": window, "window_level": settings.window_level,
           "sample_fps": fps, "chunk_frames": settings.chunk_frames, "tokens_per_frame": rt.config.tokens_per_frame,
           "model": settings.model, "vision": be.vision.identity if be.vision else None,
           "dtype": str(be.dtype).removeprefix("torch."), "max_position_embeddings": max_pos,
           "attn_implementation": getattr(be.model.config, "_attn_implementation", None),
           "memory": "cuda max_memory_allocated above weights" if cuda else
           "peak live tensors created in the prefill (PeakTensorMemory, separate pass)",
           "vision_batched_across_chunks": _writer(rt).batch_vision, "home": str(home)}
    result = {"bench": "ingest", "partial": True, "config": cfg, "machine": machine(be.device), "lengths": []}
    try:
        for minutes in args.minutes:
            label = f"{minutes:g} min"
            path, _, reused, render_s = toy_video(args.workdir / "videos", minutes, args.seed, fps, chunk_seconds)
            log(t0, TAG, f"{label}: " + (f"reused {path.name}" if reused
                                         else f"rendered {path.name} in {render_s:.1f} s"))
            cm, ingest_peak = _peak(be, False)            # CUDA: the real ingest's device peak too
            with cm:
                res = rt.pipeline.ingest(path, tenant=TENANT)
            ingest_peak = ingest_peak()
            t = time.perf_counter()
            info = probe(path)
            sampled = sample_frames(path, fps, settings.max_frames, size=be.vision.input_size, info=info)
            plan = plan_chunks(sampled.timestamps, info.duration, settings.chunk_frames, fps)
            decode_s = time.perf_counter() - t
            n = len(sampled)
            vis_s = vision_only(rt, sampled.frames, plan)
            ch = chunk_prefill(rt, sampled.frames, plan)
            if not cuda and not args.no_track:
                ch["peak_bytes"] = chunk_prefill(rt, sampled.frames, plan, track=True)["peak_bytes"]
            row = {"minutes": minutes, "frames": n, "chunks": len(plan), "video": str(path),
                   "ingest": {"deduplicated": res.deduplicated, "seconds": rounded(res.seconds, 3),
                              "frames_per_s": rounded(res.frames_per_s, 1),
                              "visual_tokens_per_s": rounded(res.tokens_per_s, 1),
                              "peak_mb": rounded(ingest_peak / 2**20, 2) if ingest_peak is not None else None},
                   "decode_s": rounded(decode_s, 3), "vision_s": rounded(vis_s, 3),
                   "vision_frames_per_s": rounded(n / vis_s, 1) if vis_s else None,
                   "chunk_based": {**_rates(ch, n, vis_s), "peak_bytes": ch["peak_bytes"],
                                   "peak_mb": rounded(ch["peak_bytes"] / 2**20, 2) if ch["peak_bytes"] is not None
                                   else None}}
            ft = full_tokens(rt, plan)
            if args.no_full or (max_pos and ft > max_pos):
                row["full_attention"] = {"skipped": "disabled" if args.no_full else "does not fit",
                                         "tokens": ft, "context_limit": max_pos}
            else:
                fu = full_prefill(rt, sampled.frames, plan)
                if not cuda and not args.no_track:
                    fu["peak_bytes"] = full_prefill(rt, sampled.frames, plan, track=True)["peak_bytes"]
                row["full_attention"] = {**_rates(fu, n, vis_s), "peak_bytes": fu["peak_bytes"],
                                         "peak_mb": rounded(fu["peak_bytes"] / 2**20, 2) if fu["peak_bytes"] is not None
                                         else None}
                row["chunk_vs_full_llm_tokens_per_s"] = rounded(row["chunk_based"]["llm_tokens_per_s"]
                                                           / row["full_attention"]["llm_tokens_per_s"], 3)
            fa = row["full_attention"]
            log(t0, TAG, f"{label}: {n} frames, ingest {row['ingest']['frames_per_s']} frames/s; chunk-based "
                         f"{row['chunk_based']['frames_per_s']} frames/s, peak {row['chunk_based']['peak_mb']} MB; "
                         + (f"full {fa['frames_per_s']} frames/s, peak {fa['peak_mb']} MB" if "skipped" not in fa
                            else f"full: {fa['skipped']} ({fa['tokens']} tokens)"))
            result["lengths"].append(row)
            write_json(args.out, result)
            del sampled
        result["summary"] = summary(result, window)
        if cuda and not args.no_mfu:
            log(t0, TAG, "7B-shaped model MFU (random bf16 weights, Qwen2.5-7B geometry) ...")
            result["mfu_7b"] = mfu_7b(be.tokenizer, "cuda", args.mfu_chunks, visual_tokens=args.mfu_visual_tokens,
                                      window=window, peak=args.peak_tflops)
            m = result["mfu_7b"]
            log(t0, TAG, f"7B chunk-based prefill: {m['tflops_achieved']} TFLOP/s, MFU {m.get('mfu')} "
                         f"(bare forward {m.get('forward_only_mfu')})")
        elif not cuda:
            result["mfu_7b"] = {"skipped": "no CUDA device"}
        result["targets"] = targets(result, cuda)
    finally:
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    result["partial"] = False
    result["machine"]["max_rss_mb"] = max_rss_mb()
    result["total_s"] = rounded(time.perf_counter() - t0, 1)
    return result


def summary(result: dict, window: int) -> dict:
    rows = result["lengths"]
    # lengths where some full-size chunk (not the last, which may be shorter) has a full window
    sat = [r for r in rows if r["chunks"] >= window + 2] if window >= 0 else []
    peaks = [r["chunk_based"]["peak_bytes"] for r in sat if r["chunk_based"]["peak_bytes"]]
    fulls = [r for r in rows if "peak_bytes" in r["full_attention"] and r["full_attention"]["peak_bytes"]]
    ip = [r["ingest"]["peak_mb"] for r in sat if r["ingest"]["peak_mb"]]
    return {
        "chunk_peak_mb_by_minutes": {f"{r['minutes']:g}": r["chunk_based"]["peak_mb"] for r in rows},
        "full_peak_mb_by_minutes": {f"{r['minutes']:g}": r["full_attention"].get("peak_mb") for r in rows},
        "chunk_peak_growth": rounded(max(peaks) / min(peaks), 4) if peaks else None,
        "chunk_peak_growth_over": [r["minutes"] for r in sat],
        "full_peak_growth": rounded(fulls[-1]["full_attention"]["peak_bytes"]
                                    / fulls[0]["full_attention"]["peak_bytes"], 3) if len(fulls) > 1 else None,
        "ingest_peak_mb_by_minutes": {f"{r['minutes']:g}": r["ingest"]["peak_mb"] for r in rows},
        "ingest_peak_growth": rounded(max(ip) / min(ip), 4) if ip else None,
        "ingest_frames_per_s_by_minutes": {f"{r['minutes']:g}": r["ingest"]["frames_per_s"] for r in rows},
        "chunk_llm_tokens_per_s_by_minutes": {f"{r['minutes']:g}": r["chunk_based"]["llm_tokens_per_s"] for r in rows},
    }


def targets(result: dict, cuda: bool) -> dict:
    s = result["summary"]
    out = {"chunk_peak_memory_flat": {"growth": s["chunk_peak_growth"],
                                      "met": s["chunk_peak_growth"] is not None and s["chunk_peak_growth"] <= 1.05}}
    if cuda:
        frames = max(r["frames"] for r in result["lengths"])
        g = s["ingest_peak_growth"]
        out["gpu_10k_frames_flat"] = {"max_frames": frames, "ingest_peak_growth": g,
                                      "met": frames >= 10000 and out["chunk_peak_memory_flat"]["met"]
                                      and g is not None and g <= 1.05}
        m = result.get("mfu_7b", {})
        if "mfu" in m:
            out["gpu_7b_mfu_ge_0.4"] = {"value": m["mfu"], "met": m["mfu"] >= 0.4}
    return out


# ----------------------------------------------------------------------------- report

def side_by_side(result: dict) -> str:
    lines = [f"{'min':>6} {'frames':>6} {'chunks':>6} | {'ingest f/s':>10} | {'chunk f/s':>9} {'LLM tok/s':>9} "
             f"{'peak MB':>8} | {'full f/s':>8} {'LLM tok/s':>9} {'peak MB':>8}"]
    lines.append("-" * len(lines[0]))
    for r in result["lengths"]:
        c, f = r["chunk_based"], r["full_attention"]
        full = (f"{f['frames_per_s']:>8} {f['llm_tokens_per_s']:>9} {str(f['peak_mb']):>8}" if "skipped" not in f
                else f"{f['skipped'] + ' (' + str(f['tokens']) + ' tok)':>27}")
        lines.append(f"{r['minutes']:>6g} {r['frames']:>6} {r['chunks']:>6} | {r['ingest']['frames_per_s']:>10} | "
                     f"{c['frames_per_s']:>9} {c['llm_tokens_per_s']:>9} {str(c['peak_mb']):>8} | {full}")
    s = result["summary"]
    lines.append(f"\nchunk-based peak memory growth over {', '.join(f'{m:g}' for m in s['chunk_peak_growth_over'])} "
                 f"min: {s['chunk_peak_growth']}x (window {result['config']['window']}); full attention: "
                 f"{s['full_peak_growth']}x")
    m = result.get("mfu_7b", {})
    if "tflops_achieved" in m:
        lines.append(f"7B-shaped chunk-based prefill on {m['device']}: {m['tflops_achieved']} TFLOP/s, "
                     f"MFU {m.get('mfu')}, "
                     f"bare forward MFU {m.get('forward_only_mfu')}")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    mach, cfg = result["machine"], result["config"]
    out = ["| video | frames | ingest (end to end) | chunk-based prefill | chunk peak memory | full-attention prefill "
           "| full peak memory |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["lengths"]:
        c, f = r["chunk_based"], r["full_attention"]
        fs = (f"{f['frames_per_s']:.0f} frames/s, {f['llm_tokens_per_s']:.0f} tok/s" if "skipped" not in f
              else f"{f['skipped']} ({f['tokens']} tokens)")
        out.append(f"| {r['minutes']:g} min | {r['frames']} | {r['ingest']['frames_per_s']:.0f} frames/s | "
                   f"{c['frames_per_s']:.0f} frames/s, {c['llm_tokens_per_s']:.0f} tok/s | {c['peak_mb']} MB | {fs} | "
                   f"{f.get('peak_mb', '-')}{' MB' if f.get('peak_mb') is not None else ''} |")
    out += ["", f"{mach['date']}, {mach['cpu']} ({mach.get('affinity_cpus', mach['cpus'])} cores, "
            f"{mach['torch_threads']} torch thread(s)), device {mach['device']}, {cfg['dtype']}, window "
            f"{cfg['window']} x {cfg['window_level']}. Memory: {cfg['memory']}."]
    return "\n".join(out)


def plot(result: dict, path: Path) -> None:
    from PIL import Image, ImageDraw

    from videokv.toyworld.render import load_font

    from ._common import line_chart

    rows = result["lengths"]
    xs = [r["minutes"] for r in rows]
    thr = {"ingest": list(zip(xs, [r["ingest"]["frames_per_s"] for r in rows])),
           "chunk-based": list(zip(xs, [r["chunk_based"]["frames_per_s"] for r in rows])),
           "full attention": [(x, r["full_attention"].get("frames_per_s")) for x, r in zip(xs, rows)]}
    mem = {"chunk-based": list(zip(xs, [r["chunk_based"]["peak_mb"] for r in rows])),
           "full attention": [(x, r["full_attention"].get("peak_mb")) for x, r in zip(xs, rows)]}
    W, H = 900, 470
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    mach = result["machine"]
    dr.text((10, 8), f"videokv bench ingest ({result['config']['model']}, {mach['device']}, window "
                     f"{result['config']['window']}, {mach['date']})", fill="black",
            font=load_font("DejaVuSans-Bold.ttf", 15))
    xlog = len(set(xs)) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 4
    line_chart(img, (10, 36, 445, H - 10), thr, "throughput", "video length (minutes)", "frames/s", xlog=xlog)
    line_chart(img, (455, 36, W - 10, H - 10), mem, "prefill peak memory", "video length (minutes)", "MB",
               xlog=xlog)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv bench ingest", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=floats, default=None,
                    help="video lengths in minutes (default 1,4,15,30; on CUDA also 166.67 = 10,000 frames)")
    ap.add_argument("--window", type=int, default=None, help="prefill window (default: VIDEOKV_WINDOW)")
    ap.add_argument("--no-full", action="store_true", help="skip full-attention prefill")
    ap.add_argument("--no-track", action="store_true", help="CPU: skip the memory-tracking passes")
    ap.add_argument("--no-mfu", action="store_true", help="CUDA: skip the 7B-shaped MFU measurement")
    ap.add_argument("--mfu-chunks", type=int, default=12, help="chunks in the MFU measurement (CUDA only)")
    ap.add_argument("--mfu-visual-tokens", type=int, default=1152, help="visual tokens per chunk in the MFU measurement")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device bf16 peak (default: from its name)")
    ap.add_argument("--seed", type=int, default=0, help="toy-world video seed")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                    help="model dtype (default: VIDEOKV_DTYPE; bfloat16 on CUDA)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--home", type=Path, default=None, help="KV store home (default: a temp dir, removed)")
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench_videos"), help="rendered videos (kept for reuse)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_ingest.json"), help="JSON result (markdown beside it)")
    ap.add_argument("--png", type=Path, default=None, help="plot (default: --out with .png)")
    a = ap.parse_args(argv)
    if a.minutes is None:
        import torch
        a.minutes = [1.0, 4.0, 15.0, 30.0] + ([10000 / 60] if torch.cuda.is_available() else [])
    if not a.minutes or any(m <= 0 for m in a.minutes):
        ap.error("--minutes must be > 0")
    result = run(a)
    write_outputs(result, a.out, a.png, plot, markdown, side_by_side)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
