"""Property-based fuzzing of every documented operation (schemathesis) against the real server process.

For each operation, schemathesis generates requests from the OpenAPI schema (valid ones and, for the
parameters, invalid ones too) and checks every response: never a 5xx, a status code the schema declares,
a declared content type, and a body that matches the declared schema. The requests run as a principal with
every tenant role but ``admin`` (so nothing it sends can disable the tenant under it) in a real tenant.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.apiserver import Server, running_server

EXAMPLES = int(os.environ.get("FALAJ_FUZZ_EXAMPLES", "25"))  # per operation; more for a deeper local run
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live(request, tmp_path_factory) -> Iterator[tuple[Server, str]]:
    env = {"FALAJ_WEBHOOKS": "off", "FALAJ_MAX_UPLOAD_BYTES": "65536"}
    with running_server(request, tmp_path_factory.mktemp("fuzz"), "sqlite", env) as srv:
        admin = srv.tenant("fuzz")
        token = srv.principal("fuzz", admin, "fuzzer", "ml-engineer", "data-steward", "auditor", "approver")
        body = {"name": "store", "kind": "storage", "plugin": "local", "region": "uaenorth"}
        srv.client.post("/api/v1/tenants/fuzz/backends", headers={"Authorization": f"Bearer {admin}"}, json=body)
        yield srv, token


def _schema() -> schemathesis.BaseSchema:
    from falaj.api.rest.app import create_app

    return schemathesis.openapi.from_dict(create_app().openapi_schema.to_schema())


SCHEMA = _schema()
OPERATIONS = {op.ok().label: op.ok() for op in SCHEMA.get_all_operations()}


def test_every_operation_is_fuzzed():
    # The schema covers the API: every route Litestar serves (bar OpenAPI's own pages) is an operation here.
    assert len(OPERATIONS) > 80
    assert all(op.definition.raw.get("operationId") for op in OPERATIONS.values())


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_no_operation_fails_or_breaks_its_schema(label, live):
    srv, token = live
    operation = OPERATIONS[label]

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def fuzz(case: schemathesis.Case) -> None:
        if "tenant" in (case.path_parameters or {}):
            case.path_parameters["tenant"] = "fuzz"
        case.call_and_validate(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)

    fuzz()
