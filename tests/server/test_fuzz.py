"""Property-based fuzz of the running API against its own OpenAPI document (schemathesis + Hypothesis).

For every operation in the document the app serves (``/schema/openapi.json``), on SQLite and on
PostgreSQL, schemathesis generates requests that fit the document (positive) and requests that break it
(negative); they are sent with real tokens through the app's test client to a database holding real
annotations and groups (pending, complete), and every answer is checked: no 5xx, a status the
document lists for that route, the content type it lists and a body that matches its schema.

The number of cases per operation and mode is bounded so the suite stays fast; ``PACS_MASK_FUZZ_EXAMPLES``
raises it for a longer run (README, "Fuzzing the API"). Runs are deterministic (derandomized) unless
``PACS_MASK_FUZZ_SEED`` is set, so a failure in CI reproduces locally.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server.conftest import (
    ALL_DBS,
    Server,
    complete,
    create_annotation,
    create_group,
    make_slices,
    upload,
)

EXAMPLES_ENV = "PACS_MASK_FUZZ_EXAMPLES"
SEED_ENV = "PACS_MASK_FUZZ_SEED"
MAX_EXAMPLES = int(os.environ.get(EXAMPLES_ENV) or 10)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXPECTED_UNAVAILABLE = {
    ("POST", "/api/annotations/from-pacs"): "pacs_not_configured",
    ("POST", "/api/mask-group/{group_id}/send"): "pacs_not_configured",
}
"""The only 5xx the fuzz accepts: this app has no PACS configured, and says so with a documented 503."""
# Headers schemathesis adds that mean nothing to this API; the test client sets its own.
DROPPED_HEADERS = {"user-agent", "accept-encoding", "connection", "x-schemathesis-testcaseid"}


@dataclass
class Known:
    """Real ids in the database, so generated requests also reach existing annotations and groups."""

    annotation_ids: list[int] = field(default_factory=list)
    group_ids: list[str] = field(default_factory=list)
    filenames: list[str] = field(default_factory=list)
    token_names: list[str] = field(default_factory=list)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    """What each operation answered, to show the fuzz got past authentication to the handlers."""

    def path_values(self, name: str) -> list[Any]:
        return {
            "annotation_id": self.annotation_ids,
            "group_id": self.group_ids,
            "name": self.token_names,
        }.get(name, [])


def _seed_database(server: Server) -> Known:
    """An annotation with a complete group and a pending one whose slices are uploaded, and tokens."""
    known = Known()
    annotation_id = create_annotation(server)
    done = create_group(server, annotation_id, version="done")
    slices = make_slices(3)
    upload(server, done["id"], slices)
    response = complete(server, done["id"], slices)
    assert response.status_code == 200, response.text
    pending = create_group(server, annotation_id, version="pending")
    upload(server, pending["id"], make_slices(2))
    known.annotation_ids = [annotation_id, create_annotation(server)]
    known.group_ids = [done["id"], pending["id"]]
    known.filenames = [s.filename for s in slices]
    server.token("uploader")
    known.token_names = ["test-uploader"]
    return known


def _send(server: Server, case: Any, token: str | None) -> tuple[httpx.Response, dict[str, Any]]:
    """Send a generated case through the app's test client (its lifespan, its 500 recorder)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kwargs = case.as_transport_kwargs(base_url=str(server.client.base_url).rstrip("/"), headers=headers)
    request_headers = {
        k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() not in DROPPED_HEADERS
    }
    if not token:
        request_headers.pop("Authorization", None)
    body: dict[str, Any] = {}
    if "json" in kwargs:
        body["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        body["content"] = kwargs["data"]
    response = server.client.request(
        kwargs["method"], kwargs["url"], headers=request_headers, params=kwargs.get("params") or None, **body
    )
    return response, kwargs


def _validate(case: Any, response: httpx.Response, kwargs: dict[str, Any]) -> None:
    """schemathesis' checks; a documented 503 ``pacs_not_configured`` is the only 5xx let through."""
    operation = case.operation
    expected = EXPECTED_UNAVAILABLE.get((operation.method.upper(), operation.path))
    if expected is not None and response.status_code == 503 and response.json().get("error") == expected:
        case.validate_response(
            response, checks=[c for c in CHECKS if c is not not_a_server_error], transport_kwargs=kwargs
        )
        return
    case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)


def _fuzz_operation(server: Server, operation: Any, mode: GenerationMode, known: Known, token: str) -> None:
    strategy = operation.as_strategy(generation_mode=mode)
    run_settings = settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=not os.environ.get(SEED_ENV),
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        print_blob=False,
    )

    @run_settings
    @given(case=strategy, data=st.data())
    def check(case: Any, data: st.DataObject) -> None:
        for name in list(case.path_parameters or {}):
            values = known.path_values(name)
            if values and data.draw(st.booleans(), label=f"real {name}"):
                case.path_parameters[name] = data.draw(st.sampled_from(values), label=name)
        response, kwargs = _send(server, case, token)
        known.statuses.setdefault(operation.label, Counter())[response.status_code] += 1
        _validate(case, response, kwargs)

    if os.environ.get(SEED_ENV):
        check = seed(int(os.environ[SEED_ENV]))(check)
    check()


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_the_api_answers_every_generated_request_as_its_document_says(app_client: Server) -> None:
    document = app_client.client.get("/schema/openapi.json")
    assert document.status_code == 200, document.text
    schema = schemathesis.openapi.from_dict(document.json())
    known = _seed_database(app_client)
    # Deletions last, so every other operation also meets the seeded groups and token.
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()), key=lambda op: op.method.upper() == "DELETE"
    )
    assert len(operations) >= 15, [op.label for op in operations]

    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz_operation(app_client, operation, mode, known, app_client.admin_token)
            except (
                Exception,
                BaseExceptionGroup,
            ) as exc:  # every operation is fuzzed; all failures are listed
                failures.append(f"{operation.label} ({mode.value}): {type(exc).__name__}: {exc}")
    assert not failures, "\n\n".join(failures)
    stuck = {label: dict(seen) for label, seen in known.statuses.items() if set(seen) <= {401}}
    assert not stuck, f"operations that never got past authentication: {stuck}"
    assert len(known.statuses) == len(operations)
    answered = Counter(status // 100 for seen in known.statuses.values() for status in seen.elements())
    assert answered[2] >= len(operations), f"too few successful calls to mean anything: {answered}"


@pytest.mark.parametrize("db_kind", ALL_DBS)
def test_every_operation_without_a_token_or_with_too_low_a_role_answers_as_documented(
    app_client: Server,
) -> None:
    document = app_client.client.get("/schema/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    uploader = app_client.token("uploader")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        case = operation.Case(
            path_parameters=dict.fromkeys(_path_names(operation), "1"),
        )
        for token in (None, uploader):
            response, kwargs = _send(app_client, case, token)
            try:
                _validate(case, response, kwargs)
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} (token={'uploader' if token else 'none'}): {exc}")
            if token is None and operation.path != "/health":
                assert response.status_code == 401, (operation.label, response.text)
    assert not failures, "\n\n".join(failures)


def _path_names(operation: Any) -> list[str]:
    return [parameter.name for parameter in operation.path_parameters]
