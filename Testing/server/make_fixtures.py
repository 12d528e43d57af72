"""Record example API responses into ``Testing/fixtures/api/`` from a real server (run by hand after API changes).

Both sides' tests read them: the server's to check they still match the schemas, the Slicer client's to
parse real payloads without a server. ``openapi.json`` there is the protocol's written form.

Usage::

    python -m Testing.server.make_fixtures [OUT_DIR]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from .support import ServerProcess, label_path, make_store, wait_for_job

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "api"

__all__ = ["FIXTURES", "record_fixtures"]


def _save(out: Path, name: str, data: Any) -> None:
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def record_fixtures(out: Path = FIXTURES) -> list[str]:
    """Run a short loop on tiny phantoms and save one example of each response; return the names written."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        store, source = make_store(Path(tmp), count=8)
        with ServerProcess(store) as server, server.client(timeout=120) as client:
            saved: dict[str, Any] = {}

            def get(name: str, method: str, url: str, **kwargs: Any) -> Any:
                response = client.request(method, url, **kwargs)
                saved[name] = response.json()
                return saved[name]

            _save(out, "openapi", client.get("/v1/openapi.json").json())
            get("health", "GET", "/v1/health")
            for case_id in ("phantom_000", "phantom_001", "phantom_002"):
                get("label_submitted", "PUT", f"/v1/cases/{case_id}/label", params={"annotator": "alice"},
                    content=label_path(source, case_id).read_bytes())
            job = get("job_started", "POST", "/v1/jobs/train", json={"then_rank": True})
            get("error_job_running", "POST", "/v1/jobs/rank")
            get("job_running", "GET", f"/v1/jobs/{job['job_id']}", params={"log_lines": 5})
            saved["job_succeeded"] = wait_for_job(client, job["job_id"])
            get("jobs", "GET", "/v1/jobs")
            get("info", "GET", "/v1/info")
            get("cases", "GET", "/v1/cases")
            get("case", "GET", "/v1/cases/phantom_003")
            get("queue", "GET", "/v1/queue")
            get("queue_next", "POST", "/v1/queue/next", params={"annotator": "alice"})
            get("models", "GET", "/v1/models")
            get("model", "GET", "/v1/models/1")
            activated = get("model_activated", "POST", "/v1/models/1/activate")  # re-ranks with v1
            if activated["rank_job"] is not None:
                wait_for_job(client, activated["rank_job"]["job_id"])
            get("learning_curve", "GET", "/v1/learning-curve")
            pending = client.get("/v1/cases", params={"state": "pseudo"}).json()["cases"]
            if pending:
                get("pseudo_accepted", "POST", f"/v1/cases/{pending[0]['case_id']}/pseudo/accept")
            pseudo_job = client.post("/v1/jobs/pseudo-label").json()
            saved["job_pseudo_label"] = wait_for_job(client, pseudo_job["job_id"])
            get("error_unknown_case", "GET", "/v1/cases/phantom_999")
            get("error_invalid_case_id", "GET", "/v1/cases/%2E%2E")
            get("error_unreadable_image", "PUT", "/v1/cases/phantom_004/label", params={"annotator": "a"}, content=b"junk")
            get("error_leased", "POST", f"/v1/cases/{saved['queue_next']['case']['case_id']}/lease", params={"annotator": "bob"})
            get("error_invalid_request", "POST", "/v1/queue/next")
            for name, data in saved.items():
                _save(out, name, data)
    return ["openapi", *saved]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES
    sys.stdout.write("\n".join(record_fixtures(target)) + "\n")
