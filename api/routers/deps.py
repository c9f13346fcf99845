"""Dependencies shared by the routers, and the error responses endpoints declare."""

from __future__ import annotations

from fastapi import Request

from ..schemas import Problem

PROBLEM = "application/problem+json"


def problems(*statuses: int) -> dict:
    """OpenAPI `responses` for these error statuses: a problem+json body each."""
    return {s: {"model": Problem, "content": {PROBLEM: {}}} for s in statuses}


def tenant_of(svc):
    """A dependency: the caller's tenant (401 problem without a valid key)."""
    def tenant(request: Request) -> str:
        return svc.tenant(request)
    return tenant
