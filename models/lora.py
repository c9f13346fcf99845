"""Low-rank adapters on the frozen LLM's attention projections.

The base weights never change: training updates only A [r, in] and B [out, r] of each
adapted Linear, and loading merges W + (alpha / r) * B @ A into a copy of the weights once,
so inference runs the plain model at full speed and the KV maths is untouched.
"""

from __future__ import annotations

import torch
from torch import nn

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class LoRALinear(nn.Module):
    """base(x) + (alpha / r) * (x @ A^T) @ B^T. B starts at zero: training starts at the base model."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        a = torch.empty(rank, base.in_features)
        nn.init.kaiming_uniform_(a, a=5 ** 0.5, generator=generator)
        self.A = nn.Parameter(a)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.t()) @ self.B.t() * self.scale

    def delta(self) -> torch.Tensor:
        """[out, in] weight update this adapter stands for."""
        return (self.B @ self.A) * self.scale


def attach(model: nn.Module, rank: int = 8, alpha: float = 16.0, seed: int = 0,
           targets: tuple[str, ...] = TARGETS) -> list[nn.Parameter]:
    """Freeze `model` and wrap `targets` of every decoder layer; returns the trainable params."""
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    params = []
    for layer in model.model.layers:
        attn = layer.self_attn
        for name in targets:
            wrapped = LoRALinear(getattr(attn, name), rank, alpha, g)
            setattr(attn, name, wrapped)
            params += [wrapped.A, wrapped.B]
    return params


def detach(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unwrap every LoRALinear (restoring the frozen base) and return the deltas by weight name."""
    deltas = {}
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        for name, mod in list(attn.named_children()):
            if isinstance(mod, LoRALinear):
                deltas[f"model.layers.{i}.self_attn.{name}.weight"] = mod.delta().detach().clone()
                setattr(attn, name, mod.base)
    return deltas


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The A and B factors by name (what ships: r * (in + out) numbers per matrix)."""
    out = {}
    for i, layer in enumerate(model.model.layers):
        for name, mod in layer.self_attn.named_children():
            if isinstance(mod, LoRALinear):
                out[f"model.layers.{i}.self_attn.{name}.lora_A"] = mod.A.detach().clone()
                out[f"model.layers.{i}.self_attn.{name}.lora_B"] = mod.B.detach().clone()
    return out


@torch.no_grad()
def merge(model: nn.Module, state: dict[str, torch.Tensor], alpha: float) -> int:
    """Add (alpha / r) * B @ A into the named base weights in place; returns matrices merged."""
    params = dict(model.named_parameters())
    n = 0
    for key, a in state.items():
        if not key.endswith(".lora_A"):
            continue
        stem = key[: -len(".lora_A")]
        b = state[stem + ".lora_B"]
        w = params.get(stem + ".weight")
        if w is None:
            raise KeyError(f"adapter names {stem}.weight, which this model does not have")
        w += (b.float() @ a.float() * (alpha / a.shape[0])).to(w.dtype)
        n += 1
    return n
