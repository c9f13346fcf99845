"""The trained toy-world vision tower: a small CNN that names a frame's salient object.

A frame shows at most one event (an object 20-60% of the frame height); smaller shapes
are distractors and are ignored. Heads: kind (none/card/shape), color (8), shape (5),
digit (10). The tower's tokens are the LLM's own input embeddings of the caption layout
of `captions.py` ([color, noun, value, end], each slot repeated tokens_per_frame // 4
times), so the LLM reads the caption as if it were text:

    tower = ToyWorldTower.load(path, caption_piece_embeddings(tokenizer, embed_table))
    tokens = tower(frames)                  # [N, tokens_per_frame, hidden]
    tower.labels(frames)                    # [FrameLabel(kind="card", color="red", digit="7"), ...]
    tower.retrieval_vectors(frames)         # [N, 384]: MiniLM space, scaled by P(event)

`hard=True` (default) emits exactly the token embeddings of the most likely caption;
`hard=False` a probability mixture of them per slot.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from videokv.engine.vision import VisionTower

from . import WEIGHTS_DIR
from . import captions as cap

ARCH = "toyworld-cnn-v2"
RETRIEVAL_DIM = 384
# conv (in, out, stride); 3x3, BatchNorm, ReLU. 128x96 in -> 8x6 feature map.
LAYERS = ((3, 24, 2), (24, 48, 2), (48, 48, 1), (48, 80, 2), (80, 80, 1), (80, 128, 2), (128, 128, 1))
FEATURES = 128
HEAD_SIZES = {"kind": len(cap.KINDS), "color": len(cap.COLORS), "shape": len(cap.SHAPES), "digit": len(cap.DIGITS)}
N_PROBS = sum(HEAD_SIZES.values())

_VOCAB = cap.caption_vocabulary()
_IDX = {p: i for i, p in enumerate(_VOCAB)}
_I_BLANK, _I_END, _I_CARD = _IDX[cap.BLANK], _IDX[cap.END], _IDX[" card"]
_I_COLORS = [_IDX[" " + c] for c in cap.COLORS]
_I_SHAPES = [_IDX[" " + s] for s in cap.SHAPES]
_I_DIGITS = [_IDX[d] for d in cap.DIGITS]


def default_weights() -> Path:
    """The shipped tower; made by `python -m videokv.toyworld.training.tower --seed 0 --steps 4500`."""
    return WEIGHTS_DIR / "tower.safetensors"


def to_tensor(frames) -> torch.Tensor:
    """uint8 frames [N, H, W, 3] (numpy) -> float [N, 3, H, W] in [0, 1], as ingest feeds towers."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)


def caption_piece_embeddings(tokenizer, embedding) -> torch.Tensor:
    """[V_cap, hidden]: the LLM input embeddings of `caption_vocabulary()` pieces, in order.
    embedding: the model's input embedding module (`model.get_input_embeddings()`) or its weight."""
    ids = cap.piece_ids(tokenizer)
    weight = embedding.weight if hasattr(embedding, "weight") else embedding
    return weight.detach()[torch.tensor([ids[p] for p in _VOCAB], device=weight.device)].clone()


def _canonical_header(data: bytes) -> bytes:
    """safetensors writes its __metadata__ map in a per-process random order (a Rust
    HashMap), so identical weights could hash differently. Sort it: same weights, same
    bytes, same sha256. The header keeps its length (only the key order changes)."""
    import json
    import struct

    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    raw = json.dumps(header, separators=(",", ":")).encode()
    if len(raw) > n:
        raise RuntimeError("safetensors header grew when canonicalised")
    return data[:8] + raw + b" " * (n - len(raw)) + data[8 + n:]


