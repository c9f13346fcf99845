"""The toy-world caption layout: what the trained vision tower says about one frame.

The embedded default's tower does not invent a private code: it writes each frame as a
few LLM token embeddings, `[color, noun, value, end]`, each slot repeated
`tokens_per_frame // 4` times. Repetition is deliberate: L-KV pools adjacent pairs
(2x avgpool), and a pair of identical tokens pools to almost exactly itself, so a chunk
loaded at L still reads as clearly as the dense one. H-KV pools a whole frame into one
token, which keeps "something red was here" and loses the digit: that is the point of
loading the chunks that matter at L.

    card:   " red"  " card"  "7"     " ."
    shape:  " red"  " star"  " red"  " ."
    none:   " -"    " -"     " -"    " -"

A shape's value slot repeats its colour, so both needle questions read the token right
after the noun they name ("...red card -> 7", "...star -> red"). With the colour only
before the noun (layout 1), the adapter learnt "digit after the card" but kept answering
attribute questions with a neighbouring event's colour when events shared a chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

COLORS = ("red", "green", "blue", "yellow", "white", "black", "orange", "purple")
SHAPES = ("circle", "square", "triangle", "star", "cross")
DIGITS = tuple(str(d) for d in range(10))
KINDS = ("none", "card", "shape")
SLOTS = 4
LAYOUT = 2            # in the tower's identity: KVs written with another layout are not reused
BLANK, END = " -", " ."


@dataclass(frozen=True)
class FrameLabel:
    """What one frame shows: its salient object (the event), or nothing."""

    kind: str = "none"            # "none" | "card" | "shape"
    color: str | None = None
    shape: str | None = None      # shapes only
    digit: str | None = None      # cards only

    def words(self) -> tuple[str, str, str, str]:
        """The four caption slots as text pieces (each one LLM token)."""
        if self.kind == "card":
            return (" " + self.color, " card", self.digit, END)
        if self.kind == "shape":
            return (" " + self.color, " " + self.shape, " " + self.color, END)
        return (BLANK,) * SLOTS


def caption_vocabulary() -> tuple[str, ...]:
    """Every text piece a caption slot can hold, in a fixed order (tower output classes)."""
    return tuple(dict.fromkeys([BLANK, END, " card", *(" " + c for c in COLORS),
                                *(" " + s for s in SHAPES), *DIGITS]))


def piece_ids(tokenizer) -> dict[str, int]:
    """caption piece -> its single token id; raises if the tokenizer splits one."""
    out = {}
    for piece in caption_vocabulary():
        ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"caption piece {piece!r} is {len(ids)} tokens for this tokenizer; "
                             "the toy-world caption layout needs single tokens")
        out[piece] = ids[0]
    return out


def repeat_factor(tokens_per_frame: int) -> int:
    if tokens_per_frame % SLOTS or tokens_per_frame < SLOTS:
        raise ValueError(f"toy-world captions need tokens_per_frame a multiple of {SLOTS}, got {tokens_per_frame}")
    return tokens_per_frame // SLOTS


def caption_ids(label: FrameLabel, ids: dict[str, int], tokens_per_frame: int) -> list[int]:
    """label -> tokens_per_frame token ids (each slot repeated)."""
    r = repeat_factor(tokens_per_frame)
    return [ids[w] for w in label.words() for _ in range(r)]
