"""Qwen2-VL / Qwen2.5-VL backends on tiny random checkpoints of the real classes, saved to disk
and loaded back through `load_backend` (the loader real weights go through)."""

import inspect
import json

import pytest
import torch

from videokv.engine.prefill import timestamp_text
from videokv.engine.rope import MRotary
from videokv.models.loading import ModelSpec, UnsupportedModelError, load_backend
from videokv.models.qwen_vl import QwenVLBackend, mrope_layout
from videokv.models.selftest import TOLERANCE, exactness_vl, vl_chunks, vl_reference_inputs
from videokv.models.tiny_vl import KINDS, tiny_qwen_vl_backend


@pytest.fixture(scope="module", params=KINDS)
def vl(request, tmp_path_factory, tokenizer):
    return tiny_qwen_vl_backend(tmp_path_factory.mktemp(request.param), request.param, tokenizer)


def test_loader_selects_the_backend_from_the_checkpoint_config(vl):
    assert isinstance(vl, QwenVLBackend)
    assert vl.name == {"qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl"}[vl.model_type]
    assert isinstance(vl.rotary, MRotary) and vl.vision.input_size == (84, 56)
    # the model's own vision path: 4 frames -> 2 temporal patches x (56/28) x (84/28) merged tokens
    tokens = vl.vision_tokens(torch.rand(4, 3, 56, 84))
    assert tokens.shape == (2 * 2 * 3, vl.hidden_size)


def test_chunked_prefill_matches_one_full_forward_over_the_video(vl):
    r = exactness_vl(vl, n_chunks=4, frames=4)
    assert r["max_abs_logit_diff"] <= TOLERANCE, r
    assert r["visual_tokens"] == 4 * 12
    # M-RoPE: a chunk occupies its (t, h, w) extent, fewer positions than it has tokens
    assert r["next_position"] < r["context_tokens"]


@pytest.mark.parametrize("break_it", ["store_per_token", "extent_off_by_one"])
def test_exactness_vl_catches_a_wrong_position_rule(vl, monkeypatch, break_it):
    if break_it == "store_per_token":   # the 1-D rule: un-rotate each token by its own position
        monkeypatch.setattr(vl, "store_positions", lambda local, base: base + torch.arange(local.shape[-1]))
    else:
        orig = vl.extent
        monkeypatch.setattr(vl, "extent", lambda part: orig(part) + (part.index >= 0))
    assert exactness_vl(vl, n_chunks=3, frames=4)["max_abs_logit_diff"] > 100 * TOLERANCE


