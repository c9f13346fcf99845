"""The adapter's text-refine stage: text-channel training data (deterministic, within the
token cap, answers copied from the lines), deterministic stage-2 training from an init, and
the shipped adapter answering from a chunk's text line."""

import json

import numpy as np
import pytest
import torch

from videokv.engine.batch import generate
from videokv.engine.config import EngineConfig
from videokv.engine.decode import GenerationConfig, assemble
from videokv.engine.prefill import ChunkInput, ChunkPrefiller, text_line
from videokv.models import lora
from videokv.models.tiny import tiny_backend
from videokv.toyworld.captions import FrameLabel, caption_ids, piece_ids
from videokv.toyworld.training.eval_lm import answer_ok
from videokv.toyworld.training.lm import LMTrainConfig, train
from videokv.toyworld.training.lm_data import QA, random_video
from videokv.toyworld.training.lm_text_data import text_questions, text_video


def _draw(seed: int, n_tokens, cap: int = 48):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(12):
        tv = text_video(random_video(rng, int(rng.integers(1, 20))), rng, n_tokens, cap)
        out.append((tv, text_questions(tv, rng)))
    return out


def test_text_data_is_deterministic_capped_and_answerable(tokenizer):
    def n_tokens(s):
        return len(tokenizer(s, add_special_tokens=False)["input_ids"])

    def drawn(draws):
        return [(tv.lines, [(q.question, q.answer, q.key) for q in qs]) for tv, qs in draws]

    a = _draw(7, n_tokens)
    assert drawn(a) == drawn(_draw(7, n_tokens))
    types = set()
    for cap, (tv, qs) in [(48, d) for d in a] + [(24, d) for d in _draw(8, n_tokens, cap=24)]:
        for i, line in enumerate(tv.lines):
            assert n_tokens(line) <= cap or len(tv.items[i]) == 1
        for q in qs:
            types.add(q.type)
            (i,) = q.chunks
            if q.type == "text_when":
                assert q.key == f"{tv.video.chunk_times[i]:.1f}s"
            else:
                assert q.key.lower() in tv.line(i).lower()         # the answer is copied from its chunk's line
            assert answer_ok(q, q.answer)
    assert types == {"text_who", "text_screen", "text_said", "text_when"}


def test_text_refine_is_deterministic_and_starts_from_init(tokenizer):
    cfg = LMTrainConfig(seed=2, steps=2, max_chunks=3, text_max_chunks=3, questions_per_video=2, rank=2,
                        warmup=1, text_share=1.0, lr=1e-3)
    be = tiny_backend(tokenizer, seed=0)
    lora.attach(be.model, rank=2, alpha=cfg.alpha, seed=9)
    for p in be.model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    init = lora.adapter_state(be.model)
    states = []
    for _ in range(2):
        be = tiny_backend(tokenizer, seed=0)
        assert np.isfinite(train(be.model, tokenizer, cfg, init=init)["final_loss"])
        states.append(lora.adapter_state(be.model))
    assert all(torch.equal(states[0][k], states[1][k]) for k in init)
    # it moved, but from the init (not from a fresh B = 0)
    assert all((states[0][k] - init[k]).abs().max() < 0.05 for k in init)
    assert any(not torch.equal(states[0][k], init[k]) for k in init)


def test_shipped_adapter_still_answers_toy_questions_next_to_text(embedded_backend):
    """A scoreboard line with a banner and speech next to a toy card in the same chunk: the
    card is still answered. Only for an adapter that went through the text stage."""
    from videokv.toyworld.loader import toyworld_dir

    if not json.loads((toyworld_dir() / "manifest.json").read_text()).get("lm_text_steps"):
        pytest.skip("the shipped adapter has no text-refine stage (manifest lm_text_steps)")
    be = embedded_backend
    cfg = EngineConfig(tokens_per_frame=8)
    ids = piece_ids(be.tokenizer)
    # Lines as ingest renders them (ingest/text/align.py): screen items joined by " | ", the
    # clock at its first and last value in the chunk.
    lines = [text_line({"ocr": "HOME 0 AWAY 0 | 06:10 | 06:25"}),
             text_line({"ocr": "HOME 1 AWAY 0 | 06:26 | GOAL: OKONKWO | 06:41",
                        "asr": "he curls it into the top corner"}),
             text_line({"ocr": "HOME 1 AWAY 0 | 06:42 | 06:57"})]
    frames = [FrameLabel()] * 16
    frames[3:6] = [FrameLabel("card", "blue", digit="4")] * 3
    chunks = [ChunkInput(i, be.embed_text(torch.tensor([t for lb in (frames if i == 1 else [FrameLabel()] * 16)
                                                        for t in caption_ids(lb, ids, 8)])),
                         i * 16, (i + 1) * 16, 16.0 * i, 16.0 * (i + 1), text=line)
              for i, line in enumerate(lines)]
    pf = ChunkPrefiller(be, cfg)
    prefix = pf.prefix()
    done = list(pf.run(prefix, chunks))
    cache = assemble(be, [prefix] + [d.H if i != 1 else d.L for i, d in enumerate(done)])
    # Names are answered from lines with the text stage (tests/query/test_text_e2e.py, bench
    # text), but not every unseen name is copied whole: OKONKWO came back "GOLOCKWO" here.
    # What must hold on a chunk with text: the toy question is still answered.
    for q, key in (("What digit was shown on the blue card?", "4"),):
        _, suffix = be.prompt_parts(cfg.system_prompt, q)
        got = "".join(generate(be, cache, suffix, GenerationConfig(max_new_tokens=16, stop=("<|im_end|>",))))
        assert answer_ok(QA("text_who", q, "", {1}, key), got), (q, got)


