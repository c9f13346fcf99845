"""Local checkpoint folders: the errors naming what to pass, the weights identity, quiet loading.
Nothing here downloads; a missing folder is an error that names the setting."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from videokv.errors import VideoKVError


class ModelNotFoundError(VideoKVError, FileNotFoundError):
    """A model path that does not exist or is not a usable checkpoint (names the setting)."""

    code = "model_not_found"


class ModelIntegrityError(VideoKVError, RuntimeError):
    """A converted model folder whose weights no longer match their recorded hash."""

    code = "model_corrupt"


class UnsupportedModelError(VideoKVError, ValueError):
    """A checkpoint of an architecture videokv has no backend for (lists the supported ones)."""

    code = "unsupported_model"


# Above this many bytes of weights, `checkpoint_id` samples instead of hashing everything.
FULL_HASH_BYTES = 1 << 30


def checkpoint_id(folder: Path) -> str:
    """16 hex chars naming a checkpoint's weights: sha256 over config.json and every weight
    file's name, size and bytes. Checkpoints over FULL_HASH_BYTES (a 7B model is ~16 GB, minutes
    to hash at every load) hash each file's first and last 16 MiB and 8 evenly spaced 1 MiB
    blocks instead (another export, dtype or fine-tune differs there in practice)."""
    import hashlib

    files = sorted(f for f in folder.iterdir() if f.suffix in (".safetensors", ".bin") and f.is_file())
    total = sum(f.stat().st_size for f in files)
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        if total <= FULL_HASH_BYTES:
            spans = [(0, size)]
        else:
            spans = [(0, 16 << 20), (max(0, size - (16 << 20)), 16 << 20)]
            spans += [(size * i // 9, 1 << 20) for i in range(1, 9)]
        with f.open("rb") as fh:
            for off, n in spans:
                fh.seek(off)
                while n > 0 and (block := fh.read(min(n, 1 << 24))):
                    h.update(block)
                    n -= len(block)
    return h.hexdigest()[:16]


def tokenizer_identity(tokenizer, chat_template: str | None = None) -> str:
    """12 hex chars naming what text becomes as tokens: the tokenizer's full serialisation
    (vocabulary, merges, normaliser, special tokens) and the chat template the prompts are
    laid out with. Part of the weights identity, so KVs made through another tokenizer or
    template are never reused."""
    import hashlib

    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:                                       # a slow tokenizer: its vocabulary in id order
        h.update("\n".join(sorted(f"{i} {t}" for t, i in tokenizer.get_vocab().items())).encode())
    template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
    h.update(b"\0template\0" + str(template or "").encode())
    return h.hexdigest()[:12]


def require_checkpoint(path: str | Path, setting: str, what: str = "checkpoint folder") -> Path:
    """The folder at `path`, which must hold a config.json; else ModelNotFoundError naming
    `setting` (e.g. "VIDEOKV_MODEL") and what to pass instead."""
    folder = Path(path).expanduser()
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"{setting}={str(path)!r}: no {what} with a config.json there. Pass a local model folder: weights "
            "are never downloaded (see README, Real checkpoints)")
    return folder


@contextmanager
def quiet_progress():
    """transformers' progress bars off while loading/saving (they clutter CLI output)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
