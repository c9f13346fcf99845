"""The LLM adapter: LoRA maths, caption-space training data, deterministic training, and the
shipped toy-world weights (hash-verified, merged into the embedded model)."""

import json
import re
import shutil

import numpy as np
import pytest
import torch

from videokv.models import lora
from videokv.models.tiny import tiny_backend
from videokv.toyworld.captions import FrameLabel, caption_ids, piece_ids
from videokv.toyworld.training.eval_lm import answer_ok
from videokv.toyworld.training.lm import LMTrainConfig, held_out_loss, train
from videokv.toyworld.training.lm_data import busy_video, counting_video, questions, random_video, sample_questions


def test_merged_weights_equal_the_adapted_model(tokenizer):
    be = tiny_backend(tokenizer, seed=3)
    model = be.model
    lora.attach(model, rank=4, alpha=8.0, seed=1)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)    # B starts at zero; make the adapter do something
    x = torch.randn(1, 12, model.config.hidden_size) * 0.1
    with torch.no_grad():
        adapted = model.model(inputs_embeds=x).last_hidden_state
    state = lora.adapter_state(model)
    lora.detach(model)
    with torch.no_grad():
        base = model.model(inputs_embeds=x).last_hidden_state
        assert (adapted - base).abs().max() > 1e-3          # the adapter changed something
        assert lora.merge(model, state, alpha=8.0) == 4 * model.config.num_hidden_layers
        merged = model.model(inputs_embeds=x).last_hidden_state
    assert torch.allclose(merged, adapted, atol=1e-5)


def test_caption_videos_and_questions_agree():
    rng = np.random.default_rng(0)
    for _ in range(30):
        v = random_video(rng, n_chunks=int(rng.integers(1, 9)))
        for a, b in zip(v.events, v.events[1:]):
            assert a.end <= b.start                              # never overlapping
        for qa in questions(v, rng):
            assert qa.key and qa.key.lower() in qa.answer.lower()      # the answer says what grading wants
            shown = {i for e in v.events for i in v.chunks_of(e)}
            assert qa.chunks and qa.chunks <= shown
            if qa.type == "retrieval":
                color = qa.answer.split()[1]
                card = next(e for e in v.events if e.label.kind == "card" and e.label.color == color)
                assert card.label.digit == qa.key


def test_clustered_videos_share_chunks_and_counting_asks_repeats():
    rng = np.random.default_rng(1)
    shared = 0
    for _ in range(40):
        v = random_video(rng, n_chunks=int(rng.integers(2, 40)), clustered=True)
        for a, b in zip(v.events, v.events[1:]):
            assert a.end < b.start                               # at least one blank frame between
        per_chunk = [sum(1 for e in v.events if i in v.chunks_of(e)) for i in range(v.n_chunks)]
        shared += max(per_chunk) > 1
        qas = sample_questions(questions(v, rng), 4, rng)
        assert len({q.type for q in qas}) == min(4, len({q.type for q in questions(v, rng)}))
    assert shared >= 20                                          # clusters put several events in one chunk


def test_busy_videos_put_four_or_more_events_back_to_back():
    rng = np.random.default_rng(2)
    for _ in range(40):
        v = busy_video(rng, n_chunks=int(rng.integers(1, 30)))
        assert v.n_chunks >= 4 and 5 <= len(v.events) <= 7
        run = best = 1
        for a, b in zip(v.events, v.events[1:]):
            assert a.end < b.start
            run = run + 1 if b.start - a.end <= 3 else 1
            best = max(best, run)
        assert best >= 4, [(e.start, e.end) for e in v.events]


def test_counting_videos_ask_about_a_pair_seen_two_or_three_times_in_different_chunks():
    rng = np.random.default_rng(3)
    spread = 0
    for _ in range(60):
        v = counting_video(rng, n_chunks=int(rng.integers(1, 60)))
        qas = sample_questions(questions(v, rng), 4, rng, counting_first=True)
        q = qas[0]
        assert q.type == "counting" and q.key in ("2", "3")
        color, shape = q.answer.split()[1:3]                     # "The red circle appeared 2 times."
        seen = [e for e in v.events if (e.label.color, e.label.shape) == (color, shape)]
        assert len(seen) == int(q.key)                           # the answer is the truth
        spread += len({min(v.chunks_of(e)) for e in seen}) == len(seen)
    assert spread >= 45          # mostly in different chunks: the count is a sum over chunks


def test_listed_counts_name_each_appearance_and_grade_as_counts():
    rng = np.random.default_rng(4)
    for _ in range(20):
        v = counting_video(rng, n_chunks=int(rng.integers(2, 30)))
        for q in (q for q in questions(v, rng, list_counts=True) if q.type == "counting"):
            color, shape = q.answer.split()[1:3]
            starts = [v.chunk_times[e.start // v.chunk_frames] for e in v.events
                      if (e.label.color, e.label.shape) == (color, shape)]
            assert [float(t) for t in re.findall(r"(\d+\.\d)s", q.answer)] == starts
            assert answer_ok(q, q.answer)
            wrong = q.answer.replace(f" {q.key} time", f" {int(q.key) % 3 + 1} time")
            assert not answer_ok(q, wrong), wrong                 # the listed times do not count


def test_caption_layout_repeats_slots(tokenizer):
    ids = piece_ids(tokenizer)
    got = caption_ids(FrameLabel("card", "red", digit="7"), ids, 8)
    assert got == [ids[" red"]] * 2 + [ids[" card"]] * 2 + [ids["7"]] * 2 + [ids[" ."]] * 2
    with pytest.raises(ValueError, match="multiple of 4"):
        caption_ids(FrameLabel(), ids, 6)


def test_training_is_deterministic_and_learns_to_answer(tokenizer):
    """Two runs give the same adapter, and training lowers the answer loss on videos it never
    saw (held-out seed): 12 steps on a tiny random model take it from ~11.4 to ~10."""
    cfg = LMTrainConfig(seed=5, steps=12, max_chunks=2, questions_per_video=2, rank=2, warmup=1, lr=1e-2)
    states, losses = [], []
    for _ in range(2):
        be = tiny_backend(tokenizer, seed=0)
        before = held_out_loss(be.model, tokenizer, cfg, seed=1234)
        metrics = train(be.model, tokenizer, cfg)
        assert np.isfinite(metrics["final_loss"])
        losses.append((before, held_out_loss(be.model, tokenizer, cfg, seed=1234)))
        states.append(lora.adapter_state(be.model))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    before, after = losses[0]
    assert after < before - 0.8, losses


def test_shipped_weights_are_verified(tmp_path, embedded_backend):
    from videokv.models.checkpoints import ModelIntegrityError
    from videokv.toyworld.loader import load_toyworld, toyworld_dir

    manifest = json.loads((toyworld_dir() / "manifest.json").read_text())
    assert set(manifest["files"]) == {"tower.safetensors", "adapter.safetensors"}
    total = sum((toyworld_dir() / n).stat().st_size for n in manifest["files"])
    assert total <= 20 * 2 ** 20
    bad = tmp_path / "toyworld"
    shutil.copytree(toyworld_dir(), bad)
    with open(bad / "adapter.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_toyworld(embedded_backend.model, embedded_backend.tokenizer, 8, folder=bad)


def test_embedded_default_loads_the_trained_parts(embedded_backend):
    from videokv.toyworld.tower import ToyWorldTower

    assert isinstance(embedded_backend.vision, ToyWorldTower)
    assert "+tw" in embedded_backend.weights_id                  # the adapter is part of the identity
