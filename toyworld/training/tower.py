"""Train the toy-world vision tower (engine/toytower.py) on rendered scenes.

    python -m videokv.toyworld.training.tower --seed 0 --out runs/toyworld-tower

reproduces the shipped videokv/weights/toyworld/tower.safetensors bit for bit (one torch
thread; ~22 min for stage 1 plus ~18 min for the refine stage on one free core; `--init
STAGE1.safetensors` runs only the refine stage). Deterministic for a seed (and thread
count): numpy and torch are seeded, frames are rendered by `ingest.toyworld.random_scene`
with a numpy Generator. Rendering is the slow part, so a pool of frames is rendered once
(at random resolutions and aspect ratios 160x120..1280x720, JPEG artefacts, then resized
to the tower's input like the pipeline does) and each pooled frame is reused a few times
under cheap batch augmentations (zoom/shift, brightness, blur, noise). Stage 1 trains from
scratch (4500 steps, each frame seen ~20 times); the refine stage continues on a fresh
pool at a lower LR with more portrait/square frames (see REFINE_*).

Losses: cross-entropy on the heads (colour only for events, digit only for cards, shape
only for shapes) plus a contrastive loss that ties the retrieval head to frozen
all-MiniLM-L6-v2 embeddings of questions and captions about each object (TOYWORLD
templates with wording variants; a text is positive for every object it describes).

Writes out_dir/tower.safetensors and out_dir/tower_metrics.json (held-out accuracies on
another seed's renderings, and recall@3 of the right chunk in synthetic haystacks).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from videokv.toyworld import captions as cap
from videokv.toyworld import render as tw
from videokv.toyworld.tower import ToyWorldTower, to_tensor  # noqa: F401 (tests use tt.to_tensor)

from .texts import N_IDS, identity_index, identity_prototypes, text_bank, text_embeddings  # noqa: F401
from .tower_eval import evaluate

INPUT_SIZE = (128, 96)
BATCH = 64
REUSE = 20                # each pooled frame is seen ~REUSE times (augmented differently)
TAU = 0.05                # contrastive temperature
CONTRAST_WEIGHT = 0.5
HEAD_WEIGHTS = {"kind": 1.0, "color": 1.0, "shape": 1.5, "digit": 2.0}   # digits are the hardest

# ---------------------------------------------------------------- rendering

ASPECTS = (4 / 3, 16 / 9, 3 / 2, 1.0, 5 / 4, 2.0, 3 / 4, 9 / 16)
ASPECT_P = (0.27, 0.27, 0.1, 0.08, 0.06, 0.05, 0.07, 0.10)
EVAL_SIZES = ((160, 120), (320, 240), (426, 240), (640, 360), (640, 480), (854, 480), (1280, 720),
              (480, 480), (360, 640), (200, 150))


def sample_size(rng: np.random.Generator, aspect_p=ASPECT_P) -> tuple[int, int]:
    """Random resolution within 160x120..1280x720, any common aspect. Heights are
    log-uniform in 120..270 (90%) or 270..720 (10%): rendering cost grows with the
    pixel count, and after the resize to 128x96 large frames differ from medium ones
    only in finer noise and anti-aliasing."""
    aspect = float(rng.choice(ASPECTS, p=aspect_p))
    lo, hi = (120, 270) if rng.random() < 0.9 else (270, 720)
    h = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    w = min(1280, max(160, int(round(h * aspect))))
    return w, min(720, max(120, int(round(h))))


def _degrade_and_resize(frame: np.ndarray, rng: np.random.Generator, size=INPUT_SIZE) -> np.ndarray:
    img = Image.fromarray(frame)
    if rng.random() < 0.4:  # codec-like blocking and chroma subsampling
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(35, 92)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    r = rng.random()
    method = (Image.Resampling.BOX if r < 0.6 else Image.Resampling.BILINEAR if r < 0.8
              else Image.Resampling.LANCZOS if r < 0.9 else Image.Resampling.BICUBIC)
    return np.asarray(img.resize(size, method))


def _frame_labels(labels: list[dict]) -> tuple[int, int, int, int]:
    events = [lab for lab in labels if lab["role"] == "event"]
    if not events:
        return 0, -1, -1, -1
    e = events[0]
    color = cap.COLORS.index(e["color"])
    if e["kind"] == "card":
        return 1, color, -1, int(e["digit"])
    return 2, color, cap.SHAPES.index(e["shape"]), -1


def render_pool(rng: np.random.Generator, n: int, p_event: float = 0.7, sizes=None,
                progress: Callable | None = None, phase: str = "render",
                aspect_p=ASPECT_P) -> tuple[np.ndarray, np.ndarray]:
    """n frames: uint8 [n, H, W, 3] at the input size, and labels int64 [n, 4]
    (kind, color, shape, digit; -1 where irrelevant). One event or none per frame."""
    W, H = INPUT_SIZE
    frames = np.empty((n, H, W, 3), np.uint8)
    labels = np.empty((n, 4), np.int64)
    for i in range(n):
        size = sizes[int(rng.integers(len(sizes)))] if sizes else sample_size(rng, aspect_p)
        while True:
            try:
                frame, labs = tw.random_scene(rng, size, n_events=int(rng.random() < p_event))
                break
            except ValueError:  # toyworld._occlude on a tiny sprite draws an empty strip: redraw
                continue
        frames[i] = _degrade_and_resize(frame, rng)
        labels[i] = _frame_labels(labs)
        if progress and (i + 1) % 500 == 0:
            progress({"phase": phase, "done": i + 1, "total": n})
    return frames, labels


# ---------------------------------------------------------------- batch augmentation


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """x [B, 3, H, W] float in [0, 1] -> augmented copy (zoom/shift, colour, blur, noise)."""
    B = x.shape[0]

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*(shape or (B,)), generator=g)

    # zoom/shift (half the batch): object sizes change by at most 8%
    on = (torch.rand(B, generator=g) < 0.5).float()
    s = 1 + on * u(-0.08, 0.08)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0] = s
    theta[:, 1, 1] = s
    theta[:, 0, 2] = on * u(-0.04, 0.04)
    theta[:, 1, 2] = on * u(-0.04, 0.04)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # brightness / contrast / slight per-channel gain
    x = x * u(0.88, 1.12)[:, None, None, None] * u(0.97, 1.03, B, 3)[:, :, None, None] + u(-0.04, 0.04)[:, None, None, None]
    # blur (a quarter of the batch), 3x3 Gaussian
    sigma = u(0.3, 0.9)
    k1 = torch.exp(-torch.tensor([-1.0, 0.0, 1.0])[None] ** 2 / (2 * sigma[:, None] ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)
    k2 = (k1[:, :, None] * k1[:, None, :])                                          # [B, 3, 3]
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate").reshape(1, B * 3, x.shape[2] + 2, x.shape[3] + 2)
    blurred = F.conv2d(padded, k2.repeat_interleave(3, 0)[:, None], groups=B * 3).reshape_as(x)
    bmask = (torch.rand(B, generator=g) < 0.25).float()[:, None, None, None]
    x = bmask * blurred + (1 - bmask) * x
    # Gaussian noise (half the batch)
    nsig = (torch.rand(B, generator=g) < 0.5).float() * u(0.0, 0.03)
    x = x + torch.randn(x.shape, generator=g) * nsig[:, None, None, None]
    return x.clamp(0, 1)


# ---------------------------------------------------------------- losses


def head_losses(logits: dict[str, torch.Tensor], y: torch.Tensor) -> dict[str, torch.Tensor]:
    kind, color, shape, digit = y.unbind(1)
    out = {"kind": F.cross_entropy(logits["kind"], kind)}
    for head, target, mask in (("color", color, kind > 0), ("shape", shape, kind == 2), ("digit", digit, kind == 1)):
        out[head] = (F.cross_entropy(logits[head][mask], target[mask]) if mask.any()
                     else logits[head].sum() * 0.0)
    return out


def _multi_positive_nll(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the mean over positives of -log softmax (SupCon style)."""
    logp = torch.log_softmax(logits, 1)
    keep = pos.any(1)
    per_row = -(logp * pos).sum(1)[keep] / pos[keep].sum(1)
    return per_row.mean() if keep.any() else logits.sum() * 0.0


