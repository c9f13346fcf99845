"""Tiny random-weight models of real `transformers` classes, for exactness checks and tests.
They share the embedded model's tokenizer (vocab 49152), so prompts tokenize the same way."""

from __future__ import annotations

import torch

from videokv.engine.backend import HFCausalBackend

ROPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 1024},
}


def tiny_config(arch: str = "llama", rope: str = "default"):
    from transformers import LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    return cls(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=49152, max_position_embeddings=4096,
               rope_parameters=dict(ROPES[rope]), tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
               pad_token_id=2, initializer_range=0.1)


def tiny_backend(tokenizer, arch: str = "llama", rope: str = "default", seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> HFCausalBackend:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, rope), dtype=dtype)
    return HFCausalBackend(model, tokenizer, vision=None, weights_id=f"tiny-{arch}-{rope}-{seed}")
