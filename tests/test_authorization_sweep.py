"""The authorization sweep: every URL of ``config.urls``, generated from the resolver, asked by
every kind of caller with the real ids of a world where canaries are planted.

For each URL name, ``EXPECT`` holds the status each caller must get, per method (a write is
sent with an empty body inside a transaction that is rolled back, so the sweep never changes
the world it walks). A URL name missing from the table fails ``test_every_url_is_in_the_table``:
a new endpoint must be added here, with the answer each caller should get. ``OTHER_OBJECTS``
asks every URL that names an object again with another object of its kind (a restricted
dataset, a delivery run, another department's connection, request and grant), and
``VARIANTS`` asks some again with query strings that name hidden or masked fields in filters,
search, ordering and cursors. No canary may appear in any body or header, except transport's own data to
transport's steward, who must see it (the proof that the canaries are there to be found).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import Morsel
from typing import Any

import pytest
from django.conf import settings
from django.contrib import admin
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from departments.selectors import principals_forget_all
from tests.sweep_walk import ROLES, Route, body_of, call, login, path_values, routes
from tests.sweep_world import (
    CANARIES,
    CANARY_NOTE,
    CANARY_QUARANTINE,
    CANARY_SECRET,
    OWNER_CANARIES,
    World,
    build_world,
)

pytestmark = pytest.mark.django_db

L = "L"  # a redirect to the login page


@dataclass(frozen=True)
class Variant:
    """The URL asked again with other path values and/or a query string."""

    label: str
    values: Callable[[World], dict[str, Any]] = lambda w: {}
    query: Callable[[World], str] = lambda w: ""
    methods: tuple[str, ...] | None = None  # None: every method of the route


def probe(label: str, query: str | Callable[[World], str]) -> Variant:
    """The URL asked (GET) with a query string that could probe hidden values."""
    return Variant(label, query=query if callable(query) else lambda w: query, methods=("get",))


def _ckan(action: str, query: Callable[[World], str] = lambda w: "", label: str = "") -> Variant:
    return Variant(f"{action}{label and ', ' + label}", values=lambda w: {"action": action}, query=query,
                   methods=("get", "post"))


# Every URL with one of these path parameters is asked again with another object of its kind
# (a restricted dataset, another department's run, connection, request and grant).
OTHER_OBJECTS: dict[str, Variant] = {
    "dataset_id": Variant("restricted dataset", values=lambda w: {"dataset_id": w.restricted.pk}),
    "run_id": Variant("delivery run", values=lambda w: {"run_id": w.delivery_run.pk}),
    "connection_id": Variant("parks' connection", values=lambda w: {"connection_id": w.target.pk}),
    "request_id": Variant("parks' request", values=lambda w: {"request_id": w.pending_request.pk}),
    "grant_id": Variant("parks' grant", values=lambda w: {"grant_id": w.department_grant.pk}),
    "data_request_id": Variant("parks' withdrawn data request",
                               values=lambda w: {"data_request_id": w.hidden_data_request.pk}),
    "objection_id": Variant("parks' objection", values=lambda w: {"objection_id": w.hidden_objection.pk}),
}


def _step(step: str) -> Variant:
    return Variant(step, values=lambda w: {"step": step}, methods=("post",))

VARIANTS: dict[str, list[Variant]] = {
    "ui-data-request-step": [_step(s) for s in ("route", "duplicate", "accept", "decline", "fulfil", "withdraw",
                                                  "leave", "no-such-step")],
    "ui-objection-step": [_step(s) for s in ("accept", "reject", "withdraw", "no-such-step")],
    "dataset-records": [
        probe("filter on a hidden field", "?secret_note__contains=NOTE-7f"),
        probe("search", "?q=NOTE-7f"),
        probe("order by a hidden field", "?order=-secret_note"),
        probe("select a hidden field", "?fields=permit_id,secret_note"),
        probe("filter a masked field by its clear value", "?phone__contains=PHONE-555"),
        probe("filter a pseudonymised field by its clear value", "?applicant_name=CANARY-NAME-Okafor-1"),
        probe("order by a masked field", "?order=phone&page_size=1"),
        probe("the owner's cursor", lambda w: f"?order=secret_note&cursor={w.ids['owner_cursor']}"),
        probe("a forged cursor", "?cursor=WyJDQU5BUlkiXTpmb3JnZWQ"),
    ],
    "dataset-export": [
        probe("csv, filter on a hidden field", "?format=csv&secret_note__contains=NOTE-7f"),
        probe("ndjson, order by a hidden field", "?format=ndjson&order=secret_note"),
    ],
    "dataset-preview": [probe("order by a hidden field", "?order=secret_note")],
    "ui-dataset-records": [
        probe("filter on a hidden field", "?f_field=secret_note&f_value=NOTE-7f"),
        probe("order by a hidden field", "?order=secret_note"),
    ],
    "dataset-search": [probe("search", "?q=NOTE-7f")],
    "audit-who-could-see": [probe("a hidden field", "?field=secret_note")],
    "dataset-access-explain": [
        probe("the partial analyst", lambda w: f"?user={w.people['analyst_partial'].username}"),
        probe("parks", "?department=parks"),
        probe("an unknown user", "?user=no-such-user"),
    ],
    "ui-access-explain": [
        probe("the partial analyst", lambda w: f"?user={w.people['analyst_partial'].username}"),
    ],
    "dcat-dataset": [Variant("turtle", values=lambda w: {"fmt": "ttl"}, methods=("get",))],
    "ckan-action": [
        _ckan("package_show", lambda w: f"?id={w.restricted.pk}", "restricted dataset"),
        _ckan("datastore_search", lambda w: f"?resource_id={w.dataset.pk}&limit=100"),
        _ckan("datastore_search", lambda w: f"?resource_id={w.restricted.pk}", "restricted dataset"),
        _ckan("datastore_search", lambda w: f"?resource_id={w.dataset.pk}&q=NOTE-7f", "search"),
        _ckan("datastore_search", lambda w: f'?resource_id={w.dataset.pk}&filters={{"secret_note":"x"}}',
              "filter on a hidden field"),
        _ckan("datastore_search", lambda w: f"?resource_id={w.dataset.pk}&sort=phone%20desc",
              "sort by a masked field"),
        _ckan("datastore_search", lambda w: f"?resource_id={w.dataset.pk}&fields=permit_id,secret_note",
              "select a hidden field"),
        _ckan("package_search", lambda w: "?q=NOTE-7f"),
        _ckan("package_list"),
        _ckan("organization_show", lambda w: "?id=transport&include_datasets=true"),
        _ckan("organization_list"),
        _ckan("tag_list"),
        _ckan("status_show"),
        _ckan("no_such_action"),
    ],
}


# Every URL name of the project (and its variants), and the status each caller gets per method,
# in the order of ROLES: anonymous, outsider (health's admin), analyst_nogrant and
# analyst_partial (health), steward_other (health), dept_auditor (transport), city_auditor,
# subscriber_steward (parks), owner_steward (transport). L: a redirect to the login page; -:
# not sent (writes as the owner's steward, whose own pages are tested where they are built).
EXPECT: dict[str, dict[str, str]] = {
    "home": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 200 200 200 200 200 200 200   -"},
    "healthz": {"get": "200 200 200 200 200 200 200 200 200"},
    "city-map": {"get": "401 200 200 200 200 200 200 200 200"},
    "login": {
        "get": "200 302 302 302 302 302 302 302 302",
        "post": "200 302 302 302 302 302 302 302   -",
        "put": "200 302 302 302 302 302 302 302   -",
    },
    "logout": {"get": "405 405 405 405 405 405 405 405 405", "post": "  L   L   L   L   L   L   L   L   -"},
    "ui-inbox": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 302 302 302 302 302 302 302   -"},
    "ui-department-list": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 200 200 200 200 200 200 200   -"},
    "ui-department-detail": {
        "get": "  L 200 200 200 200 200 200 200 200",
        "post": "  L 200 200 200 200 200 200 200   -",
    },
    "ui-department-edit": {"get": "  L 403 403 403 403 403 403 403 403", "post": "  L 403 403 403 403 403 403 403   -"},
    "ui-member-add": {"get": "  L 405 405 405 405 405 405 405 405", "post": "  L 403 403 403 403 403 403 403   -"},
    "ui-member-role": {"get": "  L 405 405 405 405 405 405 405 405", "post": "  L 403 403 403 403 403 403 403   -"},
    "ui-member-remove": {"get": "  L 405 405 405 405 405 405 405 405", "post": "  L 403 403 403 403 403 403 403   -"},
    "ui-city-roles": {"get": "  L 404 404 404 404 404 404 404 404", "post": "  L 404 404 404 404 404 404 404   -"},
    "ui-city-role-revoke": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 404   -",
    },
    "ui-account": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 200 200 200 200 200 200 200   -"},
    "ui-token-issue": {"get": "  L 405 405 405 405 405 405 405 405", "post": "  L 200 200 200 200 200 200 200   -"},
    "ui-token-revoke": {"get": "  L 405 405 405 405 405 405 405 405", "post": "  L 404 404 404 404 404 404 404   -"},
    "ui-catalogue": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 200 200 200 200 200 200 200   -"},
    "ui-dataset-create": {"get": "  L 403 403 403 200 403 403 200 200", "post": "  L 403 403 403 200 403 403 200   -"},
    "ui-dataset-detail": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 200 200 200 200 200 200 200   -"},
    "ui-dataset-detail [restricted dataset]": {
        "get": "  L 404 404 404 404 200 200 404 200",
        "post": "  L 404 404 404 404 200 200 404   -",
    },
    "ui-dataset-edit": {"get": "  L 403 403 403 403 403 403 403 403", "post": "  L 403 403 403 403 403 403 403   -"},
    "ui-dataset-edit [restricted dataset]": {
        "get": "  L 404 404 404 404 403 403 404 403",
        "post": "  L 404 404 404 404 403 403 404   -",
    },
    "ui-dataset-schema": {"get": "  L 403 403 403 403 403 403 403 403", "post": "  L 403 403 403 403 403 403 403   -"},
    "ui-dataset-schema [restricted dataset]": {
        "get": "  L 404 404 404 404 403 403 404 403",
        "post": "  L 404 404 404 404 403 403 404   -",
    },
    "ui-dataset-delete": {"get": "  L 405 405 405 405 405 405 405 405", "post": "  L 403 403 403 403 403 403 403   -"},
    "ui-dataset-delete [restricted dataset]": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 403 403 404   -",
    },
    "ui-dataset-transition": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 400 400 400 400 400 400 400   -",
    },
    "ui-dataset-transition [restricted dataset]": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 400 400 404   -",
    },
    "ui-review-queue": {"get": "  L 403 403 403 403 403 403 403 403", "post": "  L 403 403 403 403 403 403 403   -"},
    "ui-review-detail": {"get": "  L 403 403 403 403 403 403 403 403", "post": "  L 403 403 403 403 403 403 403   -"},
    "ui-review-detail [restricted dataset]": {
        "get": "  L 403 403 403 403 403 403 403 403",
        "post": "  L 403 403 403 403 403 403 403   -",
    },
    "ui-dataset-records": {"get": "  L 403 403 200 403 403 403 200 200", "post": "  L 403 403 200 403 403 403 200   -"},
    "ui-dataset-records [restricted dataset]": {
        "get": "  L 404 404 404 404 403 403 404 200",
        "post": "  L 404 404 404 404 403 403 404   -",
    },
    "ui-dataset-records [filter on a hidden field]": {"get": "  L 403 403 400 403 403 403 400 200"},
    "ui-dataset-records [order by a hidden field]": {"get": "  L 403 403 400 403 403 403 400 200"},
    "ui-dataset-sync": {"get": "  L 404 404 404 404 404 404 404 200", "post": "  L 404 404 404 404 404 404 404   -"},
    "ui-dataset-sync [restricted dataset]": {
        "get": "  L 404 404 404 404 404 404 404 200",
        "post": "  L 404 404 404 404 404 404 404   -",
    },
    "ui-dataset-sync-run": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 404   -",
    },
    "ui-dataset-sync-run [restricted dataset]": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 404   -",
    },
    "ui-dataset-sync-upload": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 404   -",
    },
    "ui-dataset-sync-upload [restricted dataset]": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 404   -",
    },
    "ui-dataset-source": {"get": "  L 404 404 404 404 404 404 404 200", "post": "  L 404 404 404 404 404 404 404   -"},
    "ui-dataset-source [restricted dataset]": {
        "get": "  L 404 404 404 404 404 404 404 200",
        "post": "  L 404 404 404 404 404 404 404   -",
    },
    "ui-dataset-sync-schedule": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 404   -",
    },
    "ui-dataset-sync-schedule [restricted dataset]": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 404   -",
    },
    "ui-dataset-source-remove": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 404   -",
    },
    "ui-dataset-source-remove [restricted dataset]": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 404   -",
    },
    "ui-sync": {"get": "  L 404 404 404 200 404 404 200 200", "post": "  L 404 404 404 200 404 404 200   -"},
    "ui-connection-create": {
        "get": "  L 404 404 404 200 404 404 200 200",
        "post": "  L 404 404 404 200 404 404 200   -",
    },
    "ui-connection": {"get": "  L 404 404 404 404 404 404 404 200", "post": "  L 404 404 404 404 404 404 404   -"},
    "ui-connection [parks' connection]": {
        "get": "  L 404 404 404 404 404 404 200 404",
        "post": "  L 404 404 404 404 404 404 200   -",
    },
    "ui-connection-test": {"get": "  L 405 405 405 405 405 405 405 405", "post": "  L 404 404 404 404 404 404 404   -"},
    "ui-connection-test [parks' connection]": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 302   -",
    },
    "ui-connection-delete": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 404   -",
    },
    "ui-connection-delete [parks' connection]": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 302   -",
    },
    "ui-subscription-create": {
        "get": "  L 404 404 404 200 404 404 200 200",
        "post": "  L 404 404 404 200 404 404 200   -",
    },
    "ui-subscription": {"get": "  L 404 404 404 404 404 404 200 200", "post": "  L 404 404 404 404 404 404 200   -"},
    "ui-subscription-schedule": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 302   -",
    },
    "ui-subscription-pause": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 302   -",
    },
    "ui-subscription-run": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 302   -",
    },
    "ui-subscription-end": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 302   -",
    },
    "ui-subscription-purge": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 302   -",
    },
    "ui-subscription-remove": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 302   -",
    },
    "ui-run-detail": {"get": "  L 404 404 404 404 404 404 404 200", "post": "  L 404 404 404 404 404 404 404   -"},
    "ui-run-detail [delivery run]": {
        "get": "  L 404 404 404 404 404 404 200 200",
        "post": "  L 404 404 404 404 404 404 200   -",
    },
    "ui-run-cancel": {"get": "  L 405 405 405 405 405 405 405 405", "post": "  L 404 404 404 404 404 404 404   -"},
    "ui-run-cancel [delivery run]": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 302   -",
    },
    "ui-request-access": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 400 400 400 400 400 400 400   -"},
    "ui-request-access [restricted dataset]": {
        "get": "  L 404 404 404 404 200 200 404 200",
        "post": "  L 404 404 404 404 400 400 404   -",
    },
    "ui-access-explain": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 200 200 200 200 200 200 200   -"},
    "ui-access-explain [restricted dataset]": {
        "get": "  L 404 404 404 404 200 200 404 200",
        "post": "  L 404 404 404 404 200 200 404   -",
    },
    "ui-access-explain [the partial analyst]": {"get": "  L 200 200 200 200 200 200 200 200"},
    "ui-access": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 200 200 200 200 200 200 200   -"},
    "ui-access-requests": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 200 200 200 200 200 200 200   -"},
    "ui-access-request": {"get": "  L 404 404 200 404 200 200 404 200", "post": "  L 404 404 200 404 200 200 404   -"},
    "ui-access-request [parks' request]": {
        "get": "  L 404 404 404 404 200 200 200 200",
        "post": "  L 404 404 404 404 200 200 200   -",
    },
    "ui-access-request-withdraw": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 409 404 403 403 404   -",
    },
    "ui-access-request-withdraw [parks' request]": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 403 403 409   -",
    },
    "ui-access-request-decide": {
        "get": "  L 404 404 403 404 403 403 404 200",
        "post": "  L 404 404 403 404 403 403 404   -",
    },
    "ui-access-request-decide [parks' request]": {
        "get": "  L 404 404 404 404 403 403 403 200",
        "post": "  L 404 404 404 404 403 403 403   -",
    },
    "ui-my-grants": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 200 200 200 200 200 200 200   -"},
    "ui-department-grants": {
        "get": "  L 403 403 403 200 403 403 200 200",
        "post": "  L 403 403 403 200 403 403 200   -",
    },
    "ui-grant-action": {"get": "  L 405 405 405 405 405 405 405 405", "post": "  L 404 404 403 404 403 403 404   -"},
    "ui-grant-action [parks' grant]": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 403 403 403   -",
    },
    "ui-dpo-queue": {"get": "  L 403 403 403 403 403 403 403 403", "post": "  L 403 403 403 403 403 403 403   -"},
    "ui-audit": {"get": "  L 403 403 403 403 200 200 403 403", "post": "  L 403 403 403 403 200 200 403   -"},
    "ui-audit-timeline": {"get": "  L 403 403 403 403 200 200 403 403", "post": "  L 403 403 403 403 200 200 403   -"},
    "ui-audit-timeline [restricted dataset]": {
        "get": "  L 404 404 404 404 200 200 404 403",
        "post": "  L 404 404 404 404 200 200 404   -",
    },
    "ui-audit-who-could-see": {
        "get": "  L 403 403 403 403 200 200 403 403",
        "post": "  L 403 403 403 403 200 200 403   -",
    },
    "ui-audit-verify": {"get": "  L 403 403 403 403 200 200 403 403", "post": "  L 403 403 403 403 200 200 403   -"},
    "ui-dashboard": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 200 200 200 200 200 200 200   -"},
    "ui-city": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 405 405 405 405 405 405 405   -"},
    "ui-dashboard-requests": {
        "get": "  L 200 200 200 200 200 200 200 200",
        "post": "  L 200 200 200 200 200 200 200   -",
    },
    "ui-dashboard-grants": {
        "get": "  L 200 200 200 200 200 200 200 200",
        "post": "  L 200 200 200 200 200 200 200   -",
    },
    "ui-dashboard-sync": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 200 200 200 200 200 200 200   -"},
    "ui-dashboard-audit": {"get": "  L 403 403 403 403 200 200 403 403", "post": "  L 403 403 403 403 200 200 403   -"},
    "auth-login": {"get": "405 405 405 405 405 405 405 405 405", "post": "400 400 400 400 400 400 400 400   -"},
    "auth-logout": {"get": "401 405 405 405 405 405 405 405 405", "post": "401 204 204 204 204 204 204 204   -"},
    "auth-tokens": {"get": "401 200 200 200 200 200 200 200 200"},
    "auth-token-detail": {
        "get": "401 405 405 405 405 405 405 405 405",
        "delete": "401 404 404 404 404 404 404 404   -",
    },
    "me": {"get": "401 200 200 200 200 200 200 200 200"},
    "department-list": {"get": "401 200 200 200 200 200 200 200 200", "post": "401 403 403 403 403 403 403 403   -"},
    "department-detail": {"get": "401 200 200 200 200 200 200 200 200", "patch": "401 403 403 403 403 403 403 403   -"},
    "membership-list": {"get": "401 403 403 403 403 200 200 403 200", "post": "401 403 403 403 403 403 403 403   -"},
    "membership-detail": {
        "get": "401 403 403 403 403 200 200 403 200",
        "patch": "401 403 403 403 403 403 403 403   -",
        "delete": "401 403 403 403 403 403 403 403   -",
    },
    "inbox": {"get": "401 200 200 200 200 200 200 200 200"},
    "inbox-read": {"get": "401 405 405 405 405 405 405 405 405", "post": "401 200 200 200 200 200 200 200   -"},
    "city-role-list": {"get": "401 403 403 403 403 403 403 403 403", "post": "401 403 403 403 403 403 403 403   -"},
    "city-role-detail": {"get": "401 403 403 403 403 403 403 403 403", "delete": "401 403 403 403 403 403 403 403   -"},
    "dataset-list": {"get": "401 200 200 200 200 200 200 200 200", "post": "401 400 400 400 400 400 400 400   -"},
    "dataset-detail": {
        "get": "401 200 200 200 200 200 200 200 200",
        "patch": "401 403 403 403 403 403 403 403   -",
        "delete": "401 403 403 403 403 403 403 403   -",
    },
    "dataset-detail [restricted dataset]": {
        "get": "401 404 404 404 404 200 200 404 200",
        "patch": "401 404 404 404 404 403 403 404   -",
        "delete": "401 404 404 404 404 403 403 404   -",
    },
    "dataset-schema": {"get": "401 200 200 200 200 200 200 200 200", "put": "401 403 403 403 403 403 403 403   -"},
    "dataset-schema [restricted dataset]": {
        "get": "401 404 404 404 404 200 200 404 200",
        "put": "401 404 404 404 404 403 403 404   -",
    },
    "dataset-schema-versions": {"get": "401 200 200 200 200 200 200 200 200"},
    "dataset-schema-versions [restricted dataset]": {"get": "401 404 404 404 404 200 200 404 200"},
    "dataset-transition": {"get": "401 405 405 405 405 405 405 405 405", "post": "401 400 400 400 400 400 400 400   -"},
    "dataset-transition [restricted dataset]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 400 400 404   -",
    },
    "dataset-timeline": {"get": "401 200 200 200 200 200 200 200 200"},
    "dataset-timeline [restricted dataset]": {"get": "401 404 404 404 404 200 200 404 200"},
    "dataset-search": {"get": "401 200 200 200 200 200 200 200 200"},
    "dataset-search [search]": {"get": "401 200 200 200 200 200 200 200 200"},
    "review-queue": {"get": "401 403 403 403 403 403 403 403 403"},
    "health": {"get": "200 200 200 200 200 200 200 200 200"},
    "dataset-records": {"get": "401 403 403 200 403 403 403 200 200"},
    "dataset-records [restricted dataset]": {"get": "401 404 404 404 404 403 403 404 200"},
    "dataset-records [filter on a hidden field]": {"get": "401 403 403 400 403 403 403 400 200"},
    "dataset-records [search]": {"get": "401 403 403 200 403 403 403 200 200"},
    "dataset-records [order by a hidden field]": {"get": "401 403 403 400 403 403 403 400 200"},
    "dataset-records [select a hidden field]": {"get": "401 403 403 400 403 403 403 400 200"},
    "dataset-records [filter a masked field by its clear value]": {"get": "401 403 403 200 403 403 403 400 200"},
    "dataset-records [filter a pseudonymised field by its clear value]": {"get": "401 403 403 200 403 403 403 400 200"},
    "dataset-records [order by a masked field]": {"get": "401 403 403 200 403 403 403 400 200"},
    "dataset-records [the owner's cursor]": {"get": "401 403 403 400 403 403 403 400 200"},
    "dataset-records [a forged cursor]": {"get": "401 403 403 400 403 403 403 400 400"},
    "dataset-export": {"get": "401 403 403 200 403 403 403 200 200"},
    "dataset-export [restricted dataset]": {"get": "401 404 404 404 404 403 403 404 200"},
    "dataset-export [csv, filter on a hidden field]": {"get": "401 403 403 400 403 403 403 400 200"},
    "dataset-export [ndjson, order by a hidden field]": {"get": "401 403 403 400 403 403 403 400 200"},
    "dataset-preview": {"get": "401 403 403 200 403 403 403 200 200"},
    "dataset-preview [restricted dataset]": {"get": "401 404 404 404 404 403 403 404 200"},
    "dataset-preview [order by a hidden field]": {"get": "401 403 403 200 403 403 403 200 200"},
    "audit-event-list": {"get": "401 403 403 403 403 200 200 403 403"},
    "audit-event-export": {"get": "401 403 403 403 403 200 200 403 403"},
    "audit-report-user": {"get": "401 403 403 403 403 200 200 403 403"},
    "audit-report-department": {"get": "401 403 403 403 403 200 200 403 403"},
    "audit-verify": {"get": "401 403 403 403 403 200 200 403 403"},
    "audit-who-could-see": {"get": "401 403 403 403 403 400 400 403 403"},
    "audit-who-could-see [restricted dataset]": {"get": "401 404 404 404 404 400 400 404 403"},
    "audit-who-could-see [a hidden field]": {"get": "401 403 403 403 403 200 200 403 403"},
    "audit-grant-timeline": {"get": "401 403 403 403 403 200 200 403 403"},
    "audit-grant-timeline [restricted dataset]": {"get": "401 404 404 404 404 200 200 404 403"},
    "sync-connections": {"get": "401 200 200 200 200 200 200 200 200", "post": "401 400 400 400 400 400 400 400   -"},
    "sync-connection": {
        "get": "401 404 404 404 404 404 404 404 200",
        "patch": "401 404 404 404 404 404 404 404   -",
        "delete": "401 404 404 404 404 404 404 404   -",
    },
    "sync-connection [parks' connection]": {
        "get": "401 404 404 404 404 404 404 200 404",
        "patch": "401 404 404 404 404 404 404 200   -",
        "delete": "401 404 404 404 404 404 404 409   -",
    },
    "sync-connection-test": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 404   -",
    },
    "sync-connection-test [parks' connection]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 200   -",
    },
    "dataset-source": {
        "get": "401 404 404 404 404 404 404 404 200",
        "put": "401 404 404 404 404 404 404 404   -",
        "delete": "401 404 404 404 404 404 404 404   -",
    },
    "dataset-source [restricted dataset]": {
        "get": "401 404 404 404 404 404 404 404 404",
        "put": "401 404 404 404 404 404 404 404   -",
        "delete": "401 404 404 404 404 404 404 404   -",
    },
    "dataset-source-upload": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 404   -",
    },
    "dataset-source-upload [restricted dataset]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 404   -",
    },
    "dataset-source-run": {"get": "401 405 405 405 405 405 405 405 405", "post": "401 404 404 404 404 404 404 404   -"},
    "dataset-source-run [restricted dataset]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 404   -",
    },
    "sync-runs": {"get": "401 200 200 200 200 200 200 200 200"},
    "sync-run": {"get": "401 404 404 404 404 404 404 404 200"},
    "sync-run [delivery run]": {"get": "401 404 404 404 404 404 404 200 200"},
    "sync-run-cancel": {"get": "401 405 405 405 405 405 405 405 405", "post": "401 404 404 404 404 404 404 404   -"},
    "sync-run-cancel [delivery run]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 409   -",
    },
    "sync-run-quarantine": {"get": "401 404 404 404 404 404 404 404 200"},
    "sync-run-quarantine [delivery run]": {"get": "401 404 404 404 404 404 404 200 200"},
    "sync-subscriptions": {"get": "401 200 200 200 200 200 200 200 200", "post": "401 400 400 400 400 400 400 400   -"},
    "sync-subscription": {
        "get": "401 404 404 404 404 404 404 200 200",
        "patch": "401 404 404 404 404 404 404 200   -",
        "delete": "401 404 404 404 404 404 404 409   -",
    },
    "sync-subscription-run": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 202   -",
    },
    "sync-subscription-end": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 200   -",
    },
    "sync-subscription-purge": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 400   -",
    },
    "access-request-list": {
        "get": "401 200 200 200 200 200 200 200 200",
        "post": "401 400 400 400 400 400 400 400   -",
    },
    "access-request-detail": {"get": "401 404 404 200 404 200 200 404 200"},
    "access-request-detail [parks' request]": {"get": "401 404 404 404 404 200 200 200 200"},
    "access-request-withdraw": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 409 404 403 403 404   -",
    },
    "access-request-withdraw [parks' request]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 403 403 409   -",
    },
    "access-request-comment": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 400 404 400 400 404   -",
    },
    "access-request-comment [parks' request]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 400 400 400   -",
    },
    "access-request-decide": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 400 404 400 400 404   -",
    },
    "access-request-decide [parks' request]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 400 400 400   -",
    },
    "access-request-form-defaults": {"get": "401 404 404 200 404 200 200 404 200"},
    "access-request-form-defaults [parks' request]": {"get": "401 404 404 404 404 200 200 200 200"},
    "access-pending": {"get": "401 200 200 200 200 200 200 200 200"},
    "grant-list": {"get": "401 200 200 200 200 200 200 200 200"},
    "grant-detail": {"get": "401 404 404 200 404 200 200 404 200"},
    "grant-detail [parks' grant]": {"get": "401 404 404 404 404 200 200 200 200"},
    "grant-dpo-approve": {"get": "401 405 405 405 405 405 405 405 405", "post": "401 404 404 403 404 403 403 404   -"},
    "grant-dpo-approve [parks' grant]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 403 403 403   -",
    },
    "grant-dpo-reject": {"get": "401 405 405 405 405 405 405 405 405", "post": "401 404 404 400 404 400 400 404   -"},
    "grant-dpo-reject [parks' grant]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 400 400 400   -",
    },
    "grant-revoke": {"get": "401 405 405 405 405 405 405 405 405", "post": "401 404 404 400 404 400 400 404   -"},
    "grant-revoke [parks' grant]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 400 400 400   -",
    },
    "grant-certify": {"get": "401 405 405 405 405 405 405 405 405", "post": "401 404 404 403 404 403 403 404   -"},
    "grant-certify [parks' grant]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 403 403 403   -",
    },
    "dataset-access-explain": {"get": "401 400 400 400 400 400 400 400 400"},
    "dataset-access-explain [restricted dataset]": {"get": "401 404 404 404 404 400 400 404 400"},
    "dataset-access-explain [the partial analyst]": {"get": "401 403 403 200 403 200 200 403 200"},
    "dataset-access-explain [an unknown user]": {"get": "401 403 403 403 403 400 400 403 400"},
    "dataset-access-explain [parks]": {"get": "401 403 403 403 403 200 200 200 200"},
    "schema": {"get": "200 200 200 200 200 200 200 200 200"},
    "api-docs": {"get": "200 200 200 200 200 200 200 200 200"},
    "api-redoc": {"get": "200 200 200 200 200 200 200 200 200"},
    "ckan-action": {"get": "404 200 200 200 200 200 200 200 200", "post": "404 200 200 200 200 200 200 200   -"},
    "ckan-action [package_show, restricted dataset]": {
        "get": "404 404 404 404 404 200 200 404 200",
        "post": "404 404 404 404 404 200 200 404   -",
    },
    "ckan-action [datastore_search]": {
        "get": "403 403 403 200 403 403 403 200 200",
        "post": "403 403 403 200 403 403 403 200   -",
    },
    "ckan-action [datastore_search, restricted dataset]": {
        "get": "403 404 404 404 404 403 403 404 200",
        "post": "403 404 404 404 404 403 403 404   -",
    },
    "ckan-action [datastore_search, search]": {
        "get": "403 403 403 200 403 403 403 200 200",
        "post": "403 403 403 200 403 403 403 200   -",
    },
    "ckan-action [datastore_search, filter on a hidden field]": {
        "get": "403 403 403 409 403 403 403 409 200",
        "post": "403 403 403 409 403 403 403 409   -",
    },
    "ckan-action [datastore_search, sort by a masked field]": {
        "get": "403 403 403 200 403 403 403 409 200",
        "post": "403 403 403 200 403 403 403 409   -",
    },
    "ckan-action [datastore_search, select a hidden field]": {
        "get": "403 403 403 409 403 403 403 409 200",
        "post": "403 403 403 409 403 403 403 409   -",
    },
    "ckan-action [package_search]": {
        "get": "200 200 200 200 200 200 200 200 200",
        "post": "200 200 200 200 200 200 200 200   -",
    },
    "ckan-action [package_list]": {
        "get": "200 200 200 200 200 200 200 200 200",
        "post": "200 200 200 200 200 200 200 200   -",
    },
    "ckan-action [organization_show]": {
        "get": "200 200 200 200 200 200 200 200 200",
        "post": "200 200 200 200 200 200 200 200   -",
    },
    "ckan-action [organization_list]": {
        "get": "200 200 200 200 200 200 200 200 200",
        "post": "200 200 200 200 200 200 200 200   -",
    },
    "ckan-action [tag_list]": {
        "get": "200 200 200 200 200 200 200 200 200",
        "post": "200 200 200 200 200 200 200 200   -",
    },
    "ckan-action [status_show]": {
        "get": "200 200 200 200 200 200 200 200 200",
        "post": "200 200 200 200 200 200 200 200   -",
    },
    "ckan-action [no_such_action]": {
        "get": "400 400 400 400 400 400 400 400 400",
        "post": "400 400 400 400 400 400 400 400   -",
    },
    "dcat-catalog": {"get": "200 200 200 200 200 200 200 200 200"},
    "dcat-dataset": {"get": "404 200 200 200 200 200 200 200 200"},
    "dcat-dataset [restricted dataset]": {"get": "404 404 404 404 404 200 200 404 200"},
    "dcat-dataset [turtle]": {"get": "404 200 200 200 200 200 200 200 200"},
    # Requested data: the routed request is seen by everyone signed in; parks' withdrawn one only by
    # its requester (parks' steward). Writes are validated before the service is asked.
    "data-request-list": {"get": "401 200 200 200 200 200 200 200 200", "post": "401 400 400 400 400 400 400 400   -"},
    "data-request-detail": {"get": "401 200 200 200 200 200 200 200 200"},
    "data-request-detail [parks' withdrawn data request]": {"get": "401 404 404 404 404 404 404 200 404"},
    "data-request-route": {"get": "401 405 405 405 405 405 405 405 405", "post": "401 400 400 400 400 400 400 400   -"},
    "data-request-route [parks' withdrawn data request]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 400   -",
    },
    "data-request-duplicate": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 400 400 400 400 400 400 400   -",
    },
    "data-request-duplicate [parks' withdrawn data request]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 400   -",
    },
    "data-request-accept": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 403 403 403 403 403 403 403   -",
    },
    "data-request-accept [parks' withdrawn data request]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 403   -",
    },
    "data-request-decline": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 400 400 400 400 400 400 400   -",
    },
    "data-request-decline [parks' withdrawn data request]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 400   -",
    },
    "data-request-fulfil": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 400 400 400 400 400 400 400   -",
    },
    "data-request-fulfil [parks' withdrawn data request]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 400   -",
    },
    "data-request-withdraw": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 403 403 200 403 403 403 403   -",
    },
    "data-request-withdraw [parks' withdrawn data request]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 409   -",
    },
    "data-request-join": {"get": "401 405 405 405 405 405 405 405 405", "post": "401 400 400 400 400 400 400 400   -"},
    "data-request-join [parks' withdrawn data request]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 400   -",
    },
    "data-request-leave": {"get": "401 405 405 405 405 405 405 405 405", "post": "401 409 409 409 409 409 409 409   -"},
    "data-request-leave [parks' withdrawn data request]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 404 404 409   -",
    },
    "objection-list": {"get": "401 200 200 200 200 200 200 200 200", "post": "401 400 400 400 400 400 400 400   -"},
    "objection-detail": {"get": "401 404 200 200 200 200 200 404 200"},
    "objection-detail [parks' objection]": {"get": "401 404 404 404 404 200 200 200 200"},
    "objection-accept": {"get": "401 405 405 405 405 405 405 405 405", "post": "401 404 400 400 400 400 400 404   -"},
    "objection-accept [parks' objection]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 400 400 400   -",
    },
    "objection-reject": {"get": "401 405 405 405 405 405 405 405 405", "post": "401 404 400 400 400 400 400 404   -"},
    "objection-reject [parks' objection]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 400 400 400   -",
    },
    "objection-withdraw": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 403 200 403 403 403 404   -",
    },
    "objection-withdraw [parks' objection]": {
        "get": "401 405 405 405 405 405 405 405 405",
        "post": "401 404 404 404 404 403 403 200   -",
    },
    "ui-data-requests": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 200 200 200 200 200 200 200   -"},
    "ui-data-request-create": {
        "get": "  L 200 200 200 200 200 200 200 200",
        "post": "  L 200 200 200 200 200 200 200   -",
    },
    "ui-data-request": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 200 200 200 200 200 200 200   -"},
    "ui-data-request [parks' withdrawn data request]": {
        "get": "  L 404 404 404 404 404 404 200 404",
        "post": "  L 404 404 404 404 404 404 200   -",
    },
    "ui-data-request-access": {
        "get": "  L 302 302 302 302 302 302 302 302",
        "post": "  L 302 302 302 302 302 302 302   -",
    },
    "ui-data-request-access [parks' withdrawn data request]": {
        "get": "  L 404 404 404 404 404 404 302 404",
        "post": "  L 404 404 404 404 404 404 302   -",
    },
    "ui-data-request-step": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 400 400 409 400 400 400 400   -",
    },
    "ui-data-request-step [parks' withdrawn data request]": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 409   -",
    },
    "ui-data-request-step [route]": {"post": "  L 400 400 400 400 400 400 400   -"},
    "ui-data-request-step [duplicate]": {"post": "  L 400 400 400 400 400 400 400   -"},
    "ui-data-request-step [accept]": {"post": "  L 403 403 403 403 403 403 403   -"},
    "ui-data-request-step [decline]": {"post": "  L 403 403 403 403 403 403 403   -"},
    "ui-data-request-step [fulfil]": {"post": "  L 400 400 400 400 400 400 400   -"},
    "ui-data-request-step [withdraw]": {"post": "  L 403 403 302 403 403 403 403   -"},
    "ui-data-request-step [leave]": {"post": "  L 409 409 409 409 409 409 409   -"},
    "ui-data-request-step [no-such-step]": {"post": "  L 404 404 404 404 404 404 404   -"},
    "ui-objections": {"get": "  L 200 200 200 200 200 200 200 200", "post": "  L 200 200 200 200 200 200 200   -"},
    "ui-objection": {"get": "  L 404 200 200 200 200 200 404 200", "post": "  L 404 200 200 200 200 200 404   -"},
    "ui-objection [parks' objection]": {
        "get": "  L 404 404 404 404 200 200 200 200",
        "post": "  L 404 404 404 404 200 200 200   -",
    },
    "ui-objection-step": {"get": "  L 405 405 405 405 405 405 405 405", "post": "  L 404 404 404 404 404 404 404   -"},
    "ui-objection-step [parks' objection]": {
        "get": "  L 405 405 405 405 405 405 405 405",
        "post": "  L 404 404 404 404 404 404 404   -",
    },
    "ui-objection-step [accept]": {"post": "  L 404 403 403 403 403 403 404   -"},
    "ui-objection-step [reject]": {"post": "  L 404 403 403 403 403 403 404   -"},
    "ui-objection-step [withdraw]": {"post": "  L 404 403 302 403 403 403 404   -"},
    "ui-objection-step [no-such-step]": {"post": "  L 404 404 404 404 404 404 404   -"},
    "ui-objection-create": {
        "get": "  L 403 403 200 403 403 403 200 403",
        "post": "  L 403 403 200 403 403 403 200   -",
    },
    "ui-objection-create [restricted dataset]": {
        "get": "  L 404 404 404 404 403 403 404 403",
        "post": "  L 404 404 404 404 403 403 404   -",
    },
}


@dataclass
class Asked:
    key: str
    method: str
    url: str
    api: bool
    missing_url: str = ""  # the same URL with its object replaced by one that does not exist


@dataclass
class Walk:
    statuses: dict[tuple[str, str], int | str] = field(default_factory=dict)
    leaks: list[str] = field(default_factory=list)
    owner_saw: set[str] = field(default_factory=set)


def _ckan_url(route: Route, values: dict[str, Any]) -> dict[str, Any]:
    return {**values, "action": "package_show"} if route.name == "ckan-action" else values


def asked(world: World) -> list[Asked]:
    """Every (URL, variant, method) the sweep asks, generated from the resolver."""
    base = path_values(world)
    out: list[Asked] = []
    for route in routes():
        values = _ckan_url(route, base)
        query = f"?id={world.dataset.pk}" if route.name == "ckan-action" else ""
        for method in route.methods():
            out.append(Asked(f"{route.name} {route.template}", method, route.fill(values) + query, route.is_api,
                             _missing(route, values, query)))
        variants = [OTHER_OBJECTS[p] for p in route.params if p in OTHER_OBJECTS]
        if route.name != "ckan-action" or route.template.startswith("/api/3/"):
            variants += VARIANTS.get(route.name, [])
        for variant in variants:
            filled = {**values, **variant.values(world)}
            url = route.fill(filled) + variant.query(world)
            for method in route.methods():
                if variant.methods is None or method in variant.methods:
                    out.append(Asked(f"{route.name} {route.template} [{variant.label}]", method, url, route.is_api,
                                     _missing(route, filled, variant.query(world))))
    return out


MISSING = {"slug": "no-such-department", "username": "no-such-user", "token_key": "nosuchkey"}


def _missing(route: Route, values: dict[str, Any], query: str) -> str:
    """The URL with its first object (a path id, or the id CKAN takes in its query) replaced by
    one that does not exist; empty if the URL names no object."""
    for param in route.params:
        if param in ("action", "fmt"):
            continue
        return route.fill({**values, param: MISSING.get(param, 987654)}) + query
    if route.name == "ckan-action" and re.search(r"(?:^|[?&])(?:resource_)?id=\d+", query):
        return route.fill(values) + re.sub(r"((?:^|[?&])(?:resource_)?id=)\d+", r"\g<1>987654", query)
    return ""


def status_of(response: Any) -> int | str:
    if response.status_code == 302 and response["Location"].startswith(("/accounts/login/", "/admin/login/")):
        return L
    return int(response.status_code)


def expected(item: Asked, role: str) -> str:
    return EXPECT[_key(item)][item.method].split()[ROLES.index(role)]


def walk(client: Client, world: World, role: str) -> Walk:
    result = Walk()
    forbidden = (CANARY_SECRET,) if role == "owner_steward" else CANARIES
    login(client, world, role)
    for item in asked(world):
        if item.method != "get" and role == "owner_steward":
            continue
        if role != "anonymous" and not client.cookies.get(settings.SESSION_COOKIE_NAME, Morsel()).value:
            login(client, world, role)  # a logout URL ended the session
        with transaction.atomic():
            response = call(client, item.method, item.url, api=item.api)
            body = body_of(response)
            transaction.set_rollback(True)
        result.statuses[(item.key, item.method)] = status_of(response)
        result.leaks += [f"{item.method.upper()} {item.url}: {c}" for c in forbidden if c in body]
        if role == "owner_steward":
            result.owner_saw |= {c for c in OWNER_CANARIES if c in body}
    return result


def _key(item: Asked) -> str:
    name, rest = item.key.split(" ", 1)
    label = rest.split(" [", 1)[1].rstrip("]") if " [" in rest else ""
    return f"{name} [{label}]" if label else name


def test_every_url_is_in_the_table():
    """A new URL must be added to EXPECT (and an old one removed)."""
    names = [route.name for route in routes()]
    assert "" not in names, "every URL pattern needs a name, so the sweep can key its expectations"
    unknown = sorted(set(names) - set(EXPECT))
    assert not unknown, f"URLs the sweep does not know: add them to EXPECT with each caller's answer: {unknown}"
    variant_names = {key.split(" [")[0] for key in EXPECT}
    assert variant_names <= set(names), f"EXPECT names URLs that no longer exist: {variant_names - set(names)}"


def test_every_ckan_action_is_swept():
    from catalog.ckan import ACTIONS

    swept = {v.label.split(",")[0] for v in VARIANTS["ckan-action"]} | {"package_show"}
    assert set(ACTIONS) <= swept, set(ACTIONS) - swept


@pytest.mark.parametrize("role", ROLES)
def test_sweep(client, role):
    world = build_world()
    result = walk(client, world, role)
    column = ROLES.index(role)
    wrong = []
    expected_keys = set()
    for item in asked(world):
        key = _key(item)
        expected_keys.add(key)
        row = EXPECT.get(key, {}).get(item.method)
        assert row is not None, f"EXPECT has no row for {key} {item.method.upper()}"
        expected = row.split()[column]
        if expected == "-":
            continue
        got = result.statuses.get((item.key, item.method))
        if str(got) != expected:
            wrong.append(f"{item.method.upper()} {item.url} ({key}): expected {expected}, got {got}")
    assert not wrong, f"{role}:\n" + "\n".join(wrong)
    assert not result.leaks, f"{role} received canaries:\n" + "\n".join(result.leaks)
    stale = set(EXPECT) - expected_keys
    assert not stale, f"EXPECT rows that nothing asks: {stale}"
    if role == "owner_steward":
        # The owner's stewards see their own data: proof the canaries are there to be found.
        assert {CANARY_NOTE, CANARY_QUARANTINE} <= result.owner_saw


def _normalised(body: str) -> str:
    """What differs between any two answers: the request id and the masked CSRF token."""
    return re.sub(r"X-Request-ID: \S+|\b[A-Za-z0-9]{64}\b", "<random>", body)


@pytest.mark.parametrize("role", [r for r in ROLES if r not in ("anonymous", "owner_steward")])
def test_not_yours_and_not_there_take_the_same_path(client, role):
    """Wherever a caller gets 404 for an object that exists, one that does not exist gives the
    same status and the same body, through the same number of queries: the answer and the work
    behind it do not depend on whether the object is there (no timing oracle either)."""
    world = build_world()
    login(client, world, role)
    compared, different = 0, []
    for item in asked(world):
        if not item.missing_url or expected(item, role) != "404":
            continue
        answers = []
        for url in (item.url, item.missing_url):
            # Each request finds the per-process principal cache in the same state (empty), so
            # that the first of the two does not warm it for the second.
            principals_forget_all()
            with transaction.atomic(), CaptureQueriesContext(connection) as queries:
                response = call(client, item.method, url, api=item.api)
                body = _normalised(body_of(response).replace(url, "<url>"))
                transaction.set_rollback(True)
            answers.append((response.status_code, body, len(queries)))
        compared += 1
        (status_a, body_a, queries_a), (status_b, body_b, queries_b) = answers
        if status_a != status_b or body_a != body_b or queries_a != queries_b:
            different.append(f"{item.method.upper()} {item.url} vs {item.missing_url}: statuses {status_a}/"
                             f"{status_b}, {queries_a}/{queries_b} queries, same body: {body_a == body_b}")
    assert compared > 20
    assert not different, "\n".join(different)


def admin_urls() -> list[str]:
    """The admin site's pages, generated from its registry: the index, each app's index, and
    each model's list, add, change, history and delete pages (object 1, which may not exist:
    the login redirect comes first)."""
    urls = [reverse("admin:index")]
    for model in admin.site._registry:
        opts = model._meta
        urls.append(reverse("admin:app_list", kwargs={"app_label": opts.app_label}))
        urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_add"))
        for page in ("change", "history", "delete"):
            urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_{page}", args=[1]))
    return sorted(set(urls))


@pytest.mark.parametrize("role", ROLES)
def test_the_admin_site_is_for_staff_only(client, role):
    world = build_world()
    login(client, world, role)
    urls = admin_urls()
    assert len(urls) > 10
    for url in urls:
        for method in ("get", "post"):
            with transaction.atomic():
                response = call(client, method, url, api=False)
                transaction.set_rollback(True)
            assert status_of(response) == L and response["Location"].startswith("/admin/login/"), (method, url)
            assert not any(c in body_of(response) for c in CANARIES)


def test_staff_do_reach_the_admin_site(client):
    from tests.factories import UserFactory

    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    assert client.get(reverse("admin:index")).status_code == 200
    for model in admin.site._registry:
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        assert client.get(url).status_code == 200, url


def test_probes_of_hidden_values_match_no_row(client):
    """A 200 to a probe must not depend on the hidden value: the same probes that find rows in
    the owner's view find none in the partial analyst's (search, filters on the clear value of
    a masked or pseudonymised field, CKAN's full-text search)."""
    world = build_world()
    base = f"/api/v1/datasets/{world.dataset.pk}/records/"
    probes = ["?q=NOTE-7f", "?phone__contains=PHONE-555", "?applicant_name=CANARY-NAME-Okafor-1"]
    ckan = f"/api/3/action/datastore_search?resource_id={world.dataset.pk}&q=NOTE-7f"
    login(client, world, "owner_steward")
    assert all(client.get(base + probe).json()["results"] for probe in probes)
    assert client.get(ckan).json()["result"]["total"] > 0
    login(client, world, "analyst_partial")
    assert client.get(base).json()["results"]  # the analyst does see rows
    for probe in probes:
        assert client.get(base + probe).json()["results"] == [], probe
    assert client.get(ckan).json()["result"]["total"] == 0
