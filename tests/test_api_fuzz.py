"""The API fuzzed from its own OpenAPI schema (schemathesis).

Every operation of ``/api/v1/schema/`` gets a bounded number of generated requests, valid ones
and (fewer) invalid ones, as anonymous, an analyst holding a partial grant, a steward and an
auditor, against the sweep's world on the test database, through the WSGI application in
this process (no server). Half the valid requests carry the world's real object ids, so that
the 200 answers are exercised too, not only the 404s of random ids. Each request runs in a
transaction that is rolled back, so every example meets the same world. Checks: no 5xx, and
every response, errors included, is documented: its status code, content type and body
match the schema. Generation is derandomized (a fixed seed per test), so a run is repeatable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import hypothesis
import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from knox.models import AuthToken
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.sweep_walk import path_values
from tests.sweep_world import CANARIES, CANARY_SECRET, build_world

pytestmark = pytest.mark.django_db

# Per operation, caller and mode: ~75 operations x 4 callers. Small, so the whole file runs
# in a few minutes on two cores; it finds what it finds because the inputs are derived from
# the schema, not because it tries many.
POSITIVE_EXAMPLES = 6
NEGATIVE_EXAMPLES = 3
CALLERS = ("anonymous", "analyst_partial", "owner_steward", "dept_auditor")
CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema() -> Any:
    """The schema ``/api/v1/schema/`` serves, generated once (no database needed), bound to the
    WSGI application."""
    document = json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True)))
    schema = schemathesis.openapi.from_dict(document)
    schema.app = get_wsgi_application()
    return schema


@contextmanager
def connection_kept_open() -> Iterator[None]:
    """The WSGI handler closes the database connection around each request, as in production;
    here it is the test's connection, inside the test's transaction (Django's test client
    does the same, and connects the handlers again after each of its requests)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def _examples(strategy: st.SearchStrategy[Any], count: int, run: Callable[[Any], None]) -> None:
    @hypothesis.settings(max_examples=count, derandomize=True, database=None, deadline=None,
                         phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def test(case: Any) -> None:
        run(case)

    test()


@pytest.mark.parametrize("caller", CALLERS)
def test_every_operation_answers_as_documented(api_schema, caller):
    world = build_world()
    headers = {}
    if caller != "anonymous":
        _, token = AuthToken.objects.create(user=world.people[caller])
        headers["Authorization"] = f"Token {token}"
    real_ids = path_values(world)
    forbidden = (CANARY_SECRET,) if caller == "owner_steward" else CANARIES
    failures: list[str] = []
    operations = 0

    def run(case: Any) -> None:
        with transaction.atomic():
            try:
                response = case.call_and_validate(headers=headers, checks=CHECKS)
            finally:
                transaction.set_rollback(True)
        leaked = [c for c in forbidden if c in response.text]
        assert not leaked, f"{case.method} {case.formatted_path}: canaries {leaked}"

    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1
        names = [p.name for p in operation.path_parameters]
        known = {n: real_ids[n] for n in names if n in real_ids}
        positive = operation.as_strategy(GenerationMode.POSITIVE)
        if known:
            positive = st.one_of(positive, operation.as_strategy(GenerationMode.POSITIVE, path_parameters=known))
        for strategy, count in ((positive, POSITIVE_EXAMPLES),
                                (operation.as_strategy(GenerationMode.NEGATIVE), NEGATIVE_EXAMPLES)):
            try:
                with connection_kept_open():
                    _examples(strategy, count, run)
            except hypothesis.errors.Unsatisfiable:
                continue  # no negative input exists for an operation without parameters
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - one run reports every operation
                failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:3000]}")
                break
    assert operations > 60
    assert not failures, f"{len(failures)} operations failed as {caller}:\n\n" + "\n\n".join(failures)


# --- What the fuzzer found, kept as plain regression tests ------------------------------------

HUGE = "19778422493087449088"  # beyond 64 bits: overflowed SQLite's driver (a 500)


@pytest.mark.parametrize("method,url,data", [
    ("get", f"/api/v1/access-requests/?dataset={HUGE}", None),
    ("get", f"/api/v1/grants/?dataset={HUGE}", None),
    ("get", f"/api/v1/sync/runs/?dataset={HUGE}", None),
    ("post", "/api/v1/inbox/read/", {"ids": [int(HUGE)]}),
    ("post", "/api/v1/access-requests/", {"dataset": int(HUGE), "fields": ["x"], "purpose": "p", "legal_basis": "b",
                                          "requested_start": "2026-01-01T00:00:00Z",
                                          "requested_end": "2026-02-01T00:00:00Z"}),
])
def test_ids_beyond_64_bits_are_input_errors(as_user, people, method, url, data):
    response = getattr(as_user(people["steward"]), method)(url, data=data, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid"


@pytest.mark.parametrize("query", [f"actor={HUGE}", "actor=²", f"department={HUGE}", "department=²",
                                   f"dataset={HUGE}"])
def test_audit_filters_take_any_text(as_user, people, query):
    response = as_user(people["city_auditor"]).get(f"/api/v1/audit/events/?{query}")
    assert response.status_code in (200, 400), response.content


def test_audit_page_takes_any_cursor(client, people):
    client.force_login(people["city_auditor"])
    assert client.get("/audit/?before=²").status_code == 200
    assert client.get(f"/audit/?before={HUGE}").status_code == 200


def test_web_inbox_ignores_ids_that_are_no_ids(client, people):
    client.force_login(people["analyst"])
    assert client.post("/inbox/", {"notification": ["²", HUGE, "1"]}).status_code == 302


def test_api_errors_django_answers_before_the_api_have_the_api_shape(as_user, people):
    api = as_user(people["analyst"])
    not_found = api.get("/api/v1/datasets/not-a-number/")
    assert not_found.status_code == 404 and not_found.json()["error"]["code"] == "not_found"
    too_many = api.post("/api/v1/inbox/read/", data="&".join(f"ids={i}" for i in range(1, 1200)),
                        content_type="application/x-www-form-urlencoded")
    assert too_many.status_code == 400 and too_many.json()["error"]["status"] == 400
    assert too_many["Content-Type"] == "application/json"