def _block(i: int, o: int, s: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class ToyWorldTower(VisionTower):
    """See the module docstring. piece_embeddings may be None for training and for
    labels()/retrieval_vectors(); forward() needs it."""

    frames_independent = True

    def __init__(self, piece_embeddings: torch.Tensor | None = None, tokens_per_frame: int = 8,
                 input_size=(128, 96)):
        super().__init__()
        self.repeat = cap.repeat_factor(tokens_per_frame)
        self.tokens_per_frame = tokens_per_frame
        self.input_size = tuple(input_size)
        if piece_embeddings is not None:
            if piece_embeddings.shape[0] != len(_VOCAB):
                raise ValueError(f"piece_embeddings has {piece_embeddings.shape[0]} rows; the caption "
                                 f"vocabulary has {len(_VOCAB)} pieces")
            self.hidden_size = int(piece_embeddings.shape[1])
        else:
            self.hidden_size = 0
        self.register_buffer("piece_embeddings", piece_embeddings, persistent=False)
        self.backbone = nn.Sequential(*[_block(*layer) for layer in LAYERS])
        self.saliency = nn.Conv2d(FEATURES, 1, 1)               # where the event is
        self.trunk = nn.Sequential(nn.Linear(2 * FEATURES, 256), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({k: nn.Linear(256, n) for k, n in HEAD_SIZES.items()})
        # Retrieval: head probabilities (detached) -> MiniLM space.
        self.retrieval = nn.Sequential(nn.Linear(N_PROBS, 256), nn.ReLU(inplace=True), nn.Linear(256, RETRIEVAL_DIM))
        self._weights_sha: str | None = None

    def train(self, mode: bool = True) -> "ToyWorldTower":
        """Inference runs NHWC (channels_last: ~1.5x faster on CPU); training stays NCHW,
        the layout the shipped weights were trained in (bit-for-bit reproducible)."""
        super().train(mode)
        self.backbone.to(memory_format=torch.contiguous_format if mode else torch.channels_last)
        return self

    # ------------------------------------------------------------------ identity, io

    @property
    def weights_sha256(self) -> str:
        """sha256 of the weights file it was loaded from or saved to (else of its state)."""
        return self._weights_sha or self._state_sha()

    @property
    def identity(self) -> str:
        return f"{ARCH}-{self.weights_sha256[:16]}-t{self.tokens_per_frame}-c{cap.LAYOUT}"

    def _state_sha(self) -> str:
        h = hashlib.sha256()
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> str:
        """Write the weights (fp32 safetensors); return the file's sha256."""
        from safetensors.torch import save

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        data = _canonical_header(save(state, metadata={"arch": ARCH,
                                                       "input_size": f"{self.input_size[0]}x{self.input_size[1]}"}))
        Path(path).write_bytes(data)
        self._weights_sha = hashlib.sha256(data).hexdigest()
        return self._weights_sha

    @classmethod
    def load(cls, path: str | Path, piece_embeddings: torch.Tensor | None = None, tokens_per_frame: int = 8,
             device: str | torch.device = "cpu") -> "ToyWorldTower":
        from safetensors import safe_open
        from safetensors.torch import load_file

        from videokv.hashing import sha256_file

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("arch", ARCH) != ARCH:
            raise ValueError(f"{path}: tower weights of architecture {meta.get('arch')!r}, expected {ARCH!r}")
        size = tuple(int(x) for x in meta.get("input_size", "128x96").split("x"))
        tower = cls(piece_embeddings, tokens_per_frame, size)
        tower.load_state_dict(load_file(str(path)), strict=True)
        tower._weights_sha = sha256_file(path)
        return tower.to(device).eval()

    # ------------------------------------------------------------------ network

    def _prepare(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(self.saliency.weight.device, torch.float32)
        W, H = self.input_size
        if x.shape[-2:] != (H, W):
            x = F.interpolate(x, size=(H, W), mode="bilinear", antialias=True, align_corners=False)
        x = (x - 0.5) * 4.0
        return x if self.training else x.contiguous(memory_format=torch.channels_last)

    def logits(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """frames [N, 3, H, W] in [0, 1] -> {head: [N, classes]} logits."""
        f = self.backbone(self._prepare(frames))                        # [N, C, h, w]
        att = torch.softmax(self.saliency(f).flatten(1), dim=1)         # [N, h*w]
        flat = f.flatten(2)
        pooled = torch.cat([torch.einsum("ncp,np->nc", flat, att), flat.amax(2)], 1)
        z = self.trunk(pooled)
        return {k: head(z) for k, head in self.heads.items()}

    @staticmethod
    def probs_of(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: torch.softmax(v.float(), -1) for k, v in logits.items()}

    def retrieval_from_probs(self, probs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unit vectors in MiniLM space from head probabilities (detached; not yet scaled).
        Digit and shape probabilities are gated by P(card) and P(shape): a card's shape
        head (and a shape's digit head) is untrained noise and must not move the vector."""
        pk = probs["kind"]
        x = torch.cat([pk, probs["color"], probs["shape"] * pk[:, 2:3], probs["digit"] * pk[:, 1:2]], -1)
        return F.normalize(self.retrieval(x.detach()), dim=-1)

    # ------------------------------------------------------------------ outputs

    @torch.no_grad()
    def probabilities(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.probs_of(self.logits(frames))

    def slot_distributions(self, probs: dict[str, torch.Tensor], hard: bool = True) -> torch.Tensor:
        """[N, 4, V_cap]: per caption slot, a distribution over caption pieces."""
        pk, pc, ps, pd = probs["kind"], probs["color"], probs["shape"], probs["digit"]
        if hard:
            pk, pc, ps, pd = (F.one_hot(p.argmax(-1), p.shape[-1]).float() for p in (pk, pc, ps, pd))
        none, card, shape = pk[:, 0], pk[:, 1], pk[:, 2]
        event = card + shape
        d = torch.zeros(pk.shape[0], cap.SLOTS, len(_VOCAB), device=pk.device)
        d[:, 0, _I_BLANK] = none
        d[:, 0, _I_COLORS] = event[:, None] * pc
        d[:, 1, _I_BLANK] = none
        d[:, 1, _I_CARD] = card
        d[:, 1, _I_SHAPES] = shape[:, None] * ps
        d[:, 2, _I_BLANK] = none
        d[:, 2, _I_DIGITS] = card[:, None] * pd
        d[:, 2, _I_COLORS] += shape[:, None] * pc                   # a shape's value is its colour
        d[:, 3, _I_BLANK] = none
        d[:, 3, _I_END] = event
        return d

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, hard: bool = True) -> torch.Tensor:
        if self.piece_embeddings is None:
            raise RuntimeError("ToyWorldTower was built without piece_embeddings: it can label frames "
                               "but not emit LLM tokens")
        dist = self.slot_distributions(self.probabilities(frames), hard=hard)
        emb = self.piece_embeddings
        tokens = dist.to(emb.dtype) @ emb                                  # [N, 4, hidden]
        return tokens.repeat_interleave(self.repeat, dim=1)

    @torch.no_grad()
    def labels(self, frames: torch.Tensor) -> list[cap.FrameLabel]:
        """The most likely caption of each frame."""
        p = self.probabilities(frames)
        kind, color, shape, digit = (p[k].argmax(-1).tolist() for k in ("kind", "color", "shape", "digit"))
        out = []
        for k, c, s, d in zip(kind, color, shape, digit):
            if k == 1:
                out.append(cap.FrameLabel("card", cap.COLORS[c], digit=cap.DIGITS[d]))
            elif k == 2:
                out.append(cap.FrameLabel("shape", cap.COLORS[c], shape=cap.SHAPES[s]))
            else:
                out.append(cap.FrameLabel())
        return out

    @torch.no_grad()
    def retrieval_vectors(self, frames: torch.Tensor) -> torch.Tensor:
        """[N, 384] float32: each frame's unit vector in MiniLM space times P(event), so a
        sum over a chunk's frames is dominated by the frames that show an event."""
        p = self.probabilities(frames)
        return self.retrieval_from_probs(p) * (1.0 - p["kind"][:, :1])


# A chunk whose frames show nothing sums to ~0; normalising that would blow noise up to a
# unit vector. So the chunk vector gets one extra coordinate worth NULL_WEIGHT frames
# (questions have 0 there): an empty chunk points along it and scores ~0 with every question,
# a chunk with several event frames is barely changed.
NULL_WEIGHT = 0.5


def chunk_retrieval_vector(vectors: torch.Tensor, null_weight: float = NULL_WEIGHT) -> torch.Tensor:
    """Summed frame retrieval vectors [N, 384] -> [385] unit chunk vector."""
    v = torch.cat([vectors.float().sum(0), torch.tensor([null_weight], dtype=torch.float32, device=vectors.device)])
    return v / v.norm().clamp_min(1e-12)


def question_retrieval_vector(minilm_vectors: torch.Tensor) -> torch.Tensor:
    """MiniLM vector(s) [..., 384] -> [..., 385] with a 0 null coordinate, unit."""
    v = F.pad(minilm_vectors.float(), (0, 1))
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
