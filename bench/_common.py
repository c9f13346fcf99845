"""Helpers shared by `videokv bench query` and `videokv bench ingest` (not a benchmark itself):
toy-world videos rendered once and reused by spec, the machine description, PIL line charts,
and the GPU measurements (7B-shaped random model, peak FLOP/s table)."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

SIZE = (320, 240)
VIDEO_LAYOUT = 1


def bench_settings(threads: int = 0, home=None, **overrides):
    """The settings a bench runs with: the environment's, `home` (its --home) over VIDEOKV_HOME,
    then `overrides`; and torch's threads (its --threads; 0: torch's default)."""
    import torch

    from videokv.runtime import load_settings

    if threads:
        torch.set_num_threads(threads)
    return load_settings(**({} if home is None else {"home": home}), **overrides)


def log(t0: float, tag: str, msg: str) -> None:
    s = time.perf_counter() - t0
    print(f"[{tag} {int(s // 60):02d}:{int(s % 60):02d}] {msg}", flush=True)


def minutes_label(m: float) -> str:
    return f"{m:g}"


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def rounded(x, nd: int = 4):
    """x rounded to nd places; None stays None (a figure that was not measured)."""
    return None if x is None else round(float(x), nd)


def mean(xs):
    """The mean of the values that are not None (None: there are none)."""
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def median(xs):
    """The median of the values that are not None (None: there are none)."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ----------------------------------------------------------------------------- videos

