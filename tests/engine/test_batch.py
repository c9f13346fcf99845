"""Batched decoding (engine/batch.py) against the model's own forward: several questions on
caches of different lengths, decoded together, give each the logits a one-question forward
with the transformers cache gives, for every supported architecture (1-D RoPE with default,
llama3 and yarn scaling; M-RoPE, where a question starts at a position below its cache's
token count)."""

import pytest
import torch

from videokv.engine import batch
from videokv.engine.batch import generate
from videokv.engine.decode import GenerationConfig, assemble
from videokv.engine.prefill import ChunkPrefiller
from videokv.models.selftest import EXACT, random_chunks, vl_chunks
from videokv.models.tiny import tiny_backend
from videokv.models.tiny_vl import tiny_qwen_vl_backend

QUESTIONS = ("What digit was shown on the red card?", "Where did the blue ball go?",
             "How many times did the green square move left, and when?")


def caches(be, vl: bool):
    """Three assembled caches of 1, 2 and 3 chunks."""
    pre = ChunkPrefiller(be, EXACT)
    prefix = pre.prefix()
    out = []
    for n in (1, 2, 3):
        chunks = vl_chunks(be, n, 4, seed=n)[0] if vl else random_chunks(be, n, 8 + 5 * n, seed=n)
        out.append(assemble(be, [prefix] + [p.L for p in pre.run(prefix, chunks)]))
    return out


@torch.no_grad()
def reference(be, cache, suffix: str, forced: list[int]) -> torch.Tensor:
    """Logits [1 + len(forced), vocab]: after the suffix, then after each forced token, by the
    backend's transformers forward (its own cache and rotary)."""
    ids = be.tokenize(suffix)
    pos = cache.next_pos + len(ids)
    out = be.forward(be.embed_text(ids), be.make_cache(cache.keys, cache.values),
                     positions=torch.arange(cache.next_pos, pos), logits="last", kv=False)
    rows = [out.logits[-1]]
    for tok in forced:
        out = be.forward(be.embed_text(torch.tensor([tok])), out.cache, positions=torch.tensor([pos]),
                         logits="last", kv=False)
        rows.append(out.logits[-1])
        pos += 1
    return torch.stack(rows)


def batched_logits(be, cs, suffixes, forced: list[list[int]]) -> list[torch.Tensor]:
    """The same, all questions at once through batch._forward (the first step prefills the
    suffixes of all of them in one forward)."""
    seqs = [batch.Sequence(batch.SeqCache(c.keys, c.values, c.tokens + 64), c.next_pos, GenerationConfig(), None)
            for c in cs]
    rows = [[] for _ in cs]
    lg = batch._forward(be, seqs, [be.tokenize(s) for s in suffixes])
    for step in range(len(forced[0]) + 1):
        for b in range(len(cs)):
            rows[b].append(lg[b])
        if step < len(forced[0]):
            lg = batch._forward(be, seqs, [torch.tensor([f[step]]) for f in forced])
    return [torch.stack(r) for r in rows]


ARCHS = [("llama", "default"), ("llama", "llama3"), ("qwen2", "default"), ("qwen2", "yarn"),
         ("qwen2_vl", None), ("qwen2_5_vl", None)]


@pytest.mark.parametrize("arch,rope", ARCHS)
def test_batched_steps_match_the_models_own_forward(arch, rope, tokenizer, tmp_path):
    vl = rope is None
    be = tiny_qwen_vl_backend(tmp_path, arch, tokenizer) if vl else tiny_backend(tokenizer, arch, rope)
    cs = caches(be, vl)
    if vl:
        assert all(c.next_pos < c.tokens for c in cs)       # M-RoPE: fewer positions than tokens
    suffixes = [be.prompt_parts(EXACT.system_prompt, q)[1] for q in QUESTIONS]
    g = torch.Generator().manual_seed(0)
    forced = [torch.randint(0, be.config.vocab_size, (5,), generator=g).tolist() for _ in cs]
    got = batched_logits(be, cs, suffixes, forced)
    for c, s, f, g_ in zip(cs, suffixes, forced, got):
        ref = reference(be, c, s, f)
        assert g_.shape == ref.shape
        assert (g_ - ref).abs().max() <= 1e-4 * max(1.0, float(ref.abs().max())), arch


@torch.no_grad()
def test_a_wrong_position_is_caught(tokenizer, tmp_path):
    """The check above can fail: one position off in one sequence of the batch."""
    be = tiny_backend(tokenizer, "llama", "default")
    cs = caches(be, False)
    suffixes = [be.prompt_parts(EXACT.system_prompt, q)[1] for q in QUESTIONS]
    seqs = [batch.Sequence(batch.SeqCache(c.keys, c.values, c.tokens + 64), c.next_pos + (b == 1),
                           GenerationConfig(), None) for b, c in enumerate(cs)]
    lg = batch._forward(be, seqs, [be.tokenize(s) for s in suffixes])
    diffs = [float((lg[b] - reference(be, c, s, [])[0]).abs().max()) for b, (c, s) in enumerate(zip(cs, suffixes))]
    assert diffs[0] <= 1e-4 and diffs[2] <= 1e-4 and diffs[1] > 1e-3


def test_greedy_answers_are_the_same_alone_and_together(embedded_backend):
    """The embedded model: three questions decoded as one batch (joining at different steps,
    leaving when done) give the text each gives alone."""
    be = embedded_backend
    pre = ChunkPrefiller(be, EXACT)
    cache = assemble(be, [pre.prefix()])
    qs = ["What is the capital of France? Answer in one word.", "Name three primary colors.",
          "Count from one to five in words."]
    suffixes = [be.prompt_parts(EXACT.system_prompt, q)[1] for q in qs]
    gens = [GenerationConfig(max_new_tokens=n, stop=("<|im_end|>",)) for n in (6, 20, 14)]
    alone = ["".join(generate(be, cache, s, g)) for s, g in zip(suffixes, gens)]
    seqs = batch.start_many(be, [(cache, suffixes[0], gens[0], 0)])
    texts = {0: "".join(seqs[0].pieces)}
    seqs[0].pieces.clear()
    batch.step(be, seqs)
    seqs += batch.start_many(be, [(cache, s, g, i + 1) for i, (s, g) in enumerate(zip(suffixes[1:], gens[1:]))])
    while seqs:
        for s in seqs:
            texts[s.tag] = texts.get(s.tag, "") + "".join(s.pieces)
            s.pieces.clear()
        seqs = [s for s in seqs if not s.done]
        batch.step(be, seqs)
    assert [texts[i] for i in range(3)] == alone
    assert "paris" in alone[0].lower() and len(set(alone)) == 3
