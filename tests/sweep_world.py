"""The world the authorization sweep and the API fuzzer walk: three departments, a dataset with
planted canaries, requests, grants, runs with quarantined rows, connections, a subscription,
and the named people who ask.

- transport owns ``permits`` (canaries in the ungranted ``secret_note`` and in the clear form
  of the masked ``phone`` and pseudonymised ``applicant_name``), the restricted ``inspections``,
  a connection whose secret holds a canary, a source and an ingest run whose quarantined rows
  hold a canary;
- health is "another department": its admin (the outsider), its steward, an analyst holding a
  personal grant to part of ``permits`` and an analyst holding none;
- parks holds a department grant on ``permits`` and a subscription delivering it into its own
  connection, with a delivery run;
- a data request of health's partial analyst, routed to transport (seen by everyone signed in),
  and one that parks' steward withdrew (seen by nobody else of the sweep's callers).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from knox.models import AuthToken

from catalog.models import Dataset, Visibility
from departments import services as department_services
from departments.models import CityRoleAssignment, Department, Membership
from exchange.access.models import AccessRequest, Grant
from exchange.demand import services as demand_services
from exchange.demand.models import DataRequest
from exchange.objections import services as objection_services
from exchange.objections.models import Objection
from exchange.sync import secrets
from exchange.sync.models import Connection, QuarantinedRow, Run, RunStatus, Source, Subscription
from tests.access_factories import decide, submit
from tests.factories import DepartmentFactory, MembershipFactory, UserFactory
from tests.records_support import load_rows, published_dataset

CANARY_NOTE = "CANARY-SECRET-NOTE-7f3a"  # in secret_note, granted to nobody outside transport
CANARY_NAME = "CANARY-NAME-Okafor"  # applicant_name, pseudonymised in the partial grant
CANARY_PHONE = "CANARY-PHONE-5551234"  # phone, masked in the partial grant
CANARY_QUARANTINE = "CANARY-QUARANTINED-ROW-91c2"  # a raw source row of transport's ingest run
CANARY_SECRET = "CANARY-DSN-PASSWORD-44b0"  # the password in transport's connection DSN: nobody sees it
# What transport's own stewards may see; everyone else, nothing of it.
OWNER_CANARIES = (CANARY_NOTE, CANARY_NAME, CANARY_PHONE, CANARY_QUARANTINE)
CANARIES = (*OWNER_CANARIES, CANARY_SECRET)


def canary_rows(n: int = 6) -> list[dict[str, Any]]:
    districts = ["North", "South", "East"]
    return [
        {"permit_id": i, "applicant_name": f"{CANARY_NAME}-{i}", "phone": f"{CANARY_PHONE}{i:02d}",
         "district": districts[i % 3], "fee_eur": f"{100 + i}.50", "approved": i % 2 == 0,
         "submitted_on": dt.date(2026, 1, 1) + dt.timedelta(days=i), "secret_note": f"{CANARY_NOTE}-{i}"}
        for i in range(1, n + 1)
    ]


@dataclass
class World:
    transport: Department
    health: Department
    parks: Department
    dataset: Dataset
    restricted: Dataset  # transport's, restricted: unknown to health and parks
    people: dict[str, User]
    request: AccessRequest  # the partial analyst's, decided
    pending_request: AccessRequest  # parks', for its department, decided: the department grant
    grant: Grant  # the partial analyst's personal grant
    department_grant: Grant
    connection: Connection  # transport's, with a canary in its secret
    target: Connection  # parks'
    source: Source
    ingest_run: Run  # transport's, with quarantined rows
    subscription: Subscription  # parks'
    delivery_run: Run
    data_request: DataRequest  # health's partial analyst's, routed to transport
    hidden_data_request: DataRequest  # parks' steward's, withdrawn: unknown to everyone else
    objection: Objection  # health's partial analyst's, open, naming permit 1 (phone masked for them)
    hidden_objection: Objection  # parks' steward's: unknown to health
    membership: Membership  # transport's steward's
    city_role: CityRoleAssignment  # the city auditor's
    token_key: str  # transport's steward's API token
    ids: dict[str, Any] = field(default_factory=dict)


def build_world() -> World:
    transport = DepartmentFactory(code="transport", name="Transport", slug="transport")
    health = DepartmentFactory(code="health", name="Health", slug="health")
    parks = DepartmentFactory(code="parks", name="Parks", slug="parks")
    people: dict[str, Any] = {}
    membership: Membership = MembershipFactory(department=transport, role="steward")  # type: ignore[assignment]
    people["owner_steward"] = membership.user
    people["dept_auditor"] = MembershipFactory(department=transport, role="auditor").user
    people["outsider"] = MembershipFactory(department=health, role="admin").user
    people["analyst_nogrant"] = MembershipFactory(department=health, role="analyst").user
    people["analyst_partial"] = MembershipFactory(department=health, role="analyst").user
    people["steward_other"] = MembershipFactory(department=health, role="steward").user
    people["subscriber_steward"] = MembershipFactory(department=parks, role="steward").user
    people["city_auditor"] = UserFactory()
    city_role = department_services.city_role_grant(actor=None, user=people["city_auditor"], role="auditor")
    dpo = UserFactory()
    department_services.city_role_grant(actor=None, user=dpo, role="data_protection_officer")
    reviewer = UserFactory()
    department_services.city_role_grant(actor=None, user=reviewer, role="governance_reviewer")

    dataset = published_dataset(transport)
    load_rows(dataset, canary_rows())
    # Known only to transport, auditors and DPOs: everyone else must not learn it exists.
    restricted = published_dataset(transport, slug="inspections", visibility=Visibility.RESTRICTED)
    load_rows(restricted, canary_rows(2))

    from exchange.access.models import GrantStatus
    from exchange.access.services import grant_dpo_approve

    request = submit(actor=people["analyst_partial"], dataset=dataset,
                     fields=["permit_id", "district", "phone", "applicant_name"])
    decide(actor=people["owner_steward"], access_request=request,
           approve={"permit_id": "clear", "district": "clear", "phone": "masked",
                    "applicant_name": "pseudonymised"})
    grant = Grant.objects.get(request=request)
    if grant.status == GrantStatus.PENDING_DPO:
        grant = grant_dpo_approve(actor=dpo, grant=grant)
    dept_request = submit(actor=people["subscriber_steward"], dataset=dataset, department=parks,
                          fields=["permit_id", "district", "fee_eur"])
    decide(actor=people["owner_steward"], access_request=dept_request,
           approve={"permit_id": "clear", "district": "clear", "fee_eur": "clear"})
    department_grant = Grant.objects.get(request=dept_request)

    connection = Connection.objects.create(
        department=transport, name="Permits system", kind="postgresql",
        secret_encrypted=secrets.encrypt(f"postgresql://permits:{CANARY_SECRET}@127.0.0.1:9/permits"),
        redacted=secrets.redact(f"postgresql://permits:{CANARY_SECRET}@127.0.0.1:9/permits"),
    )
    target = Connection.objects.create(
        department=parks, name="Parks warehouse", kind="postgresql",
        secret_encrypted=secrets.encrypt("postgresql://parks:parks-pw@127.0.0.1:9/warehouse"),
        redacted=secrets.redact("postgresql://parks:parks-pw@127.0.0.1:9/warehouse"),
    )
    source = Source.objects.create(dataset=dataset, connection=connection, table="permits",
                                   mapping={n: n for n in ("permit_id", "district")})
    now = timezone.now()
    ingest_run = Run.objects.create(kind="ingest", source=source, dataset=dataset, status=RunStatus.SUCCEEDED,
                                    triggered_by=people["owner_steward"], rows_read=3, rows_inserted=2,
                                    rows_quarantined=1, started_at=now, finished_at=now)
    QuarantinedRow.objects.create(run=ingest_run, row_number=3, reason="permit_id: not an integer",
                                  raw={"permit_id": "x", "secret_note": CANARY_QUARANTINE})
    subscription = Subscription.objects.create(dataset=dataset, department=parks, connection=target,
                                               target_table="permits",
                                               delivered_columns=[["permit_id", "integer"]])
    delivery_run = Run.objects.create(kind="delivery", subscription=subscription, dataset=dataset,
                                      status=RunStatus.SUCCEEDED, started_at=now, finished_at=now)
    wish = [demand_services.FieldWish(name="permit_id", description="The permit."),
            demand_services.FieldWish(name="noise_db", description="Measured noise.")]
    data_request = demand_services.data_request_submit(
        actor=people["analyst_partial"], title="Noise near building sites", description="Noise per permit.",
        purpose="Health impact study.", fields=wish)
    data_request = demand_services.data_request_route(actor=reviewer, data_request=data_request,
                                                      department=transport)
    hidden_data_request = demand_services.data_request_submit(
        actor=people["subscriber_steward"], title="Tree inventory", description="Every street tree.",
        purpose="Planting plan.", fields=wish[:1])
    hidden_data_request = demand_services.data_request_withdraw(actor=people["subscriber_steward"],
                                                                data_request=hidden_data_request)
    objection = objection_services.objection_create(
        actor=people["analyst_partial"], dataset=dataset, kind="wrong_value", comment="The phone looks wrong.",
        fields=["phone", "applicant_name"], record_keys=["1"])
    hidden_objection = objection_services.objection_create(
        actor=people["subscriber_steward"], dataset=dataset, kind="duplicate", comment="Permit 2 twice.",
        fields=["fee_eur"], record_keys=["2"])
    token, _ = AuthToken.objects.create(user=people["owner_steward"])
    # A cursor of the owner's view ordered by the hidden field: replayed by anyone else, it must
    # be refused (cursors are signed per view).
    owner = Client()
    owner.force_login(people["owner_steward"])
    page = owner.get(f"/api/v1/datasets/{dataset.pk}/records/?order=secret_note&page_size=1").json()
    owner_cursor = parse_qs(urlsplit(page["next"]).query)["cursor"][0]
    return World(
        transport=transport, health=health, parks=parks, dataset=dataset, restricted=restricted, people=people,
        request=request,
        pending_request=dept_request, grant=grant, department_grant=department_grant, connection=connection,
        target=target, source=source, ingest_run=ingest_run, subscription=subscription,
        delivery_run=delivery_run, data_request=data_request, hidden_data_request=hidden_data_request,
        objection=objection, hidden_objection=hidden_objection,
        membership=membership, city_role=city_role, token_key=token.token_key,
        ids={"owner_cursor": owner_cursor},
    )
