"""Held-out evaluation of a trained toy-world tower (used by engine/train_tower.py).

Single-frame accuracies of each head on renderings the tower never saw, and recall@k of
the right chunk in synthetic haystacks built from those frames, with MiniLM questions.
"""

from __future__ import annotations

import numpy as np
import torch

from videokv.toyworld import captions as cap
from videokv.toyworld.tower import ToyWorldTower, chunk_retrieval_vector, question_retrieval_vector, to_tensor

from .texts import HELDOUT_CARD, HELDOUT_SHAPE, N_IDS, identity_index


def _predict(tower: ToyWorldTower, frames: np.ndarray, batch: int = 256):
    probs, vecs = [], []
    with torch.no_grad():
        for i in range(0, len(frames), batch):
            x = to_tensor(frames[i:i + batch])
            p = tower.probabilities(x)
            probs.append({k: v for k, v in p.items()})
            vecs.append(tower.retrieval_from_probs(p) * (1.0 - p["kind"][:, :1]))
    cat = {k: torch.cat([p[k] for p in probs]) for k in probs[0]}
    return cat, torch.cat(vecs)


def accuracy(probs: dict[str, torch.Tensor], y: np.ndarray) -> dict[str, float]:
    pred = {k: v.argmax(-1).numpy() for k, v in probs.items()}
    kind = y[:, 0]
    ev, cards, shapes = kind > 0, kind == 1, kind == 2
    exact = (pred["kind"] == kind) & np.where(ev, pred["color"] == y[:, 1], True) \
        & np.where(cards, pred["digit"] == y[:, 3], True) & np.where(shapes, pred["shape"] == y[:, 2], True)
    return {
        "kind": float((pred["kind"] == kind).mean()),
        "none_as_event": float((pred["kind"][kind == 0] != 0).mean()),
        "event_as_none": float((pred["kind"][ev] == 0).mean()),
        "color": float((pred["color"][ev] == y[ev, 1]).mean()),
        "digit": float((pred["digit"][cards] == y[cards, 3]).mean()),
        "shape": float((pred["shape"][shapes] == y[shapes, 2]).mean()),
        "caption_exact": float(exact.mean()),
        "n": int(len(y)), "n_cards": int(cards.sum()), "n_shapes": int(shapes.sum()),
    }


def haystack_recall(vecs: torch.Tensor, y: np.ndarray, q_vecs: dict[str, torch.Tensor], rng: np.random.Generator,
                    trials: int = 200, chunk_frames: int = 16, k: int = 3) -> dict[str, float]:
    """Synthetic haystacks built from held-out frames: chunks of `chunk_frames` frames,
    about half of them holding one event for 2-12 consecutive frames (the rest shows
    distractors only); event identities follow the synth rules (distinct card colours;
    the asked-about shape appears once). recall@k of the target chunk by cosine of the
    question vector with each chunk vector.

    q_vecs: {"card:{color}" | "shape:{shape}": [385] question vectors}."""
    ids = np.array([identity_index(*row) for row in y])
    by_id = {i: np.nonzero(ids == i)[0] for i in range(N_IDS)}
    empty = np.nonzero(ids < 0)[0]
    hits = {"retrieval": [], "attribute": []}
    for qtype in hits:
        for _ in range(trials):
            n_chunks = int(rng.choice([16, 32, 64]))
            n_events = n_chunks // 2
            target = -1
            while target < 0 or len(by_id[target]) == 0:
                if qtype == "retrieval":
                    c = int(rng.integers(8))
                    target = c * 10 + int(rng.integers(10))
                    qkey = f"card:{cap.COLORS[c]}"
                    ok = lambda i: not (i < 80 and i // 10 == c)                   # noqa: E731
                else:
                    s = int(rng.integers(5))
                    target = 80 + int(rng.integers(8)) * 5 + s
                    qkey = f"shape:{cap.SHAPES[s]}"
                    ok = lambda i: not (i >= 80 and (i - 80) % 5 == s)              # noqa: E731
            used_card_colors = {target // 10} if target < 80 else set()
            others = []
            while len(others) < n_events - 1:
                i = int(rng.integers(N_IDS))
                if not ok(i) or len(by_id[i]) == 0:
                    continue
                if i < 80:
                    if i // 10 in used_card_colors:
                        continue
                    used_card_colors.add(i // 10)
                others.append(i)
            chunk_ids = [target] + others + [-1] * (n_chunks - n_events)
            chunk_vecs = []
            for cid in chunk_ids:
                idx = rng.choice(empty, chunk_frames)
                if cid >= 0:
                    n_ev = int(rng.integers(2, 13))
                    start = int(rng.integers(0, chunk_frames - n_ev + 1))
                    idx[start:start + n_ev] = rng.choice(by_id[cid], n_ev)
                chunk_vecs.append(chunk_retrieval_vector(vecs[idx]))
            scores = torch.stack(chunk_vecs) @ q_vecs[qkey]
            rank = int((scores > scores[0]).sum())                              # target is chunk 0
            hits[qtype].append(rank < k)
    return {f"{qtype}_recall@{k}": float(np.mean(h)) for qtype, h in hits.items()}


def evaluate(tower: ToyWorldTower, frames: np.ndarray, y: np.ndarray, minilm, seed: int,
             trials: int = 200) -> dict:
    tower.eval()
    probs, vecs = _predict(tower, frames)
    out = {"heldout": accuracy(probs, y)}
    for name, (tc, ts) in {"templates": ("What digit was shown on the {c} card?", "What color was the {s}?"),
                           "paraphrases": (HELDOUT_CARD, HELDOUT_SHAPE)}.items():
        keys = [f"card:{c}" for c in cap.COLORS] + [f"shape:{s}" for s in cap.SHAPES]
        texts = [tc.format(c=c) for c in cap.COLORS] + [ts.format(s=s) for s in cap.SHAPES]
        q = question_retrieval_vector(minilm.encode(texts))
        out[f"haystack_{name}"] = haystack_recall(vecs, y, dict(zip(keys, q)), np.random.default_rng(seed),
                                                  trials=trials)
    return out
