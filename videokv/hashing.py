"""Content hashes of files (model weights, uploaded videos)."""

import hashlib
import os


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """sha256 hex digest of the file's bytes, read in `block`-sized pieces (never whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