def test_uniform_mrope_shift_is_a_1d_rotation(vl):
    rot = vl.rotary
    k = torch.randn(2, 2, 12, vl.head_dim)
    local = torch.stack([torch.arange(12) // 6, torch.arange(12) % 6 // 3, torch.arange(12) % 3])
    shifted = rot.rotate(k, local + 40)
    assert torch.allclose(shifted, rot.rotate(rot.rotate(k, local), torch.full((12,), 40)), atol=1e-5)
    # un-rotating the shift alone leaves the in-chunk (t, h, w) rotation in place
    assert torch.allclose(rot.unrotate(shifted, torch.full((12,), 40)), rot.rotate(k, local), atol=1e-5)
    # and the three components really are used: (t, h, w) differs from the 1-D position t
    assert not torch.allclose(rot.rotate(k, local), rot.rotate(k, local[0]), atol=1e-3)


def test_layout_matches_transformers_rope_index(vl, tokenizer, tmp_path):
    """Our whole-sequence M-RoPE positions equal the installed model's own get_rope_index.
    Frames per chunk are chosen so a video's temporal span stays within its spatial span:
    there every transformers version agrees with the released models' rule (transformers 5
    starts the text after a video at max(h, w) rather than one past the largest component)."""
    be = vl if vl.model_type == "qwen2_vl" else \
        tiny_qwen_vl_backend(tmp_path / "fps4", vl.model_type, tokenizer, sample_fps=4.0)  # 1 position/patch
    chunks, videos = vl_chunks(be, n_chunks=3, frames=4, seconds=1.0)       # sampled at 4 fps
    before, suffix = be.prompt_parts("Be brief.", "What moved?")
    ref = vl_reference_inputs(be, chunks, videos, before, suffix)
    ids = ref["input_ids"][None]
    kw = {"video_grid_thw": ref["video_grid_thw"]}
    params = inspect.signature(be.model.model.get_rope_index).parameters
    if "mm_token_type_ids" in params:
        kw["mm_token_type_ids"] = (ids == be.video_token_id).int() * 2
    if "second_per_grid_ts" in params:
        kw["second_per_grid_ts"] = torch.full((len(chunks),), 2 / 4.0)
    theirs, _ = be.model.model.get_rope_index(ids, **kw)
    assert torch.equal(theirs[:, 0], mrope_layout(ref["segments"]))


def test_temporal_positions_follow_the_real_timestamps(tokenizer, tmp_path):
    """Qwen2.5-VL spaces temporal patches by seconds: a chunk whose 4 frames span 16 s (a
    frame cap sampling at 0.25 fps) gets the temporal positions the native model gives a
    video with that many seconds per grid, not the configured 1 fps's."""
    be = tiny_qwen_vl_backend(tmp_path / "q25", "qwen2_5_vl", tokenizer, sample_fps=1.0)
    for seconds in (4.0, 16.0):
        chunks, videos = vl_chunks(be, n_chunks=1, frames=4, seconds=seconds)
        ref = vl_reference_inputs(be, chunks, videos, "", "")
        ids = ref["input_ids"][None]
        kw = {"video_grid_thw": ref["video_grid_thw"]}
        params = inspect.signature(be.model.model.get_rope_index).parameters
        if "mm_token_type_ids" in params:
            kw["mm_token_type_ids"] = (ids == be.video_token_id).int() * 2
        tp = be.vision.patcher.temporal_patch_size
        kw["second_per_grid_ts"] = torch.tensor([tp * seconds / 4])
        theirs, _ = be.model.model.get_rope_index(ids, **kw)
        video = (ids[0] == be.video_token_id).nonzero().flatten()
        _, _, local = be.chunk_tokens(timestamp_text(0.0), chunks[0].visual, 4, seconds)
        ours = local[:, 1:-1][:, -len(video):]                  # the video tokens' in-chunk positions
        native = theirs[:, 0, video] - theirs[:, 0, video[:1]]
        assert torch.equal(ours - ours[:, :1], native), seconds
    assert be.interval(4, 16.0) == 4 * be.interval(4, 4.0) == 4 * be.time_interval


def test_ingest_and_ask_with_a_qwen_checkpoint_and_refusal_by_another_backend(tmp_path, tokenizer, monkeypatch):
    """`videokv ingest --model PATH` picks the Qwen2-VL backend from the checkpoint's config and
    stores bi-level KVs with CLIP chunk embeddings (VIDEOKV_ORACLE=clip:PATH); `ask --model
    PATH` retrieves with CLIP and answers from the stored KVs; a Qwen2.5-VL engine refuses that
    video (fingerprint) and cannot read its blobs."""
    from tests.oracles.tiny_encoders import save_tiny_clip
    from videokv.cli import main
    from videokv.kvstore.errors import FingerprintMismatchError
    from videokv.models.tiny_vl import save_tiny_qwen_vl
    from videokv.query.engine import QueryError
    from videokv.runtime import Runtime
    from videokv.settings import get_settings
    from videokv.toyworld.synth import render_video

    save_tiny_clip(tmp_path / "clip")
    q2 = save_tiny_qwen_vl(tmp_path / "q2", "qwen2_vl", tokenizer)
    q25 = save_tiny_qwen_vl(tmp_path / "q25", "qwen2_5_vl", tokenizer)
    video = tmp_path / "clip.mp4"
    render_video(video, 12 / 60, 1, seed=3)
    for k, v in {"FRAME_SIZE": "84x56", "CHUNK_FRAMES": "4", "ORACLE": f"clip:{tmp_path / 'clip'}", "DEVICE": "cpu"}.items():
        monkeypatch.setenv(f"VIDEOKV_{k}", v)
    get_settings.cache_clear()
    assert main(["ingest", "--model", str(q2), "--quiet", "--json", str(video)]) == 0

    rt = Runtime(get_settings().model_copy(update={"model": str(q2)}))
    vid = rt.store.list_videos()[0].video_id
    rec = rt.store.get_video(vid)
    assert rec.fingerprint == rt.config.fingerprint() and rt.config.backend == "qwen2-vl"
    assert rt.config.tokens_per_frame == 3          # 2x3 merged tokens per 2 frames
    assert rt.oracle.name == "clip" and rec.chunks_total == 3
    hits = rt.store.search(rt.oracle.identity, rt.oracle.question_vector("What moved?").numpy(), 3, video_ids=[vid])
    assert sorted(h.chunk for h in hits) == [0, 1, 2]
    ans = rt.queries.ask(vid, "What moved?", top_k=1, max_new_tokens=3)
    assert ans.video_prefill_runs == 0 and ans.context_tokens > 0
    assert any(e.score != 0 for e in ans.evidence)
    assert main(["ask", "--model", str(q2), "--json", vid, "What moved?", "--max-new-tokens", "2"]) == 0

    other = Runtime(get_settings().model_copy(update={"model": str(q25)}))
    assert other.config.fingerprint() != rec.fingerprint
    with pytest.raises(QueryError, match="fingerprint"):
        other.queries.ask(vid, "What moved?", max_new_tokens=2)
    with pytest.raises(FingerprintMismatchError):
        other.store.read_chunk(vid, 0, "L", fingerprint=other.config.fingerprint())


def test_unsupported_architecture_lists_the_supported_ones(tmp_path, capsys):
    from transformers import GPT2Config

    from videokv.cli import main

    GPT2Config(n_layer=1, n_embd=32, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError) as e:
        load_backend(ModelSpec(model=str(tmp_path), models_dir=tmp_path / "models"))
    msg = str(e.value)
    assert "'gpt2'" in msg and "GPT2LMHeadModel" in msg
    for supported in ("llama", "mistral", "qwen2 ", "qwen2_vl", "qwen2_5_vl"):
        assert supported in msg
    assert main(["ingest", "--model", str(tmp_path), str(tmp_path / "x.mp4")]) == 2
    assert "qwen2_5_vl" in capsys.readouterr().err


def test_missing_model_path_says_what_to_pass(tmp_path):
    bad = tmp_path / "no-such-qwen"
    with pytest.raises(FileNotFoundError, match="Pass a local model folder"):
        load_backend(ModelSpec(model=str(bad), models_dir=tmp_path))
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))   # weights not copied
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_backend(ModelSpec(model=str(bad), models_dir=tmp_path))


