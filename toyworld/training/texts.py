"""What the toy-world tower's retrieval head learns to match: the 120 object identities (80
cards, 40 coloured shapes) and the texts (MiniLM side) that name each of them, with held-out
wordings for the retrieval check."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from videokv.toyworld import captions as cap

N_IDS = len(cap.COLORS) * len(cap.DIGITS) + len(cap.COLORS) * len(cap.SHAPES)   # 80 cards + 40 shapes

# ---------------------------------------------------------------- object identities


def identity_index(kind: int, color: int, shape: int, digit: int) -> int:
    """cards 0..79 (color*10 + digit), shapes 80..119 (80 + color*5 + shape); -1 for none."""
    if kind == 1:
        return color * 10 + digit
    if kind == 2:
        return 80 + color * 5 + shape
    return -1


def identity_labels(i: int) -> tuple[int, int, int, int]:
    if i < 80:
        return 1, i // 10, -1, i % 10
    return 2, (i - 80) // 5, (i - 80) % 5, -1


def _object_name(i: int) -> str:
    k, c, s, _ = identity_labels(i)
    return f"{cap.COLORS[c]} card" if k == 1 else f"{cap.COLORS[c]} {cap.SHAPES[s]}"


# ---------------------------------------------------------------- texts (MiniLM side)

CARD_QUESTIONS = (
    "What digit was shown on the {c} card?", "Which number did the {c} card show?",
    "What number was on the {c} card?", "Which digit appeared on the {c} card?",
    "What was the digit on the {c} card?", "Tell me the number shown on the {c} card.",
    "When did the {c} card appear?", "At what time was the {c} card shown?",
    "When was the {c} card visible?", "At what time did the {c} card show up?",
    "How many times did a {c} card appear?", "a {c} card", "the {c} card",
)
CARD_CAPTIONS = ("a {c} card showing {d}", "the {c} card with the number {d}", "a {c} card with a {d} on it")
SHAPE_QUESTIONS = (
    "What color was the {s}?", "Which color did the {s} have?", "What was the color of the {s}?",
    "What colour was the {s}?", "Which colour was the {s}?",
)
PAIR_TEXTS = (
    "How many times did a {c} {s} appear?", "How often did the {c} {s} appear?",
    "How many times was a {c} {s} shown?", "Count the appearances of the {c} {s}.",
    "When did the {c} {s} appear?", "a {c} {s}", "the {c} {s}",
)
ORDERING = ("Which appeared first, the {a} or the {b}?", "Which came first: the {a} or the {b}?",
            "Did the {a} or the {b} appear first?")
N_ORDERING = 1500
# Held-out wordings (never trained on), for the retrieval check.
HELDOUT_CARD = "Which digit did the {c} card display?"
HELDOUT_SHAPE = "Can you tell me the color of the {s}?"


def text_bank() -> tuple[list[str], np.ndarray]:
    """(texts, positives [T, N_IDS] bool). Fixed: does not depend on the training seed."""
    texts, pos = [], []

    def add(text, ids):
        row = np.zeros(N_IDS, bool)
        row[list(ids)] = True
        texts.append(text)
        pos.append(row)

    for ci, c in enumerate(cap.COLORS):
        cards = [ci * 10 + d for d in range(10)]
        for t in CARD_QUESTIONS:
            add(t.format(c=c), cards)
        for d in range(10):
            for t in CARD_CAPTIONS:
                add(t.format(c=c, d=d), [ci * 10 + d])
    for si, s in enumerate(cap.SHAPES):
        for t in SHAPE_QUESTIONS:
            add(t.format(s=s), [80 + ci * 5 + si for ci in range(len(cap.COLORS))])
        for ci, c in enumerate(cap.COLORS):
            for t in PAIR_TEXTS:
                add(t.format(c=c, s=s), [80 + ci * 5 + si])
    # Ordering questions: objects are named "{color} card" or "{color} {shape}".
    objects = [[ci * 10 + d for d in range(10)] for ci in range(len(cap.COLORS))] + [[i] for i in range(80, N_IDS)]
    names = [_object_name(o[0]) for o in objects]
    rng = np.random.default_rng(12345)
    for _ in range(N_ORDERING):
        a, b = rng.choice(len(objects), 2, replace=False)
        t = ORDERING[int(rng.integers(len(ORDERING)))]
        add(t.format(a=names[a], b=names[b]), objects[a] + objects[b])
    return texts, np.stack(pos)


_TEXT_CACHE: dict[str, tuple[list[str], torch.Tensor, torch.Tensor]] = {}


def text_embeddings(minilm) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(texts, MiniLM embeddings [T, 384], positives [T, N_IDS] bool), computed once per process."""
    if minilm.identity not in _TEXT_CACHE:
        texts, pos = text_bank()
        _TEXT_CACHE[minilm.identity] = (texts, minilm.encode(texts), torch.from_numpy(pos))
    return _TEXT_CACHE[minilm.identity]


def identity_prototypes(device="cpu") -> dict[str, torch.Tensor]:
    """Head 'probabilities' of a perfectly classified frame of each identity: [N_IDS, classes]."""
    labels = np.array([identity_labels(i) for i in range(N_IDS)])
    out = {}
    for j, (head, n) in enumerate((("kind", 3), ("color", 8), ("shape", 5), ("digit", 10))):
        idx = torch.as_tensor(labels[:, j]).clamp_min(0)
        oh = F.one_hot(idx, n).float()
        oh[torch.as_tensor(labels[:, j]) < 0] = 0.0
        out[head] = oh.to(device)
    return out
