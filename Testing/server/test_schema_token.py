"""Schemathesis against the real server in token mode, with the bearer scheme declared (issue 12 item 14 and its
"Done when").

The server runs with ``--token`` (through ``$ACTIVESEG_TOKEN``); its OpenAPI document must declare the bearer
scheme as required on every operation, and schemathesis sends the token on every generated request. Besides the
checks of ``test_schema.py`` (no 5xx, documented status codes, content types and bodies), ``ignored_auth``
probes each operation that answered 2xx again without the token and with a wrong one: both must be refused.
A run where nothing got past the token (401 is documented, so it would pass every other check) fails too.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from schemathesis.checks import ignored_auth

from activeseg.io.volumes import read_volume
from activeseg.store.datastore import Datastore

from .support import ServerProcess, label_path, make_store
from .test_schema import CHECKS, check_operations

MAX_EXAMPLES = 8
TOKEN = secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store_root, source = make_store(tmp_path_factory.mktemp("schema-token"), count=5)
    store = Datastore(store_root)
    store.set_queue(["phantom_001", "phantom_002"])
    store.submit_label("phantom_000", read_volume(label_path(source, "phantom_000")), annotator="seed")
    with ServerProcess(store_root, token=TOKEN) as server:
        yield server


def test_openapi_requires_the_bearer_scheme_on_every_operation_in_token_mode(token_server: ServerProcess) -> None:
    assert httpx.get(token_server.url + "/v1/openapi.json", timeout=30).status_code == 401
    schema = httpx.get(token_server.url + "/v1/openapi.json", headers=AUTH, timeout=30).json()
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert schema["security"] == [{"bearerAuth": []}]  # required: no anonymous alternative
    operations = [op for item in schema["paths"].values() for op in item.values() if isinstance(op, dict)]
    assert len(operations) >= 20
    assert all(op.get("security", schema["security"]) == [{"bearerAuth": []}] for op in operations)
    assert all("401" in op["responses"] for op in operations)


def test_api_conforms_to_its_schema_with_the_token(token_server: ServerProcess) -> None:
    schema = schemathesis.openapi.from_url(token_server.url + "/v1/openapi.json", headers=AUTH)
    schema = schema.exclude(method="POST", path_regex=r"^/v1/jobs/(train|rank|pseudo-label)$")
    statuses: Counter[int] = Counter()

    def record(ctx: object, response: schemathesis.Response, case: schemathesis.Case) -> bool:
        statuses[response.status_code] += 1
        return True

    operations, failures = check_operations(schema, [*CHECKS, ignored_auth, record], headers=AUTH,
                                            max_examples=MAX_EXAMPLES)
    assert operations >= 20
    assert not failures, "\n\n".join(failures)
    passed = sum(n for code, n in statuses.items() if 200 <= code < 300)
    assert passed >= operations, f"too few requests got past the token: {dict(statuses)}"
    assert statuses[401] == 0, f"the token was refused: {dict(statuses)}"