def test_patcher_matches_the_models_own_image_processor(vl):
    """For a still video (both frames of a temporal patch equal) the video patching is the
    image processor's (it repeats an image over the temporal patch): same patch order,
    normalisation and grid as transformers' Qwen2-VL processor code."""
    proc_mod = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    img = torch.randint(0, 256, (3, 56, 84), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    proc = proc_mod.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14,
                                             temporal_patch_size=2, merge_size=2)
    want = proc(images=[img.permute(1, 2, 0).numpy()], return_tensors="pt")
    got, grid = vl.vision.patcher(img.float().div(255)[None].expand(2, -1, -1, -1))
    assert list(want["image_grid_thw"][0]) == list(grid) == [1, 4, 6]
    assert torch.allclose(got, want["pixel_values"].float(), atol=1e-5)
    # and the order is not trivially symmetric: one frame's patches moved breaks it
    assert not torch.allclose(vl.vision.patcher(img.float().div(255).flip(-1)[None].expand(2, -1, -1, -1))[0],
                              got, atol=1e-2)


def test_attention_policy_scores_in_the_chunks_own_mrope_frame(vl):
    """The attention-received policy rotates queries at their (t, h, w) and the stored keys
    by nothing more: every query's causal attention sums to 1 per head."""
    from videokv.engine.config import CompressionConfig, EngineConfig
    from videokv.engine.prefill import ChunkPrefiller, attention_received

    pre = ChunkPrefiller(vl, EngineConfig(h_kv=CompressionConfig("attention", 4)))
    chunks, _ = vl_chunks(vl, n_chunks=2, frames=4)
    prefix = pre.prefix()
    done = list(pre.run(prefix, chunks, keep_full=True))
    assert done[1].H.tokens == done[1].full.text_mask.sum() + 3        # 12 visual tokens / 4
    embeds, kinds, local = pre.chunk_embeds(chunks[1])
    out = vl.forward(embeds, positions=local, logits=False, queries=True)
    keys = vl.rotary.unrotate(out.keys, vl.store_positions(local, 0))
    att = attention_received(vl, out.queries, keys, local)
    T = len(kinds)
    assert torch.allclose(att.sum(-1), torch.full_like(att.sum(-1), T * vl.num_q_heads / vl.num_kv_heads), atol=1e-4)
    # it equals the model's own attention probabilities (eager) for this chunk alone
    text_cfg = vl.model.config.get_text_config()
    was, text_cfg._attn_implementation = text_cfg._attn_implementation, "eager"
    try:
        own = vl.decoder(inputs_embeds=embeds[None], position_ids=local[:, None, :], output_attentions=True)
    finally:
        text_cfg._attn_implementation = was
    probs = torch.stack([a[0] for a in own.attentions])                     # [L, Hq, T, T]
    L, Hq = probs.shape[:2]
    want = probs.sum(2).view(L, vl.num_kv_heads, Hq // vl.num_kv_heads, T).sum(2)
    assert torch.allclose(att, want, atol=1e-4)
