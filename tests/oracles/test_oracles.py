"""CLIP, SigLIP and LanguageBind oracles on tiny random checkpoints of the real classes, saved
to disk and loaded back through our loaders."""

import importlib.util
import json

import pytest
import torch

from videokv.engine.chunkkv import ChunkKV, TokenKind
from videokv.models.checkpoints import ModelNotFoundError, UnsupportedModelError
from videokv.oracles import make_encoder_oracle
from videokv.oracles.encoders import CLIPOracle, SigLIPOracle, to_uint8_images
from videokv.runtime import Runtime
from videokv.settings import Settings

from .tiny_encoders import save_tiny_clip, save_tiny_languagebind, save_tiny_siglip

LB_MISSING = [m for m in ("languagebind", "einops", "peft") if importlib.util.find_spec(m) is None]
needs_languagebind = pytest.mark.skipif(
    bool(LB_MISSING), reason=f"{', '.join(LB_MISSING)} not installed: pip install 'videokv[languagebind]' "
                             "&& pip install --no-deps languagebind==0.1.0")
SAVERS = {"clip": save_tiny_clip, "siglip": save_tiny_siglip, "languagebind": save_tiny_languagebind}
KINDS = ["clip", "siglip", pytest.param("languagebind", marks=needs_languagebind)]