def n_events_for(minutes: float) -> int:
    """Events in a toy-world video of `minutes`: 6, one more per 10 minutes (at most 24), and
    fewer in videos too short for them (each needs a few seconds)."""
    secs = minutes * 60
    if secs < 12:
        return 1
    return int(min(6 + minutes // 10, 24, secs // 3))


def toy_video(videos: Path, minutes: float, seed: int, fps: float, chunk_seconds: float):
    """(path, ground truth, reused, render seconds): a toy-world video of `minutes` rendered at
    the sampling rate `fps` (so every rendered frame is sampled), SIZE pixels, with its
    questions. A video whose ground truth records the same spec is reused, not re-rendered
    (same bytes: the ingest pipeline then deduplicates it)."""
    from videokv.toyworld import scenario
    from videokv.toyworld.synth import GENERATOR_VERSION

    n_frames = int(round(minutes * 60 * fps))
    if n_frames < 1:
        raise ValueError(f"a {minutes:g}-minute video at {fps:g} fps has no frames")
    events = n_events_for(minutes)
    name = f"toy-{n_frames}f-{fps:g}fps-s{seed}"
    path, truth_path = videos / f"{name}.mp4", videos / f"{name}.json"
    spec = {"layout": VIDEO_LAYOUT, "generator": GENERATOR_VERSION, "seed": seed, "n_frames": n_frames,
            "fps": fps, "events": events, "size": list(SIZE)}
    truth = reusable_truth(truth_path, spec) if path.exists() else None
    if truth is not None:
        return path, truth, True, 0.0
    t = time.perf_counter()
    world = scenario.build_world(seed, n_frames, events, fps, SIZE)
    questions = scenario.make_questions(world, np.random.default_rng([seed, 1]), chunk_seconds)
    truth = render_world(path, world, n_frames, fps, spec, {
        "events": [e.to_dict() for e in sorted(world.events, key=lambda e: e.start_frame)], "questions": questions})
    return path, truth, False, time.perf_counter() - t


def reusable_truth(truth_path: Path, spec: dict) -> dict | None:
    """The ground truth at `truth_path` when it records `spec` (its video can be reused)."""
    try:
        truth = json.loads(truth_path.read_text())
    except (OSError, ValueError):
        return None
    return truth if truth.get("spec") == spec else None


def render_world(path: Path, world, n_frames: int, fps: float, spec: dict, fields: dict) -> dict:
    """Encode the toy world's frames to `path` (atomically) and write its ground truth next
    to it ({spec, video, **fields}); returns the truth."""
    from videokv.toyworld.synth import encode_video

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
    codec = encode_video(tmp, (world.render(i) for i in range(n_frames)), fps, SIZE)
    os.replace(tmp, path)
    truth = {"spec": spec, "video": {"path": path.name, "codec": codec, "fps": fps, "n_frames": n_frames,
                                     "duration": n_frames / fps, "width": SIZE[0], "height": SIZE[1]}, **fields}
    path.with_suffix(".json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth


def pick_question(truth: dict) -> dict:
    """The question a bench repeats: the first retrieval question ("What digit was shown on the
    {color} card?"), else the first question, else a fixed one."""
    qs = truth.get("questions") or []
    for q in qs:
        if q["type"] == "retrieval":
            return q
    return qs[0] if qs else {"type": "none", "question": "What happened in the video?", "answer": ""}


# ----------------------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device) -> dict:
    import torch

    out = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(),
           "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "device": str(device), "platform": platform.platform()}
    try:
        out["affinity_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        out["mem_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = p.name
        out["gpu_mem_gb"] = round(p.total_memory / 1e9, 1)
    return out


def max_rss_mb() -> float:
    from videokv.ingest.pipeline import peak_rss_mb
    return round(peak_rss_mb(), 1)


# ----------------------------------------------------------------------------- GPU

# Dense bf16 tensor-core peak (no sparsity), TFLOP/s, by device-name substring (first match).
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4),
                    ("GH200", 989.4), ("A100", 312.0), ("L40S", 362.1), ("A10G", 70.0), ("L4", 121.0))

# Qwen2.5-7B(-Instruct / -VL's LLM) geometry.
QWEN25_7B = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
             "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
             "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
             "tie_word_embeddings": False}


def peak_tflops(name: str) -> float | None:
    for key, tf in PEAK_BF16_TFLOPS:
        if key in name:
            return tf
    return None


def random_qwen25_7b(device: str = "cuda", geometry: dict | None = None):
    """A Qwen2ForCausalLM with the real Qwen2.5-7B geometry (or `geometry`'s overrides, for
    tests) and random bf16 weights, built on `device` directly (no host copy)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    geo = {**QWEN25_7B, **(geometry or {})}
    rope = {"rope_type": "default", "rope_theta": geo.pop("rope_theta")}
    cfg = Qwen2Config(**geo, rope_parameters=rope, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                      initializer_range=0.02)
    cfg._attn_implementation = "sdpa"
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def llm_prefill_flops(cfg, tokens: int, context: int) -> float:
    """Model FLOPs of one prefill forward of `tokens` new tokens on top of `context` cached ones
    (no LM head): 2 x (linear weights) per token, plus QK^T and PV over the context and,
    causally, the chunk itself."""
    h = cfg.hidden_size
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    linear = h * q + 2 * h * kv + q * h + 3 * h * cfg.intermediate_size
    attn = 2 * 2 * cfg.num_attention_heads * hd * tokens * (context + (tokens + 1) / 2)
    return cfg.num_hidden_layers * (2 * tokens * linear + attn)


# ----------------------------------------------------------------------------- charts (PIL)

PALETTE = {"re-prefill": (214, 47, 39), "reprefill": (214, 47, 39), "dense": (35, 75, 225),
           "bilevel": (26, 152, 80), "sparse": (150, 90, 200), "chunk-based": (26, 152, 80),
           "full attention": (214, 47, 39), "ingest": (35, 75, 225),
           # storage codecs (bench quant)
           "none": (90, 90, 90), "bf16": (35, 75, 225), "fp16": (0, 150, 170), "fp8": (230, 140, 20),
           "int8": (26, 152, 80), "int4": (214, 47, 39)}
_EXTRA = [(230, 140, 20), (90, 90, 90), (0, 150, 170)]


def _ticks(lo: float, hi: float, log_scale: bool) -> list[float]:
    if log_scale:
        a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        return [10.0 ** e for e in range(a, b + 1)]
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / 4))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= 6:
            step *= m
            break
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 2)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        e = int(math.floor(math.log10(abs(v))))
        m = v / 10 ** e
        return f"1e{e}" if abs(m - 1) < 1e-9 else f"{m:g}e{e}"
    return f"{v:g}"


def line_chart(img, box, series: dict, title: str, xlabel: str, ylabel: str, xlog: bool = False,
               ylog: bool = False, fonts=None) -> None:
    """Draw `series` {name: [(x, y), ...]} into `box` (x0, y0, x1, y1) of a PIL image, with
    axes, ticks, a legend and point labels; None values are skipped."""
    from PIL import ImageDraw

    from videokv.toyworld.render import load_font

    f_title, f, f_small = fonts or (load_font("DejaVuSans-Bold.ttf", 14), load_font("DejaVuSans.ttf", 12),
                                    load_font("DejaVuSans.ttf", 10))
    dr = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    left, right, top, bottom = x0 + 64, x1 - 12, y0 + 48, y1 - 46
    pts = [(x, y) for s in series.values() for x, y in s if x is not None and y is not None
           and (not xlog or x > 0) and (not ylog or y > 0)]
    dr.text((x0 + 4, y0 + 4), f"{title} ({ylabel})" if ylabel else title, fill="black", font=f_title)
    if not pts:
        dr.text(((left + right) / 2, (top + bottom) / 2), "no data", fill="grey", font=f, anchor="mm")
        return
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    xlo, xhi, ylo, yhi = min(xs), max(xs), min(ys), max(ys)
    if ylog:
        ylo, yhi = 10 ** math.floor(math.log10(ylo)), 10 ** math.ceil(math.log10(yhi))
    else:
        ylo, yhi = min(0.0, ylo), yhi * 1.1 if yhi > 0 else 1.0
    if xhi == xlo:
        xlo, xhi = (xlo / 2, xhi * 2) if xlog else (xlo - 1, xhi + 1)
    elif xlog:
        xlo, xhi = xlo / 1.3, xhi * 1.3
    else:
        pad = (xhi - xlo) * 0.05
        xlo, xhi = xlo - pad, xhi + pad

    def tx(x):
        a, b, v = (math.log10(xlo), math.log10(xhi), math.log10(x)) if xlog else (xlo, xhi, x)
        return left + (v - a) / (b - a) * (right - left)

    def ty(y):
        a, b, v = (math.log10(ylo), math.log10(yhi), math.log10(y)) if ylog else (ylo, yhi, y)
        return bottom - (v - a) / ((b - a) or 1) * (bottom - top)

    dr.rectangle((left, top, right, bottom), outline=(120, 120, 120))
    for t in _ticks(ylo, yhi, ylog):
        if ylo <= t <= yhi:
            y = ty(t)
            dr.line([(left, y), (right, y)], fill=(230, 230, 230))
            dr.text((left - 4, y), _fmt(t), fill="black", font=f_small, anchor="rm")
    for x in sorted(set(xs)):
        dr.line([(tx(x), bottom), (tx(x), bottom + 4)], fill="black")
        dr.text((tx(x), bottom + 6), _fmt(x), fill="black", font=f_small, anchor="mt")
    dr.text(((left + right) / 2, y1 - 14), xlabel, fill="black", font=f, anchor="mm")
    extra = iter(_EXTRA)
    lx, ly = left, y0 + 24
    for name, s in series.items():
        col = PALETTE.get(name) or next(extra, (0, 0, 0))
        p = [(tx(x), ty(y)) for x, y in s if x is not None and y is not None
             and (not xlog or x > 0) and (not ylog or y > 0)]
        if len(p) > 1:
            dr.line(p, fill=col, width=2)
        for (px, py), (_, yv) in zip(p, [q for q in s if q[0] is not None and q[1] is not None
                                         and (not xlog or q[0] > 0) and (not ylog or q[1] > 0)]):
            dr.ellipse((px - 3, py - 3, px + 3, py + 3), fill=col)
            dr.text((px + 5, py - 2), _fmt(float(f"{yv:.3g}")), fill=col, font=f_small, anchor="lb")
        dr.line([(lx, ly + 6), (lx + 18, ly + 6)], fill=col, width=3)
        dr.text((lx + 22, ly + 6), name, fill="black", font=f_small, anchor="lm")
        lx += 22 + f_small.getlength(name) + 14


def store_args(ap, name: str, workdir: str | None = None, videos: str = "rendered videos") -> None:
    """The options every bench over a KV store ends with: --threads, --home, --workdir
    (default runs/NAME: `videos`, kept for reuse) and --out (default runs/bench_NAME.json)."""
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--home", type=Path, default=None, help="KV store home (default: VIDEOKV_HOME)")
    ap.add_argument("--workdir", type=Path, default=Path(workdir or f"runs/{name}"), help=f"{videos} (kept for reuse)")
    ap.add_argument("--out", type=Path, default=Path(f"runs/bench_{name}.json"), help="JSON (PNG, markdown beside it)")


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)


def write_outputs(result: dict, out: Path, png: Path | None, plot, markdown, side_by_side) -> None:
    """JSON, PNG (plot(result, path)) and markdown next to `out`; print the table and targets."""
    png = png or out.with_suffix(".png")
    md = out.with_suffix(".md")
    result["outputs"] = {"json": str(out), "png": str(png), "md": str(md)}
    write_json(out, result)
    plot(result, png)
    md.write_text(markdown(result) + "\n")
    print()
    print(side_by_side(result))
    for name, t in result["targets"].items():
        print(f"target {name}: {json.dumps(t)}")
    print(f"wrote {out}, {png}, {md} ({result['total_s']:.0f} s)")
