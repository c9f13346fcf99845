"""Training the LLM adapter (LoRA on attention) to answer toy-world questions from captions.

The frozen SmolLM2-135M can copy a word from a short text, but it cannot reliably bind
"the red card" to the digit shown on it among other cards (measured: about half right on a
five-line text, near zero over a 64-frame caption stream). A rank-8 adapter on q/k/v/o
teaches it that, trained through the same path a query takes at run time:

    prefix KV -> each chunk prefilled on top of it (batched) -> de-rotated K,V
    -> avg-pooled to L (2x) or H (16x) per chunk, as a query would load them
    -> re-rotated to contiguous positions -> question + answer tokens on top -> CE loss

so the adapter learns to read pooled KVs, not just clean text. Layouts alternate between
dense (every chunk L) and bi-level (the chunks that show the answer, the first and the
last, and fillers up to top-k at L; the rest H). Deterministic for a seed.

Stage 2, "text refine" (`train(..., init=stage-1 state)` with `text_share` > 0): a share of
the videos get a text channel (engine/lm_text_data.py: on-screen text, speech, subtitles
after each chunk's timestamp, dense at both levels, as `chunk_stamp` writes them at run
time), and half of their questions ask about it; the other half, and every question on the
other videos, are toy-world questions, so the stage-1 skills keep being trained.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from videokv.engine.backend import HFCausalBackend
from videokv.engine.chunkkv import ChunkKV, TokenKind
from videokv.engine.compress import make_policy
from videokv.engine.config import CompressionConfig
from videokv.engine.prefill import chunk_stamp
from videokv.models import lora
from videokv.toyworld.captions import caption_ids, piece_ids

from .lm_data import CaptionVideo, busy_video, counting_video, questions, random_video, sample_questions
from .lm_text_data import text_questions, text_video


@dataclass
class LMTrainConfig:
    seed: int = 0
    steps: int = 800
    lr: float = 1e-3
    warmup: int = 30
    rank: int = 8
    alpha: float = 16.0
    tokens_per_frame: int = 8
    chunk_frames: int = 16
    max_chunks: int = 256         # long videos are cheap: blank chunks share one prefill
    dense_max_chunks: int = 64     # dense layouts only up to here (the LLM's context, as at run time)
    long_share: float = 0.5        # share of videos longer than 16 chunks (log-uniform 17..max_chunks)
    top_k: int = 3
    l_ratio: int = 2
    h_ratio: int = 16
    questions_per_video: int = 4
    bilevel_share: float = 0.5
    write_grad: float = 0.0        # share of steps whose gradient also flows into how chunks are written
    window: int = 0                # chunks prefilled on top of this many predecessors' H-KV (run time: 4)
    h_text: str = "keep"           # "drop": read H chunks without a text line minus their stamp rows (as KVPager)
    system_prompt: str = "You are a helpful assistant that answers questions about a video."
    # stage 2 (text refine); text_share 0 leaves stage 1's data stream exactly as it was
    text_share: float = 0.0        # share of videos with a text channel
    text_question_share: float = 0.5   # share of a text video's questions about its text
    text_cap: int = 48             # tokens per text line at most
    text_max_chunks: int = 32      # text videos up to here (every chunk has its own stamp to prefill)
    busy_share: float = 0.0        # share of busy-scene videos (lm_data.busy_video); 0 draws as before
    list_counts: bool = False      # counting answers list each appearance's time, then count (lm_data.questions)
    counting_share: float = 0.0    # share of videos asking how often a pair appeared, answer 2-3 (lm_data.counting_video)


class CaptionLM:
    """The model (wrapped as the run-time backend, for its prompt template, tokenizer and
    rotary maths) and the compression policies; shared by training steps."""

    def __init__(self, model, tokenizer, cfg: LMTrainConfig):
        self.backend = HFCausalBackend(model, tokenizer)
        self.model, self.cfg = model, cfg
        self.rotary = self.backend.rotary
        self.ids = piece_ids(tokenizer)
        self.embed = model.get_input_embeddings()
        self.before, _ = self.backend.prompt_parts(cfg.system_prompt, "")
        self.policies = {"L": make_policy(CompressionConfig("avgpool", cfg.l_ratio)),
                         "H": make_policy(CompressionConfig("avgpool", cfg.h_ratio))}

    def tokens(self, text: str) -> torch.Tensor:
        return self.backend.tokenize(text)

    def suffix(self, question: str) -> str:
        return self.backend.prompt_parts(self.cfg.system_prompt, question)[1]

    def n_tokens(self, text: str) -> int:
        return len(self.tokens(text))

    def chunk_ids(self, video: CaptionVideo, i: int, line: str = "") -> tuple[torch.Tensor, int]:
        """Token ids of chunk i (timestamp and text line, then captions) and how many are text."""
        ts = self.tokens(chunk_stamp(video.chunk_times[i], line))
        f = video.chunk_frames
        vis = [t for lb in video.frames[i * f:(i + 1) * f] for t in caption_ids(lb, self.ids, self.cfg.tokens_per_frame)]
        return torch.cat([ts, torch.tensor(vis, dtype=torch.long)]), len(ts)

    def run(self, embeds: torch.Tensor, cache: DynamicCache, start: int):
        """embeds [B, T, h] at positions start.. on top of cache -> (hidden [B, T, h], cache)."""
        B, T, _ = embeds.shape
        pos = torch.arange(start, start + T)[None].expand(B, -1)
        out = self.model.model(inputs_embeds=embeds, past_key_values=cache, position_ids=pos,
                               cache_position=pos[0], use_cache=True)
        return out.last_hidden_state, out.past_key_values


def _cache(keys: torch.Tensor, values: torch.Tensor, config) -> DynamicCache:
    """keys/values [L, B, H, T, D] (keys rotated) -> DynamicCache."""
    c = DynamicCache(config=config)
    # unbind, not keys[i]: backward of L selects would write L full-size zero tensors
    for i, (k, v) in enumerate(zip(keys.unbind(0), values.unbind(0))):
        c.update(k, v, i)
    return c


def prefill_video(lm: CaptionLM, video: CaptionVideo, grad_chunks: set[int], lines: list[str] | None = None):
    """Prefix K/V and every chunk's full K/V (pre-RoPE, [L, H, T, D]); grad only where asked.
    lines: each chunk's text channel line (stage 2), or None.

    Chunks that show nothing are all alike but for their timestamp: one is prefilled in
    full and the others reuse its visual K/V with their own timestamp's K/V, which makes
    long training videos cheap (at run time every chunk is prefilled for real). Such chunks
    come back holding only their timestamp's K/V (n_text == tokens); `blank` is the shared
    visual part (keys, values), or None.

    With cfg.window W > 0, every chunk that shows something is prefilled as ChunkPrefiller
    does it at run time: in index order, on top of the prefix and the H-KV of the W chunks
    before it, all at contiguous positions (so its K/V equal the run-time ones when its
    predecessors show something too). Blank chunks stay prefilled on the prompt alone (the
    shared part): what little a window changes in a chunk that shows nothing is not what
    the answers depend on, and sharing is what keeps 256-chunk videos affordable."""
    m = lm.model
    pid = lm.tokens(lm.before)
    P = len(pid)
    with torch.no_grad():   # the system prompt's K/V: current adapter, but a constant within the step
        _, cache = lm.run(lm.embed(pid)[None], DynamicCache(config=m.config), 0)
    pk = torch.stack([layer.keys[0] for layer in cache.layers])          # rotated, [L, H, P, D]
    pv = torch.stack([layer.values[0] for layer in cache.layers])
    f = video.chunk_frames
    blank = [i for i in range(video.n_chunks) if all(lb.kind == "none" for lb in video.frames[i * f:(i + 1) * f])]
    full = [i for i in range(video.n_chunks) if i not in blank[1:]]
    ids = {i: lm.chunk_ids(video, i, lines[i] if lines else "") for i in range(video.n_chunks)}
    chunks: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def batch(members, take, needs_grad, pad=False):
        """Forward the members in batches of equal length (pad: all in one batch, right-
        padded: causal attention keeps the pads out of every real token's K/V; used for the
        blank chunks' stamps, whose text lines differ in length)."""
        groups: dict[int, list[int]] = {}
        for i in members:
            groups.setdefault(0 if pad else len(take(i)), []).append(i)
        for group in groups.values():
            seqs = [take(i) for i in group]
            T = max(len(x) for x in seqs)
            with torch.set_grad_enabled(needs_grad and torch.is_grad_enabled()):
                B = len(group)
                emb = lm.embed(torch.stack([F.pad(x, (0, T - len(x))) for x in seqs]))
                c = _cache(pk[:, None].expand(-1, B, -1, -1, -1), pv[:, None].expand(-1, B, -1, -1, -1), m.config)
                _, c = lm.run(emb, c, P)
                ks = torch.stack([layer.keys[:, :, P:] for layer in c.layers])     # [L, B, H, T, D]
                vs = torch.stack([layer.values[:, :, P:] for layer in c.layers])
                ks = lm.rotary.unrotate(ks, torch.arange(P, P + T))
                for b, i in enumerate(group):
                    yield i, ks[:, b, :, :len(seqs[b])], vs[:, b, :, :len(seqs[b])]

    W = lm.cfg.window
    blank_set = set(blank)
    windowed = [i for i in full if i not in blank_set] if W > 0 else []     # in index order
    batched = [i for i in full if i in blank_set] if W > 0 else full
    for needs_grad in (True, False):
        members = [i for i in batched if (i in grad_chunks) == needs_grad]
        for i, k, v in batch(members, lambda i: ids[i][0], needs_grad):
            chunks[i] = (k, v, ids[i][1])
    shared = None
    if len(blank) > 1:
        rk, rv, rn = chunks[blank[0]]
        shared = (rk[:, :, rn:], rv[:, :, rn:])
        for i, k, v in batch(blank[1:], lambda i: ids[i][0][:ids[i][1]], False, pad=lines is not None):
            chunks[i] = (k, v, ids[i][1])
    prefix = (lm.rotary.unrotate(pk, torch.arange(P)), pv)
    h_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    pooled: dict = {}
    for i in windowed:       # a chunk's window is written before it
        for j in range(max(0, i - W), i):
            if j not in h_kv:
                h_kv[j] = _level_kv(lm, chunks[j], shared, "H", pooled)
        ctx = [prefix] + [h_kv[j] for j in range(max(0, i - W), i)]
        k_ctx, v_ctx = torch.cat([c[0] for c in ctx], 2), torch.cat([c[1] for c in ctx], 2)
        N, x = k_ctx.shape[2], ids[i][0]
        with torch.set_grad_enabled(i in grad_chunks and torch.is_grad_enabled()):
            c = _cache(lm.rotary.rotate(k_ctx, torch.arange(N))[:, None], v_ctx[:, None], m.config)
            _, c = lm.run(lm.embed(x)[None], c, N)
            k = torch.stack([layer.keys[0, :, N:] for layer in c.layers])          # [L, H, T, D]
            v = torch.stack([layer.values[0, :, N:] for layer in c.layers])
            chunks[i] = (lm.rotary.unrotate(k, torch.arange(N, N + len(x))), v, ids[i][1])
    return prefix, chunks, shared


def _level_kv(lm: CaptionLM, chunk, shared, level: str, pooled: dict,
              drop_text: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk (an entry of prefill_video's chunks) compressed to `level`: pre-RoPE keys,
    values [L, H, T', D], text first (Policy.compress's order). A blank chunk is its stamp,
    then the shared visual part compressed (once per level: `pooled` keeps it). drop_text:
    without the text rows (how KVPager pages an unselected chunk that has no text line)."""
    k, v, n_text = chunk
    if n_text == k.shape[2] and shared is not None:
        if level not in pooled:
            vis = torch.full((shared[0].shape[2],), TokenKind.VISUAL, dtype=torch.uint8)
            c = lm.policies[level].compress(ChunkKV(*shared, vis, index=-1), level)
            pooled[level] = (c.keys, c.values)
        if drop_text:
            return pooled[level]
        return torch.cat([k, pooled[level][0]], 2), torch.cat([v, pooled[level][1]], 2)
    kinds = torch.full((k.shape[2],), TokenKind.VISUAL, dtype=torch.uint8)
    kinds[:n_text] = TokenKind.TEXT
    c = lm.policies[level].compress(ChunkKV(k, v, kinds, index=0), level)
    skip = n_text if drop_text else 0
    return c.keys[:, :, skip:], c.values[:, :, skip:]


def layout(n: int, relevant: set[int], top_k: int, rng: np.random.Generator, bilevel: bool) -> dict[int, str]:
    """Which level each chunk is loaded at, as the QueryEngine would (first/last always L)."""
    if not bilevel:
        return {i: "L" for i in range(n)}
    chosen = set(sorted(relevant)[:top_k])
    others = [i for i in range(n) if i not in chosen]
    while len(chosen) < min(top_k, n) and others:
        chosen.add(others.pop(int(rng.integers(len(others)))))
    chosen |= {0, n - 1}
    return {i: "L" if i in chosen else "H" for i in range(n)}


def assemble(lm: CaptionLM, prefix, chunks, levels: dict[int, str], shared=None, memo: dict | None = None,
             h_drop: frozenset[int] = frozenset()):
    """The context a query loads: prefix, then every chunk compressed to its level, as a
    fresh cache (N tokens). memo (one dict per video) reuses the K/V of a layout seen before.
    h_drop: chunks read without their text rows when at H (fixed per video, as memo is)."""
    key = tuple(levels[i] for i in sorted(chunks))
    if memo is not None and key in memo:
        k, v = memo[key]
        return _cache(k[:, None], v[:, None], lm.model.config), k.shape[2]
    pooled: dict = {}
    parts = [prefix] + [_level_kv(lm, chunks[i], shared, levels[i], pooled, levels[i] == "H" and i in h_drop)
                        for i in sorted(chunks)]
    ks, vs = [p[0] for p in parts], [p[1] for p in parts]
    k, v = torch.cat(ks, 2), torch.cat(vs, 2)
    N = k.shape[2]
    k = lm.rotary.rotate(k, torch.arange(N))
    if memo is not None:
        memo[key] = (k, v)
    return _cache(k[:, None], v[:, None], lm.model.config), N


def answer_loss(lm: CaptionLM, cache: DynamicCache, N: int, question: str, answer: str) -> torch.Tensor:
    q = lm.tokens(lm.suffix(question))
    a = lm.tokens(answer + "<|im_end|>")
    ids = torch.cat([q, a])
    hidden, _ = lm.run(lm.embed(ids)[None], cache, N)
    h = hidden[0, len(q) - 1:-1]                                          # predicts the answer tokens
    return F.cross_entropy(lm.model.lm_head(h).float(), a)


def video_chunks(cfg: LMTrainConfig, rng: np.random.Generator, max_chunks: int | None = None) -> int:
    """Length of a training video in chunks: 1..16 uniform, or (long_share) log-uniform above."""
    top = max_chunks or cfg.max_chunks
    short = min(16, top)
    if top <= short or rng.random() >= cfg.long_share:
        return int(rng.integers(1, short + 1))
    return int(round(math.exp(rng.uniform(math.log(short + 1), math.log(top)))))


def step_data(lm: CaptionLM, cfg: LMTrainConfig, rng: np.random.Generator):
    """One training video: (video, its text lines or None, questions). With text_share 0
    this draws exactly what stage 1 drew."""
    has_text = cfg.text_share > 0 and rng.random() < cfg.text_share
    n = video_chunks(cfg, rng, cfg.text_max_chunks if has_text else None)
    count = cfg.counting_share > 0 and rng.random() < cfg.counting_share
    busy = not count and cfg.busy_share > 0 and rng.random() < cfg.busy_share
    video = (counting_video if count else busy_video if busy else random_video)(rng, n, cfg.chunk_frames)
    toy = questions(video, rng, cfg.list_counts)
    if not has_text:
        return video, None, sample_questions(toy, cfg.questions_per_video, rng, counting_first=count)
    tv = text_video(video, rng, lm.n_tokens, cfg.text_cap)
    q = cfg.questions_per_video
    text = sample_questions(text_questions(tv, rng), q, rng)
    toy = sample_questions(toy, q, rng, counting_first=count)
    k = min(len(text), max(round(q * cfg.text_question_share), q - len(toy)))
    return video, tv.lines, text[:k] + toy[:q - k]


@torch.no_grad()
def held_out_loss(model, tokenizer, cfg: LMTrainConfig, seed: int, videos: int = 4) -> float:
    """Mean answer loss over `videos` training-like videos drawn with `seed` (never a training
    seed), every question on all-L layouts: how well the model (with or without an adapter
    attached) answers from the KV a query loads."""
    lm = CaptionLM(model, tokenizer, cfg)
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    losses = []
    for _ in range(videos):
        video, lines, qas = step_data(lm, cfg, rng)
        prefix, chunks, shared = prefill_video(lm, video, set(), lines)
        for qa in qas:
            cache, N = assemble(lm, prefix, chunks, layout(video.n_chunks, qa.chunks, cfg.top_k, rng, False), shared)
            losses.append(float(answer_loss(lm, cache, N, qa.question, qa.answer)))
    model.train(was_training)
    return float(np.mean(losses))


def load_adapter(model, state: dict[str, torch.Tensor]) -> None:
    """Copy A/B factors (lora.adapter_state names) into the attached adapters."""
    got = dict(model.named_parameters())
    for key, t in state.items():
        with torch.no_grad():
            got[key.replace(".lora_A", ".A").replace(".lora_B", ".B")].copy_(t)


def train(model, tokenizer, cfg: LMTrainConfig, progress=None, init: dict[str, torch.Tensor] | None = None) -> dict:
    """Attach LoRA (from `init`, an adapter_state, when given: stage 2), train cfg.steps
    steps, leave the adapters attached; returns metrics."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    params = lora.attach(model, cfg.rank, cfg.alpha, cfg.seed)
    if init is not None:
        load_adapter(model, init)
    lm = CaptionLM(model, tokenizer, cfg)
    model.train()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup)
                                              * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    t0, losses = time.perf_counter(), []
    for step in range(cfg.steps):
        video, lines, qas = step_data(lm, cfg, rng)
        n = video.n_chunks
        grad = set().union(*(video.chunks_of(e) for e in video.events)) if rng.random() < cfg.write_grad else set()
        prefix, chunks, shared = prefill_video(lm, video, grad, lines)
        loss, memo = 0.0, {}
        h_drop = frozenset(i for i in range(n) if cfg.h_text == "drop" and not (lines and lines[i]))
        for qa in qas:
            bilevel = n > cfg.dense_max_chunks or rng.random() < cfg.bilevel_share
            levels = layout(n, qa.chunks, cfg.top_k, rng, bilevel=bilevel)
            cache, N = assemble(lm, prefix, chunks, levels, shared, memo, h_drop)
            loss = loss + answer_loss(lm, cache, N, qa.question, qa.answer) / len(qas)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress:
            progress(step + 1, cfg.steps, float(np.mean(losses[-20:])), time.perf_counter() - t0)
    model.eval()
    return {"steps": cfg.steps, "init": init is not None, "final_loss": float(np.mean(losses[-50:])),
            "seconds": time.perf_counter() - t0,
            "config": asdict(cfg)}
