"""`videokv serve [--shard NAME | --front]` (the REST API under uvicorn) and `videokv keys create|list|revoke`."""

from __future__ import annotations

import argparse
import os
import socket
import sys


def main_serve(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv serve", description="Serve the REST API (auth: VIDEOKV_AUTH, "
                                 "default `keys`; create keys with `videokv keys create --tenant T`).")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    ap.add_argument("--port", type=int, default=8000, help="port to listen on")
    ap.add_argument("--log-level", default="info", help="uvicorn log level (debug, info, warning, ...)")
    role = ap.add_mutually_exclusive_group()
    role.add_argument("--shard", help="serve this shard's videos to the front API (VIDEOKV_SHARD; needs "
                                      "VIDEOKV_CLUSTER_TOKEN; advertised at VIDEOKV_SHARD_URL, default http://HOST:PORT)")
    role.add_argument("--front", action="store_true", help="the front API of a sharded service: routes to the "
                                                           "shards registered in Redis (needs VIDEOKV_CLUSTER_TOKEN)")
    args = ap.parse_args(argv)
    import uvicorn

    from videokv.runtime import load_settings
    from videokv.settings import get_settings

    if args.shard:
        os.environ["VIDEOKV_SHARD"] = args.shard
    s = load_settings()
    if s.shard and not s.shard_url:
        host = socket.gethostname() if args.host in ("0.0.0.0", "::") else args.host
        os.environ["VIDEOKV_SHARD_URL"] = f"http://{host}:{args.port}"
    if (s.shard or args.front) and not s.cluster_token:
        print("videokv serve: set VIDEOKV_CLUSTER_TOKEN (the same secret on the front and every shard)",
              file=sys.stderr)
        return 2
    what = "front API" if args.front else (f"shard {s.shard!r} API" if s.shard else "API")
    print(f"videokv serve: {what} on http://{args.host}:{args.port} (docs /docs), auth={s.auth}, home={s.home}, "
          f"redis={s.redis_url}", file=sys.stderr)
    if s.auth == "open":
        print("videokv serve: WARNING: VIDEOKV_AUTH=open: no API keys, every caller is tenant 'default'",
              file=sys.stderr)
    get_settings.cache_clear()          # the uvicorn factory reads the variables set above
    uvicorn.run("videokv.services:front_app" if args.front else "videokv.services:api_app", factory=True,
                host=args.host, port=args.port, log_level=args.log_level)
    return 0


def main_keys(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv keys", description="Manage API keys (stored hashed in HOME/api_keys.json).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create", help="create a key for a tenant; prints the key (once) as the last line")
    c.add_argument("--tenant", required=True, help="the tenant the key acts for")
    c.add_argument("--name", default="", help="a label for the key")
    sub.add_parser("list", help="list keys (hash prefixes and tenants)")
    r = sub.add_parser("revoke", help="revoke keys by hash prefix (>= 8 hex chars, from `list`)")
    r.add_argument("prefix", help="the key hash prefix `videokv keys list` shows")
    args = ap.parse_args(argv)
    from videokv.api.auth import KeyRing
    from videokv.runtime import load_settings

    ring = KeyRing(load_settings().home)
    if args.cmd == "create":
        key = ring.create(args.tenant, args.name)
        print(f"new API key for tenant {args.tenant!r} (shown once; send as `Authorization: Bearer KEY`):",
              file=sys.stderr)
        print(key)
    elif args.cmd == "list":
        for k in ring.list():
            print(f"{k['key_sha256']}  tenant={k['tenant']}  name={k['name']}")
    else:
        n = ring.revoke(args.prefix)
        print(f"revoked {n} key(s)")
        return 0 if n else 1
    return 0