def test_write_grad_trains_how_event_chunks_are_written(tokenizer):
    # write_grad 1: the answer's loss also flows back through the prefill of the chunks that
    # show events (how they are written), not only through how the answer reads them.
    base = dict(seed=3, steps=2, max_chunks=4, questions_per_video=2, rank=2, warmup=1, busy_share=1.0)
    got: dict[float, list] = {}
    for wg in (0.0, 1.0, 1.0):
        be = tiny_backend(tokenizer, seed=0)
        assert np.isfinite(train(be.model, tokenizer, LMTrainConfig(write_grad=wg, **base))["final_loss"])
        got.setdefault(wg, []).append(lora.adapter_state(be.model))
    (a, b), (c,) = got[1.0], got[0.0]
    assert all(torch.equal(a[k], b[k]) for k in a)                    # deterministic
    assert any(not torch.allclose(a[k], c[k]) for k in a)             # another update than read-only
    # and with the run-time window the gradient also flows through the window's H-KV
    be = tiny_backend(tokenizer, seed=0)
    assert np.isfinite(train(be.model, tokenizer, LMTrainConfig(write_grad=1.0, window=2, **base))["final_loss"])
    w = lora.adapter_state(be.model)
    assert any(not torch.allclose(a[k], w[k]) for k in a)


def test_window_training_writes_chunks_as_the_run_time_prefill_does(tokenizer):
    # cfg.window 2: a chunk that shows something is prefilled on top of its two
    # predecessors' H-KV, exactly as ChunkPrefiller does at window 2; window 0 does not.
    from videokv.engine.config import PrefillConfig
    from videokv.toyworld.training.lm import CaptionLM, prefill_video
    from videokv.toyworld.training.lm_data import CaptionVideo

    be = tiny_backend(tokenizer, seed=1)
    colors = ["red", "blue", "green", "yellow", "purple"]
    frames = [FrameLabel("card", colors[i // 16], digit=str(i % 10)) for i in range(5 * 16)] + [FrameLabel()] * 32
    video = CaptionVideo(frames, [], 16, [16.0 * i for i in range(7)])
    ids = piece_ids(tokenizer)
    cfg = EngineConfig(tokens_per_frame=8, prefill=PrefillConfig(2, "H", None))
    pf = ChunkPrefiller(be, cfg)
    prefix = pf.prefix()
    inputs = [ChunkInput(i, be.embed_text(torch.tensor([t for lb in frames[i * 16:(i + 1) * 16]
                                                        for t in caption_ids(lb, ids, 8)])),
                         i * 16, (i + 1) * 16, t, t + 16.0) for i, t in enumerate(video.chunk_times)]
    run_time = list(pf.run(prefix, inputs, keep_full=True))
    with torch.no_grad():
        for window in (2, 0):
            lm = CaptionLM(be.model, tokenizer, LMTrainConfig(window=window))
            (pk, _), chunks, shared = prefill_video(lm, video, set())
            assert torch.allclose(pk, prefix.keys, atol=1e-5)
            assert shared is not None                      # the two blank chunks share their visual part
            for i in range(5):
                same = torch.allclose(chunks[i][0], run_time[i].full.keys, atol=1e-4) and \
                    torch.allclose(chunks[i][1], run_time[i].full.values, atol=1e-4)
                assert same == (window == 2 or i == 0), (window, i)
    # What a bi-level question then reads, as KVPager pages it (h_text "drop": unselected
    # chunks without their stamp rows): the same keys and values, in the same order.
    from videokv.engine.decode import assemble as run_time_assemble
    from videokv.query.hotset import h_rows
    from videokv.toyworld.training.lm import assemble

    levels = {0: "L", 1: "H", 2: "L", 3: "H", 4: "L"}
    with torch.no_grad():
        lm = CaptionLM(be.model, tokenizer, LMTrainConfig(window=2))
        video5 = CaptionVideo(frames[:80], [], 16, video.chunk_times[:5])
        prefix5, chunks5, _ = prefill_video(lm, video5, set())
        for drop in (True, False):
            cache, N = assemble(lm, prefix5, chunks5, levels, h_drop=frozenset(range(5)) if drop else frozenset())
            parts = [prefix]
            for i, lvl in levels.items():
                c = run_time[i].level(lvl)
                rows = h_rows(c.kinds, "drop" if drop else "keep") if lvl == "H" else None
                parts.append(c if rows is None else c.with_kv(c.keys[:, :, rows], c.values[:, :, rows], c.kinds[rows], "H"))
            want = run_time_assemble(be, parts)
            assert N == want.keys.shape[2]
            assert torch.allclose(torch.stack([layer.keys[0] for layer in cache.layers]), want.keys, atol=1e-4)