def contrastive_loss(tower: ToyWorldTower, probs: dict[str, torch.Tensor], ids: torch.Tensor,
                     text_emb: torch.Tensor, text_pos: torch.Tensor, protos: dict[str, torch.Tensor]) -> torch.Tensor:
    """Frames -> texts (event frames of the batch against the whole text bank) and
    texts -> identities (every text against the 120 perfectly classified prototypes)."""
    proto_vec = tower.retrieval_from_probs(protos)                      # [N_IDS, 384]
    loss = _multi_positive_nll(text_emb @ proto_vec.T / TAU, text_pos.float())
    loss = loss + _multi_positive_nll(proto_vec @ text_emb.T / TAU, text_pos.T.float())
    ev = ids >= 0
    if ev.any():
        v = tower.retrieval_from_probs({k: p[ev] for k, p in probs.items()})
        loss = loss + _multi_positive_nll(v @ text_emb.T / TAU, text_pos[:, ids[ev]].T.float())
    return loss


# ---------------------------------------------------------------- training

# Stage 2 ("refine"): a fresh, larger pool at lower LR, with portrait and square frames
# drawn more often. Stage 1 alone left shape at 96.8% and digit at 98.0% held out, with the
# errors concentrated in portrait frames (squeezed ~2.4x vertically by the resize to
# 128x96) and in small events; its training loss was already ~0.01, so the gap was the
# pool (each frame seen 20 times), not capacity.
REFINE_STEPS = 3000
REFINE_REUSE = 6
REFINE_LR = 1e-3
REFINE_ASPECT_P = (0.2, 0.2, 0.08, 0.12, 0.06, 0.04, 0.12, 0.18)