def frames(n: int, seed: int, size=(84, 56)) -> torch.Tensor:
    """n frames [n, 3, H, W] on the uint8 grid, as ingest decodes them."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size[1], size[0]), generator=g).float() / 255


def chunk(index: int = 0) -> ChunkKV:
    z = torch.zeros(1, 1, 1, 4)
    return ChunkKV(z, z, torch.tensor([TokenKind.VISUAL], dtype=torch.uint8), index)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """kind -> (folder, the in-memory model that was saved), built on first use."""
    cache = {}

    def get(kind):
        if kind not in cache:
            folder = tmp_path_factory.mktemp(kind)
            cache[kind] = folder, SAVERS[kind](folder)
        return cache[kind]
    return get


@pytest.mark.parametrize("kind", KINDS)
def test_oracle_embeds_frames_and_text_from_a_checkpoint_on_disk(saved, kind):
    folder, _ = saved(kind)
    # selected the way the service selects it: VIDEOKV_ORACLE=kind:PATH
    oracle = Runtime(Settings(oracle=f"{kind}:{folder}", device="cpu")).oracle
    assert oracle.name == kind and oracle.identity.startswith(f"{kind}-")
    a, b = frames(10, 0), frames(10, 1)
    va = oracle.chunk_vector(chunk(), frames=a)
    assert va.shape == (oracle.dim,) and va.dtype == torch.float32
    assert abs(float(va.norm()) - 1) < 1e-5
    assert torch.equal(va, oracle.chunk_vector(chunk(), frames=a.clone()))                   # deterministic
    assert not torch.allclose(va, oracle.chunk_vector(chunk(), frames=b), atol=1e-4)         # sees the frames
    qa = oracle.question_vector("What digit was shown on the red card?")
    assert qa.shape == (oracle.dim,) and torch.equal(qa, oracle.question_vector("What digit was shown on the red card?"))
    assert not torch.allclose(qa, oracle.question_vector("How many stars moved left?"), atol=1e-4)
    texts = oracle.embed_texts(["a red card", "a blue star", "the green circle"])
    assert texts.shape == (3, oracle.dim)
    with pytest.raises(ValueError, match="frames"):
        oracle.chunk_vector(chunk())                       # frames are required


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_frame_pool_oracles_reproduce_the_saved_model(saved, kind):
    """The loaded oracle's frame and text embeddings are the saved model's own
    get_image_features / get_text_features on the checkpoint's processor and tokenizer."""
    folder, model = saved(kind)
    oracle = make_encoder_oracle(kind, str(folder))
    x = frames(3, 2)
    pixels = oracle.processor(images=to_uint8_images(x), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (3, 3, 32, 32)
    with torch.no_grad():
        want = model.get_image_features(pixel_values=pixels)
        want = want if torch.is_tensor(want) else want.pooler_output
    got = oracle.embed_frames(x)
    assert torch.allclose(got, want, atol=1e-5)
    pooled = torch.nn.functional.normalize(want, dim=-1).mean(0)
    assert torch.allclose(oracle.chunk_vector(chunk(), frames=x), pooled / pooled.norm(), atol=1e-5)
    if kind == "siglip":   # questions padded to the text tower's length, as SigLIP was trained
        enc = oracle.tokenizer(["red card"], padding="max_length", max_length=16, truncation=True, return_tensors="pt")
        assert enc["input_ids"].shape == (1, 16)


def test_oracle_kinds_check_the_checkpoint(saved, tmp_path):
    clip_folder, _ = saved("clip")
    with pytest.raises(UnsupportedModelError, match="not a siglip checkpoint"):
        SigLIPOracle(path=str(clip_folder))
    with pytest.raises(ModelNotFoundError, match="VIDEOKV_ORACLE='.*no-clip-here'"):
        CLIPOracle(path=str(tmp_path / "no-clip-here"))
    with pytest.raises(ValueError, match="VIDEOKV_ORACLE"):
        Settings(oracle="clip")            # a kind without its PATH


@needs_languagebind
def test_languagebind_loader_under_transformers_5(saved, tmp_path):
    """The tiny checkpoint's config.json has add_time_attn off, as a config may; the loader
    turns it on, loads every weight (no random init left: outputs equal the saved model's)
    and the text tower's position ids are real positions."""
    from videokv.oracles.languagebind import LanguageBindOracle, video_clip

    folder, model = saved("languagebind")
    assert json.loads((folder / "config.json").read_text())["vision_config"]["add_time_attn"] is False
    oracle = LanguageBindOracle(path=str(folder))
    cfg = oracle.model.config
    assert cfg.vision_config.add_time_attn and cfg._attn_implementation == "eager"
    assert cfg.vision_config._attn_implementation == "eager" and cfg.text_config._attn_implementation == "eager"
    pos = oracle.model.text_model.embeddings.position_ids
    assert torch.equal(pos[0], torch.arange(pos.shape[-1]))
    x = frames(16, 3)
    clip = video_clip(x, oracle.num_frames, oracle.size)
    assert clip.shape == (3, 8, 32, 32)
    enc = oracle.tokenizer(["what moved"], max_length=77, padding="max_length", truncation=True, return_tensors="pt")
    assert enc["input_ids"].shape == (1, 77) and enc["input_ids"][0, 0] == 512     # <|startoftext|>
    with torch.no_grad():
        assert torch.allclose(oracle.embed_chunk(x), model.get_image_features(pixel_values=clip[None])[0], atol=1e-5)
        assert torch.allclose(oracle.embed_texts(["what moved"]),
                              model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]),
                              atol=1e-5)

    # LoRA keys as older peft saved them (q_proj.weight, lora_A.weight) load the same weights
    from safetensors.torch import load_file, save_file
    old = tmp_path / "old-peft"
    old.mkdir()
    for f in folder.iterdir():
        if f.suffix != ".safetensors":
            (old / f.name).write_bytes(f.read_bytes())
    state = load_file(folder / "model.safetensors")
    renamed = {k.replace(".base_layer.", ".").replace(".default.", "."): v for k, v in state.items()}
    assert renamed.keys() != state.keys()
    save_file(renamed, old / "model.safetensors", metadata={"format": "pt"})
    again = LanguageBindOracle(path=str(old))
    assert torch.allclose(again.embed_chunk(x), oracle.embed_chunk(x), atol=1e-6)


def test_video_clip_is_deterministic_8_frames_224px_without_flip():
    from videokv.oracles.languagebind import video_clip

    x = torch.zeros(16, 3, 240, 320)
    x[..., :160] = 1.0                          # left half white: a flip would move it right
    clip = video_clip(x)
    assert clip.shape == (3, 8, 224, 224)
    assert torch.equal(clip, video_clip(x))
    assert clip[..., :100].mean() > clip[..., 124:].mean()
