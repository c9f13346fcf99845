"""API keys: `Authorization: Bearer KEY` -> tenant. Keys are stored only as sha256 hashes,
in HOME/api_keys.json (written atomically under a file lock). `videokv keys create
--tenant T` prints a new key once. With VIDEOKV_AUTH=open every request is tenant
"default" (local use; `videokv serve` defaults to keys)."""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path

from videokv.errors import VideoKVError

PREFIX = "vkv_"
# A front API (api/front/) checks the caller's key itself and tells the shard whose tenant it
# acts for; a shard believes it only next to the cluster token (VIDEOKV_CLUSTER_TOKEN).
TENANT_HEADER = "x-videokv-tenant"
CLUSTER_HEADER = "x-videokv-cluster-token"


class AuthError(VideoKVError):
    code = "unauthorized"
    http_status = 401


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    def __init__(self, home: str | os.PathLike):
        self.path = Path(home) / "api_keys.json"
        self._cache: tuple[float, dict] | None = None

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lf, fcntl.LOCK_UN)

    def _load(self) -> dict:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if self._cache and self._cache[0] == mtime:
            return self._cache[1]
        data = json.loads(self.path.read_text())
        self._cache = (mtime, data)
        return data

    def _save(self, data: dict) -> None:
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def create(self, tenant: str, name: str = "") -> str:
        from videokv.kvstore import keys as K
        try:
            K.check_token("tenant", tenant)
        except ValueError as e:
            raise VideoKVError(str(e)) from None
        key = PREFIX + secrets.token_urlsafe(32)
        with self._locked():
            data = dict(self._load())
            data[_hash(key)] = {"tenant": tenant, "name": name, "created": time.time()}
            self._save(data)
        return key

    def list(self) -> list[dict]:
        return [{"key_sha256": h[:12], **v} for h, v in self._load().items()]

    def revoke(self, prefix: str) -> int:
        with self._locked():
            data = dict(self._load())
            gone = [h for h in data if h.startswith(prefix)] if len(prefix) >= 8 else []
            for h in gone:
                del data[h]
            self._save(data)
        return len(gone)

    def tenant(self, authorization: str | None) -> str:
        if not authorization:
            raise AuthError("missing API key: send `Authorization: Bearer KEY` (create one with "
                            "`videokv keys create --tenant NAME`)")
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthError("the Authorization header must be `Bearer KEY`")
        entry = self._load().get(_hash(key.strip()))
        if entry is None:
            raise AuthError("invalid API key")
        return entry["tenant"]


def trusted_tenant(settings, token: str | None, tenant: str) -> str:
    """The tenant a front API names, if it sent the cluster token; else a 401."""
    expected = settings.cluster_token
    if not expected or not token or not hmac.compare_digest(token.encode(), expected.encode()):
        raise AuthError(f"{TENANT_HEADER} is accepted only from the front API, with the cluster token "
                        "(VIDEOKV_CLUSTER_TOKEN)")
    from videokv.kvstore import keys as K
    try:
        K.check_token("tenant", tenant)
    except ValueError as e:
        raise AuthError(str(e)) from None
    return tenant
