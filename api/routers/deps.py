"""Dependencies shared by the routers, and the error responses endpoints declare."""

from __future__ import annotations

from fastapi import Request

from ..schemas import Problem

PROBLEM = "application/problem+json"


def problems(*statuses: int) -> dict:
    """OpenAPI `responses` for these error statuses: a problem+json body each."""
    return {s: {"model": Problem, "content": {PROBLEM: {}}} for s in statuses}


def tenant_of(svc):
    """A dependency: the caller's tenant (401 problem without a valid key). Async: the check
    is a stat and a hash, cheaper than the hop to the thread pool a sync dependency takes
    (under a burst of requests those hops delayed /healthz on the event loop)."""
    async def tenant(request: Request) -> str:
        return svc.tenant(request)
    return tenant
