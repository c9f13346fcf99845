"""What a question's context holds: a `Layout` of stored parts in temporal order, planned
within a context budget (docs/long-video.md says why these policies and how they were chosen).

Levels: L (the chunks a question selects), H (every other chunk, by default), G (the gist of
a group of `group` consecutive chunks: their H-KVs pooled once more, stored with the group's
first chunk), or left out. Bi-level (L for the selected, H for all the rest) is used whenever
it fits the budget; past it:

  pyramid  L for the selected chunks (best first), H for the rest of their groups, G for
           every other group (most relevant first), then the next-best groups opened chunk
           by chunk at H (at most `open_groups` groups open in all). Every moment of the video
           keeps at least its group's gist until the budget runs out; then the least relevant
           groups are left out.
  drop     L for the selected chunks, H for as many of the other chunks as fit, most
           relevant first; the rest are left out.

Every step is taken only if the context still fits, so a layout never exceeds the budget,
however small (down to the prompt prefix alone).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

POLICIES = ("pyramid", "drop")


@dataclass(frozen=True)
class ChunkCosts:
    """Context positions per part as it would be paged (tokens, for text LLMs): prefix; L, H
    [n] per chunk; G {group's first chunk: cost} (empty: no gist level stored); group: chunks
    per gist group."""

    prefix: int
    L: np.ndarray
    H: np.ndarray
    G: dict[int, int]
    group: int

    @property
    def n(self) -> int:
        return len(self.L)


@dataclass
class Layout:
    """parts: (index, level) in temporal order, level "L" / "H" / "G" (index: the group's
    first chunk); tokens: the positions they take with the prefix; policy: how it was made
    ("bilevel", "dense", "sparse", "pyramid", "drop"); group: chunks per gist group."""

    parts: list[tuple[int, str]]
    tokens: int
    policy: str
    group: int = 0
    n_chunks: int = 0
    _of: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, levels: dict[int, str], group: int = 0) -> "Layout":
        """A layout from {chunk (or group's first chunk): level} (tokens not counted): for
        tests and ablations."""
        n = max((i + (group if lvl == "G" else 1) for i, lvl in levels.items()), default=0)
        return cls(sorted(levels.items()), 0, "given", group, n)

    def level_of(self, chunk: int) -> str:
        """The level chunk is paged at: "L", "H", "G" (in its group's gist) or "-" (left out)."""
        if not self._of:
            for i, lvl in self.parts:
                span = range(i, min(i + self.group, self.n_chunks)) if lvl == "G" else (i,)
                self._of.update({c: lvl for c in span})
        return self._of.get(chunk, "-")

    def levels(self) -> dict[str, int]:
        """How many chunks at each level: {"L", "H", "G", "dropped"}."""
        got = Counter(self.level_of(i) for i in range(self.n_chunks))
        return {"L": got["L"], "H": got["H"], "G": got["G"], "dropped": got["-"]}


def uniform(costs: ChunkCosts, level: str, policy: str) -> Layout:
    """Every chunk at one level (dense: L, sparse: H)."""
    c = costs.L if level == "L" else costs.H
    return Layout([(i, level) for i in range(costs.n)], costs.prefix + int(c.sum()), policy, costs.group, costs.n)


def bilevel(costs: ChunkCosts, selected: set[int]) -> Layout:
    parts = [(i, "L" if i in selected else "H") for i in range(costs.n)]
    tokens = costs.prefix + sum(int(costs.L[i] if lvl == "L" else costs.H[i]) for i, lvl in parts)
    return Layout(parts, tokens, "bilevel", costs.group, costs.n)


class _Fill:
    """The budget as it is spent: chunk levels, gist groups, positions used."""

    def __init__(self, costs: ChunkCosts, budget: int):
        self.costs, self.budget = costs, budget
        self.used = costs.prefix
        self.chunk: dict[int, str] = {}
        self.gist: set[int] = set()

    def take(self, cost: int) -> bool:
        if self.used + cost > self.budget:
            return False
        self.used += cost
        return True

    def layout(self, policy: str) -> Layout:
        items = [(i, lvl) for i, lvl in self.chunk.items()] + [(g, "G") for g in self.gist]
        return Layout(sorted(items), self.used, policy, self.costs.group, self.costs.n)


def plan(costs: ChunkCosts, ranked: list[int], scores: np.ndarray, budget: int, policy: str = "pyramid",
         open_groups: int = 8) -> Layout:
    """The layout for a question. ranked: the selected chunks, best first (top-k, then
    first/last); scores [n]: every chunk's relevance (higher: more relevant); budget: most
    positions the context may take, prefix included."""
    if policy not in POLICIES:
        raise ValueError(f"budget policy must be one of {', '.join(POLICIES)}; got {policy!r}")
    full = bilevel(costs, set(ranked))
    if full.tokens <= budget:
        return full
    if policy == "pyramid" and costs.G and costs.group > 0:
        return _pyramid(costs, ranked, scores, budget, open_groups)
    return _drop(costs, ranked, scores, budget)


def _by_relevance(scores: np.ndarray) -> list[int]:
    """Chunk indices, most relevant first (ties: earlier first)."""
    return [int(i) for i in np.lexsort((np.arange(len(scores)), -np.asarray(scores, np.float64)))]


def _drop(costs: ChunkCosts, ranked: list[int], scores: np.ndarray, budget: int) -> Layout:
    f = _Fill(costs, budget)
    for i in ranked:
        if f.take(int(costs.L[i])):
            f.chunk[i] = "L"
    for i in _by_relevance(scores):
        if i not in f.chunk and f.take(int(costs.H[i])):
            f.chunk[i] = "H"
    return f.layout("drop")


def _pyramid(costs: ChunkCosts, ranked: list[int], scores: np.ndarray, budget: int, open_groups: int) -> Layout:
    f, g = _Fill(costs, budget), costs.group
    members = lambda grp: range(grp, min(grp + g, costs.n))          # noqa: E731
    opened: list[int] = []
    for i in ranked:                                     # 1. L for the selected, best first
        if f.take(int(costs.L[i])):
            f.chunk[i] = "L"
            if i // g * g not in opened:
                opened.append(i // g * g)
    for grp in opened:                                   # 2. H for the rest of their groups
        for i in members(grp):
            if i not in f.chunk and f.take(int(costs.H[i])):
                f.chunk[i] = "H"
    best = np.full(len(range(0, costs.n, g)), -np.inf)
    for i, s in enumerate(np.asarray(scores, np.float64)):
        best[i // g] = max(best[i // g], s)
    groups = [int(k) * g for k in np.lexsort((np.arange(len(best)), -best))]
    for grp in groups:                                   # 3. the gist of every other group
        if grp not in opened and grp in costs.G and f.take(int(costs.G[grp])):
            f.gist.add(grp)
    for grp in groups:                                   # 4. the next-best groups chunk by chunk
        if len(opened) >= open_groups:
            break
        if grp in opened or grp not in f.gist:
            continue
        extra = sum(int(costs.H[i]) for i in members(grp)) - int(costs.G[grp])
        if f.take(extra):
            f.gist.discard(grp)
            opened.append(grp)
            f.chunk.update({i: "H" for i in members(grp)})
    return f.layout("pyramid")


def chunk_costs(store, backend, video_id: str, h_text: str = "drop") -> ChunkCosts:
    """A READY video's ChunkCosts from its chunk records: what each part takes as paged (H
    without its timestamp rows under h_text "drop", unless the chunk has a text line; the
    backend's `extent_of`: tokens for text LLMs, M-RoPE extent for Qwen-VL)."""
    rec = store.get_video(video_id)
    records = {r.index: r for r in store.chunk_records(video_id)}
    group = int((rec.extra or {}).get("gist_chunks", 0))

    def cost(r, level: str, visual_only: bool = False) -> int:
        tokens = r.tokens[level]
        visual = r.visual.get(level, tokens)      # records from before `visual`: all of it
        text = 0 if visual_only else tokens - visual
        return backend.extent_of(r.index, visual + text, text, r.frame_end - r.frame_start, r.t_end - r.t_start)

    L = np.array([cost(records[i], "L") for i in range(rec.chunks_total)], dtype=np.int64)
    H = np.array([cost(records[i], "H", h_text == "drop" and not records[i].text_line)
                  for i in range(rec.chunks_total)], dtype=np.int64)
    G = {}
    for i in range(0, rec.chunks_total, group or rec.chunks_total + 1):
        r = records[i]
        if "G" in r.tokens:
            last = records[min(i + group, rec.chunks_total) - 1]
            G[i] = backend.extent_of(i, r.tokens["G"], 0, last.frame_end - r.frame_start, last.t_end - r.t_start)
    return ChunkCosts(cost(records[-1], "full"), L, H, G if len(G) == len(range(0, rec.chunks_total, group or 1))
                      else {}, group)
