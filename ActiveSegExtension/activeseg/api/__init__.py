"""The ``/v1`` HTTP API: one small router per concern, pydantic schemas, error mapping and auth."""

from __future__ import annotations

from fastapi import APIRouter

from . import cases, info, jobs, labels, models, queue, uncertainty

__all__ = ["API_PREFIX", "build_router"]

API_PREFIX = "/v1"


def build_router() -> APIRouter:
    """All routers under ``/v1``."""
    router = APIRouter(prefix=API_PREFIX)
    for module in (info, cases, labels, queue, jobs, models, uncertainty):
        router.include_router(module.router)
    return router