def _fit(tower: ToyWorldTower, pool: np.ndarray, pool_y: np.ndarray, steps: int, lr: float, batch: int,
         g: torch.Generator, texts, progress: Callable, phase: str = "train") -> dict:
    """AdamW + one-cycle LR over `steps` batches drawn from the pool; returns the running losses."""
    _, text_emb, text_pos = texts
    protos = identity_prototypes()
    opt = torch.optim.AdamW(tower.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    pool_ids = torch.tensor([identity_index(*row) for row in pool_y])
    pool_y_t = torch.from_numpy(pool_y)
    tower.train()
    t0 = time.perf_counter()
    running = None
    for step in range(steps):
        idx = torch.randint(0, len(pool), (batch,), generator=g)
        x = augment(to_tensor(pool[idx.numpy()]), g)
        logits = tower.logits(x)
        hl = head_losses(logits, pool_y_t[idx])
        probs = ToyWorldTower.probs_of(logits)
        cl = contrastive_loss(tower, probs, pool_ids[idx], text_emb, text_pos, protos)
        loss = sum(HEAD_WEIGHTS[k] * v for k, v in hl.items()) + CONTRAST_WEIGHT * cl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        item = {k: v.item() for k, v in hl.items()} | {"contrast": cl.item(), "loss": loss.item()}
        running = item if running is None else {k: 0.95 * running[k] + 0.05 * v for k, v in item.items()}
        if (step + 1) % 50 == 0 or step + 1 == steps:
            progress({"phase": phase, "step": step + 1, "steps": steps,
                      "seconds": time.perf_counter() - t0, **{k: round(v, 4) for k, v in running.items()}})
    tower.eval()
    return running or {}


def train_tower(seed: int = 0, steps: int = 4500, out_dir: str | Path = "runs/toyworld-tower", threads: int = 1,
                progress: Callable[[dict], None] | None = None, batch: int = BATCH, reuse: int = REUSE,
                eval_frames: int = 2400, eval_trials: int = 200, lr: float = 3e-3,
                refine_steps: int = REFINE_STEPS, init: str | Path | None = None) -> dict:
    """Train a ToyWorldTower; write tower.safetensors and tower_metrics.json into out_dir.

    Stage 1: `steps` steps from scratch on a pool seen `reuse` times. Stage 2: `refine_steps`
    steps on a fresh pool (see REFINE_*). `init` (a stage-1 tower.safetensors) skips stage 1:
    the result is the same as the full run when init is that seed's stage-1 output.
    Returns the metrics. progress(event_dict) is called during rendering and training."""
    from videokv.oracles.minilm import MiniLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    progress = progress or (lambda e: None)
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    try:
        # Order matters for bit-for-bit reproduction of the shipped stage 1: seed, then MiniLM.
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        minilm = MiniLM.load()
        texts = text_embeddings(minilm)
        seconds["texts"] = round(time.perf_counter() - t_start, 1)
        losses = {}
        if init is None:
            n_pool = max(batch, steps * batch // reuse)
            t0 = time.perf_counter()
            pool, pool_y = render_pool(rng, n_pool, progress=progress)
            seconds["render"] = round(time.perf_counter() - t0, 1)
            tower = ToyWorldTower(None, input_size=INPUT_SIZE)
            t0 = time.perf_counter()
            losses["stage1"] = _fit(tower, pool, pool_y, steps, lr, batch, g, texts, progress)
            seconds["train"] = round(time.perf_counter() - t0, 1)
            del pool, pool_y
            tower.save(out_dir / "tower_stage1.safetensors")
        else:
            tower = ToyWorldTower.load(init)
        if refine_steps:
            torch.manual_seed(seed + 1)
            g = torch.Generator().manual_seed(seed + 1)
            rng = np.random.default_rng([seed, 2])
            n_pool = max(batch, refine_steps * batch // REFINE_REUSE)
            t0 = time.perf_counter()
            pool, pool_y = render_pool(rng, n_pool, progress=progress, phase="render-refine",
                                       aspect_p=REFINE_ASPECT_P)
            seconds["render_refine"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            losses["refine"] = _fit(tower, pool, pool_y, refine_steps, REFINE_LR, batch, g, texts, progress,
                                    phase="refine")
            seconds["refine"] = round(time.perf_counter() - t0, 1)
            del pool, pool_y
        sha = tower.save(out_dir / "tower.safetensors")

        metrics = {"seed": seed, "steps": steps, "refine_steps": refine_steps, "batch": batch,
                   "reuse": reuse, "refine_reuse": REFINE_REUSE, "threads": threads,
                   "weights_sha256": sha, "identity": tower.identity, "minilm": minilm.identity,
                   "texts": len(texts[0]), "final_train_loss": losses, "seconds": seconds}
        if eval_frames:
            t0 = time.perf_counter()
            erng = np.random.default_rng([seed, 7919])
            ev_frames, ev_y = render_pool(erng, eval_frames, sizes=EVAL_SIZES, progress=progress, phase="render-eval")
            metrics.update(evaluate(tower, ev_frames, ev_y, minilm, seed + 1, trials=eval_trials))
            metrics["eval_sizes"] = [f"{w}x{h}" for w, h in EVAL_SIZES]
            seconds["eval"] = round(time.perf_counter() - t0, 1)
        seconds["total"] = round(time.perf_counter() - t_start, 1)
        (out_dir / "tower_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        return metrics
    finally:
        torch.set_num_threads(old_threads)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m videokv.toyworld.training.tower", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=4500)
    ap.add_argument("--out", default="runs/toyworld-tower")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--refine-steps", type=int, default=REFINE_STEPS)
    ap.add_argument("--init", default=None, help="a stage-1 tower.safetensors: run only the refine stage")
    ap.add_argument("--eval-frames", type=int, default=2400)
    args = ap.parse_args(argv)

    def show(e):
        print(json.dumps(e), file=sys.stderr, flush=True)

    m = train_tower(args.seed, args.steps, args.out, args.threads, progress=show, eval_frames=args.eval_frames,
                    refine_steps=args.refine_steps, init=args.init)
    print(json.dumps(m, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
