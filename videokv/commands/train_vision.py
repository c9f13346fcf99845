"""`videokv train-vision`: train the embedded default's toy-world model from scratch.

Three stages, all generated on the fly and deterministic for a seed:
  1. the vision tower (CNN classifier of the salient object + retrieval head into
     all-MiniLM-L6-v2's space) on rendered toy-world frames (engine/train_tower.py);
  2. the LLM adapter (LoRA on SmolLM2's attention) reading tower captions through the
     run-time chunk-prefill / compression / assembly path (engine/train_lm.py);
  3. "text refine": the adapter, from stage 2's weights, also reading each chunk's text
     channel (on-screen text, speech, subtitles) with toy and text questions mixed.
`--adapter-init PATH` runs only stage 3 from a given adapter (with `--skip-tower`, the
tower comes from --out or, when missing there, from PATH's folder).
Writes tower.safetensors, adapter.safetensors, manifest.json (sha256 of both) and
metrics.json to --out; `--install` also copies them over the shipped weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

ADAPTER_ALPHA = 16.0
# The text stage of the default run (adapter c99f5f8f); the shipped adapter adds two more
# refine runs on top (--adapter-init, model card step 4).
TEXT_STEPS = 300
TEXT_LR = 5e-4           # half of stage 2's: refine, do not overwrite what it learnt
TEXT_SHARE = 0.8         # share of text-refine videos with a text channel
BUSY_SHARE = 0.0         # share of text-refine videos that are busy scenes (lm_data.busy_video)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="videokv train-vision", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="training seed (same seed and threads, same weights)")
    ap.add_argument("--tower-steps", type=int, default=4500, help="vision tower training steps")
    ap.add_argument("--lm-steps", type=int, default=400, help="LLM adapter steps (caption stage)")
    ap.add_argument("--lm-text-steps", type=int, default=TEXT_STEPS, help="text refine steps after stage 1 (the shipped adapter: 300)")
    ap.add_argument("--lm-text-share", type=float, default=TEXT_SHARE,
                    help=f"share of text-refine videos with a text channel (default {TEXT_SHARE})")
    ap.add_argument("--lm-busy-share", type=float, default=BUSY_SHARE,
                    help=f"share of text-refine videos that are busy scenes, 4+ events back to back (default {BUSY_SHARE})")
    ap.add_argument("--lm-counting-share", type=float, default=0.0,
                    help="share of text-refine videos asking how often a pair appeared, answer 2-3 "
                         "(lm_data.counting_video; default 0)")
    ap.add_argument("--lm-list-counts", action="store_true",
                    help="text refine: counting answers list when each appearance began, then the count")
    ap.add_argument("--lm-write-grad", type=float, default=0.0,
                    help="share of text-refine steps whose gradient also flows into how event chunks are written "
                         "(default 0: only into how the answer reads them)")
    ap.add_argument("--lm-window", type=int, default=0,
                    help="text refine: prefill each chunk that shows something on top of this many "
                         "predecessors' H-KV, as ingest does (its default: 4); 0: on the prompt alone")
    ap.add_argument("--lm-h-text", choices=("keep", "drop"), default="keep",
                    help="text refine: read unselected (H) chunks with their stamp rows (keep, as every "
                         "earlier stage) or without them (drop, as the query pager does by default)")
    ap.add_argument("--lm-text-lr", type=float, default=TEXT_LR, help=f"text refine learning rate (default {TEXT_LR})")
    ap.add_argument("--adapter-init", default=None,
                    help="adapter.safetensors to start the text refine from (skips the caption stage)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the tower (results depend on it)")
    ap.add_argument("--lm-threads", type=int, default=2,
                    help="torch threads for the adapter (the shipped one: 2; results depend on it)")
    ap.add_argument("--out", default=None, help="output folder (default runs/train-vision-seed<S>)")
    ap.add_argument("--skip-tower", action="store_true", help="reuse --out/tower.safetensors")
    ap.add_argument("--install", action="store_true", help="copy the result over the shipped weights")
    args = ap.parse_args(argv)

    import torch
    from safetensors.torch import load_file, save_file

    from videokv.hashing import sha256_file
    from videokv.models import lora
    from videokv.models.embedded import convert_embedded
    from videokv.models.loading import load_folder
    from videokv.runtime import load_settings
    from videokv.toyworld.captions import LAYOUT
    from videokv.toyworld.loader import read_manifest, toyworld_dir
    from videokv.toyworld.training.lm import LMTrainConfig, train
    from videokv.toyworld.training.tower import train_tower

    out = Path(args.out or f"runs/train-vision-seed{args.seed}")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    init_dir = Path(args.adapter_init).parent if args.adapter_init else None
    if args.skip_tower and not (out / "tower.safetensors").is_file() and init_dir:
        for name in ("tower.safetensors", "tower_metrics.json"):   # the tower shipped with the init
            shutil.copy2(init_dir / name, out / name)
    if args.skip_tower:
        tower_metrics = json.loads((out / "tower_metrics.json").read_text())
    else:
        def tower_progress(e: dict) -> None:
            if e.get("phase") in ("train", "refine"):
                print(f"tower {e['phase']}: step {e['step']}/{e['steps']} loss {e['loss']:.3f} ({e['seconds']:.0f} s)", flush=True)
        tower_metrics = train_tower(args.seed, args.tower_steps, out, args.threads, progress=tower_progress)
        held = tower_metrics.get("heldout", {})
        print(f"tower: done in {time.perf_counter() - t0:.0f} s; held-out "
              + ", ".join(f"{k} {held[k]:.4f}" for k in ("kind", "color", "digit", "shape") if k in held), flush=True)

    t1 = time.perf_counter()
    torch.set_num_threads(args.lm_threads)
    model, tok, base_id = load_folder(convert_embedded(load_settings().models_dir))
    cfg = LMTrainConfig(seed=args.seed, steps=args.lm_steps, alpha=ADAPTER_ALPHA)

    def lm_progress(step: int, steps: int, loss: float, secs: float) -> None:
        if step % 10 == 0 or step == steps:
            print(f"adapter: step {step}/{steps} loss {loss:.3f} ({secs:.0f} s)", flush=True)

    base = {}
    if args.adapter_init:
        init = load_file(args.adapter_init)
        lm_metrics = {"init": args.adapter_init, "init_sha256": sha256_file(Path(args.adapter_init))}
        old = init_dir / "manifest.json"
        if old.is_file():     # stage-1 facts of the adapter we start from
            base = json.loads(old.read_text())
    else:
        lm_metrics = train(model, tok, cfg, lm_progress)
        init = lora.adapter_state(model)
    t2 = time.perf_counter()
    text_metrics = None
    if args.lm_text_steps:
        if not args.adapter_init:
            lora.detach(model)
        tcfg = LMTrainConfig(seed=args.seed + 1, steps=args.lm_text_steps, alpha=ADAPTER_ALPHA, lr=args.lm_text_lr,
                             warmup=20, text_share=args.lm_text_share, busy_share=args.lm_busy_share,
                             write_grad=args.lm_write_grad, window=args.lm_window,
                             h_text=args.lm_h_text, counting_share=args.lm_counting_share,
                             list_counts=args.lm_list_counts)

        def text_progress(step: int, steps: int, loss: float, secs: float) -> None:
            if step % 10 == 0 or step == steps:
                print(f"adapter text refine: step {step}/{steps} loss {loss:.3f} ({secs:.0f} s)", flush=True)

        text_metrics = train(model, tok, tcfg, text_progress, init=init)
        state = {k: v.contiguous() for k, v in lora.adapter_state(model).items()}
    else:
        state = {k: v.contiguous() for k, v in init.items()}
    save_file(state, str(out / "adapter.safetensors"), metadata={"rank": str(cfg.rank), "alpha": str(cfg.alpha)})
    manifest = {
        "files": {n: sha256_file(out / n) for n in ("tower.safetensors", "adapter.safetensors")},
        "base_model": {"name": "SmolLM2-135M-Instruct", "weights_sha256_prefix": base_id},
        "adapter": {"rank": cfg.rank, "alpha": cfg.alpha, "targets": list(lora.TARGETS)},
        "tokens_per_frame": cfg.tokens_per_frame, "chunk_frames": cfg.chunk_frames,
        "seed": args.seed, "tower_steps": args.tower_steps, "tower_refine_steps": tower_metrics.get("refine_steps", 0),
        "lm_steps": args.lm_steps, "threads": {"tower": args.threads, "adapter": args.lm_threads},
        "caption_layout": LAYOUT,
    }
    if args.adapter_init:    # tower and stage-1 adapter facts are those of the init's manifest
        for k in ("seed", "tower_steps", "tower_refine_steps", "lm_steps"):
            manifest[k] = base.get(k, manifest[k])
        manifest["threads"] = dict(base.get("threads", manifest["threads"]))
        manifest["adapter_init_sha256"] = lm_metrics["init_sha256"]
    manifest["lm_text_steps"] = args.lm_text_steps
    manifest["threads"]["adapter_text"] = args.lm_threads
    if text_metrics:
        manifest["lm_text"] = {"seed": args.seed + 1, "lr": args.lm_text_lr, "text_share": args.lm_text_share,
                               "busy_share": args.lm_busy_share, "write_grad": args.lm_write_grad,
                               "window": args.lm_window, "h_text": args.lm_h_text,
                               "counting_share": args.lm_counting_share, "list_counts": args.lm_list_counts, "seconds": round(text_metrics["seconds"], 1)}
    if args.adapter_init and text_metrics:   # how the shipped adapter came to be, run by run
        t = manifest["lm_text"]
        manifest["adapter_chain"] = base.get("adapter_chain", []) + [{
            "sha256_prefix": manifest["files"]["adapter.safetensors"][:16],
            "stage": (f"refine from {lm_metrics['init_sha256'][:8]}: {args.lm_text_steps} steps, --seed {args.seed}, "
                      f"lr {t['lr']:g}, text_share {t['text_share']:g}, busy_share {t['busy_share']:g}, "
                      f"write_grad {t['write_grad']:g}, window {t['window']}, h_text {t['h_text']}, "
                      f"counting_share {t['counting_share']:g}{', list_counts' if t['list_counts'] else ''}, "
                      f"{args.lm_threads} thread(s)")}]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    metrics = {"tower": tower_metrics, "adapter": lm_metrics, "adapter_text": text_metrics,
               "seconds": {"adapter": round(t2 - t1, 1), "adapter_text": round(time.perf_counter() - t2, 1),
                           "total": round(time.perf_counter() - t0, 1)}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"wrote {out}: tower {manifest['files']['tower.safetensors'][:12]}, adapter "
          f"{manifest['files']['adapter.safetensors'][:12]} in {metrics['seconds']['total']:.0f} s")
    if args.install:
        dest = toyworld_dir()
        dest.mkdir(parents=True, exist_ok=True)
        calibration = read_manifest(dest).get("count_calibration") if (dest / "manifest.json").is_file() else None
        if calibration:   # kept, with the tower it was measured on: a warning at load says to re-measure
            manifest["count_calibration"] = calibration
            (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        for name in ("tower.safetensors", "adapter.safetensors", "manifest.json", "metrics.json"):
            shutil.copy2(out / name, dest / name)
        print(f"installed into {dest}")
    return 0



def main_eval_adapter(argv: list[str] | None = None) -> int:
    """`videokv eval-adapter --adapter FILE`: an adapter's accuracy on held-out caption videos."""
    import torch

    from videokv.engine.config import EngineConfig
    from videokv.runtime import load_settings
    from videokv.toyworld.training.eval_lm import adapted_backend, answer_ok, evaluate

    ap = argparse.ArgumentParser(prog="videokv eval-adapter", description="accuracy of an adapter on held-out caption videos")
    ap.add_argument("--adapter", required=True, help="adapter.safetensors to merge into the embedded LLM")
    ap.add_argument("--videos", type=int, default=8, help="held-out caption videos")
    ap.add_argument("--chunks", type=int, default=16, help="chunks per video")
    ap.add_argument("--seed", type=int, default=1234, help="video seed (never a training seed)")
    ap.add_argument("--text", action="store_true", help="videos with a text channel, text questions too")
    ap.add_argument("--busy", action="store_true", help="busy scenes (4+ events back to back) instead of random videos")
    ap.add_argument("--modes", default="dense,bilevel", help="comma-separated KV modes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--examples", default=None, help="write every question and answer here (JSONL)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    be = adapted_backend(args.adapter, load_settings().models_dir)
    ex: list = []
    got = evaluate(be, EngineConfig(tokens_per_frame=8), seed=args.seed, videos=args.videos, n_chunks=args.chunks,
                   modes=tuple(args.modes.split(",")), text=args.text, examples=ex, busy=args.busy)
    if args.examples:
        with open(args.examples, "w") as fh:
            for m, qa, out in ex:
                fh.write(json.dumps({"mode": m, "type": qa.type, "q": qa.question, "key": qa.key, "got": out,
                                     "ok": answer_ok(qa, out)}) + "\n")
    print(json.dumps(got, indent=1))
    return 0

