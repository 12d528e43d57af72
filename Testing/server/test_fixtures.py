"""The recorded example responses in ``Testing/fixtures/api/`` still match the API (regenerate them with
``python -m Testing.server.make_fixtures`` after an API change)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from activeseg.api import schemas
from activeseg.api.server import create_app

from .make_fixtures import FIXTURES
from .support import make_store

MODELS: dict[str, type[BaseModel]] = {
    "health": schemas.HealthOut,
    "info": schemas.InfoOut,
    "cases": schemas.CaseListOut,
    "case": schemas.CaseOut,
    "label_submitted": schemas.CaseOut,
    "pseudo_accepted": schemas.CaseOut,
    "queue": schemas.QueueOut,
    "queue_next": schemas.NextOut,
    "job_started": schemas.JobOut,
    "job_running": schemas.JobOut,
    "job_succeeded": schemas.JobOut,
    "job_pseudo_label": schemas.JobOut,
    "jobs": schemas.JobListOut,
    "models": schemas.ModelListOut,
    "model": schemas.ModelOut,
    "model_activated": schemas.ActivationOut,
    "learning_curve": schemas.CurveOut,
}


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.json") if p.stem != "openapi"))
def test_fixture_matches_its_schema(name: str) -> None:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    model = schemas.ErrorOut if name.startswith("error_") else MODELS[name]
    parsed = model.model_validate(data)
    assert json.loads(parsed.model_dump_json()).keys() == data.keys()


def test_recorded_openapi_is_current(tmp_path: Path) -> None:
    store, _ = make_store(tmp_path, count=5)
    current = create_app(store, recover=False).openapi()
    recorded = json.loads((FIXTURES / "openapi.json").read_text())
    assert recorded == json.loads(json.dumps(current)), "API changed: run python -m Testing.server.make_fixtures"
