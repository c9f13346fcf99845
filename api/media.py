"""Signed links to a video's original file and frames, for the web page's <video> and <img>
elements: a browser sends no Authorization header with those, and an API key in a URL would
end up in logs and history. An owner asks for links (GET /v1/videos/{id}/media, with its key);
each names the video, an expiry and an HMAC-SHA256 over (video, its tenant, expiry) under a
secret kept in HOME/media_secret (made on first use, mode 0600). A link is good for that
video only, until it expires; rotating the secret revokes every link."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from .problems import Problem

LINK_TTL_S = 6 * 3600


class MediaSigner:
    def __init__(self, home: str | os.PathLike):
        self.path = Path(home) / "media_secret"
        self._secret: bytes | None = None

    def _key(self) -> bytes:
        if self._secret is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:                                   # the first process to get here makes it
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
            except FileExistsError:
                pass
            self._secret = bytes.fromhex(self.path.read_text().strip())
        return self._secret

    def sign(self, video_id: str, tenant: str, expires: int) -> str:
        msg = f"{video_id}\n{tenant}\n{expires}".encode()
        return hmac.new(self._key(), msg, hashlib.sha256).hexdigest()[:32]

    def query(self, video_id: str, tenant: str, ttl_s: int = LINK_TTL_S) -> tuple[str, int]:
        """('exp=...&sig=...', expiry in Unix seconds) for the video's links."""
        exp = int(time.time()) + ttl_s
        return f"exp={exp}&sig={self.sign(video_id, tenant, exp)}", exp

    def check(self, video_id: str, tenant: str, exp: int, sig: str) -> None:
        """A 403 problem unless `sig` signs (video, tenant, exp) and exp is not past."""
        if not hmac.compare_digest(self.sign(video_id, tenant, exp), sig):
            raise Problem(403, "this media link is not valid: ask GET /v1/videos/{id}/media for a new one",
                          code="bad_media_link")
        if exp < time.time():
            raise Problem(403, "this media link expired: reload the page (GET /v1/videos/{id}/media)",
                          code="media_link_expired")
