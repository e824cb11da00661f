"""The dataset page's lineage, sync status and records preview, as each role sees them: the
owner's steward, an analyst with a partial grant, an analyst without one, an outsider on a
restricted dataset and an auditor; and the page's query count, whatever the number of
receivers, grants and runs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from departments.models import Department
from departments.selectors import principals_forget_all
from exchange.audit.models import AuditEvent
from exchange.records.selectors import pseudonymise
from exchange.records.store import is_postgres
from exchange.sync.models import Connection, Run, RunKind, RunStatus, Source, Subscription
from tests.exchange.records.test_records import CANARY_NAME, CANARY_NOTE, CANARY_PHONE, rows
from tests.exchange.sync.helpers import run_ingest
from tests.factories import DepartmentFactory, MembershipFactory
from tests.records_support import grant, load_rows, published_dataset
from tests.sync_factories import PERMIT_FIELDS, csv_bytes, permit_rows, upload_source
from tests.sync_factories import published_dataset as sync_dataset

pytestmark = pytest.mark.django_db

RUN_ERROR = "Column fee is missing at the source table permits_v2."


@pytest.fixture
def parks() -> Department:
    return DepartmentFactory(code="parks", name="Parks", slug="parks")


@pytest.fixture
def flow(department, other_department, parks, people) -> dict[str, Any]:
    return build_flow(department=department, other_department=other_department, parks=parks, people=people)


def build_flow(*, department: Department, other_department: Department, parks: Department,
               people: dict[str, Any]) -> dict[str, Any]:
    """Permits of Transport with 12 records, a daily source whose latest run failed after a
    successful one, a department grant to Parks with a subscription delivered once, and an
    analyst of Health with a personal grant of three fields in three forms."""
    dataset = published_dataset(department)
    load_rows(dataset, rows())
    source = Source.objects.create(dataset=dataset, upload="sources/permits.csv", schedule="0 3 * * *",
                                   mapping={"permit_id": "permit_id"})
    now = timezone.now()
    Run.objects.create(kind=RunKind.INGEST, source=source, dataset=dataset, status=RunStatus.SUCCEEDED,
                       rows_read=12, rows_inserted=12, started_at=now - dt.timedelta(days=1, minutes=1),
                       finished_at=now - dt.timedelta(days=1))
    Run.objects.create(kind=RunKind.INGEST, source=source, dataset=dataset, status=RunStatus.FAILED,
                       rows_read=7, rows_quarantined=2, error=RUN_ERROR, started_at=now - dt.timedelta(minutes=5),
                       finished_at=now - dt.timedelta(minutes=4))
    grant(dataset, department=parks, approved_by=people["steward"], fields={"permit_id": "clear", "district": "clear"})
    target = Connection.objects.create(department=parks, name="parks db", kind="sqlite", secret_encrypted="x",
                                       redacted="/srv/parks.sqlite3")
    subscription = Subscription.objects.create(dataset=dataset, department=parks, connection=target,
                                               target_table="permits_copy", schedule="30 4 * * *")
    Run.objects.create(kind=RunKind.DELIVERY, subscription=subscription, dataset=dataset,
                       status=RunStatus.SUCCEEDED, finished_at=now - dt.timedelta(hours=20))
    analyst_h = MembershipFactory(department=other_department, role="analyst").user
    grant(dataset, user=analyst_h, approved_by=people["steward"],
          fields={"permit_id": "clear", "phone": "masked", "applicant_name": "pseudonymised"})
    return {"dataset": dataset, "analyst_h": analyst_h, "subscription": subscription,
            "bare_analyst": MembershipFactory(department=other_department, role="analyst").user}


def _page(client: Client, user: Any, dataset: Any) -> str:
    client.force_login(user)
    response = client.get(f"/datasets/{dataset.pk}/")
    assert response.status_code == 200
    return response.content.decode()


def _section(page: str, section_id: str) -> str:
    start = page.index(f'id="{section_id}"')
    return page[start:page.index("</section>", start)]


def test_owner_steward_sees_everything_in_clear(client, people, flow):
    page = _page(client, people["steward"], flow["dataset"])
    sync = _section(page, "sync-status")
    assert "Failed" in sync and RUN_ERROR in sync and "7 read" in sync and "2 quarantined" in sync
    assert 'id="record-count">12<' in sync and "0 3 * * *" in sync
    assert f'/datasets/{flow["dataset"].pk}/sync/' in sync
    lineage = _section(page, "lineage")
    assert "Parks" in lineage and "<code>district</code>" in lineage and "last delivery" in lineage
    assert "Health" not in lineage  # a personal grant is not a department's data flow
    assert "Only your department" not in lineage
    preview = _section(page, "preview")
    assert CANARY_NOTE in preview and CANARY_PHONE in preview and CANARY_NAME in preview
    assert "every field in clear" in preview


def test_analyst_with_a_partial_grant_sees_exactly_their_view(client, flow):
    dataset = flow["dataset"]
    events = AuditEvent.objects.filter(action="records.preview").count()
    page = _page(client, flow["analyst_h"], dataset)
    preview = _section(page, "preview")
    # Hidden fields are absent; masked shows only the tail; pseudonymised shows the pseudonym.
    assert CANARY_NOTE not in page and "<code>secret_note</code></th>" not in preview
    assert "<code>district</code></th>" not in preview
    assert CANARY_PHONE not in page and "********" in preview
    assert CANARY_NAME not in page and str(pseudonymise(f"{CANARY_NAME}-1")) in preview
    assert "<code>phone</code> <small" in preview and "(masked)" in preview and "(pseudonymised)" in preview
    assert "5 fields of the schema are not in your view" in preview
    event = AuditEvent.objects.filter(action="records.preview").latest("id")
    assert AuditEvent.objects.filter(action="records.preview").count() == events + 1
    assert sorted(event.fields) == ["applicant_name", "permit_id", "phone"]
    # Metadata about the flow, but not the steward's operations nor other departments' grants.
    sync = _section(page, "sync-status")
    assert "Failed" in sync and "Last updated" in sync
    assert RUN_ERROR not in page and "record-count" not in page and "7 read" not in page
    lineage = _section(page, "lineage")
    assert "Parks" not in lineage and "stewards, its auditors" in lineage
    assert f'/datasets/{dataset.pk}/sync/' not in page


def test_analyst_without_a_grant_is_asked_to_request_access(client, flow):
    dataset = flow["dataset"]
    denied = AuditEvent.objects.filter(outcome="denied").count()
    page = _page(client, flow["bare_analyst"], dataset)
    preview = _section(page, "preview")
    assert 'id="request-access-cta"' in preview and f'/datasets/{dataset.pk}/request-access/' in preview
    assert 'id="preview-table"' not in page
    for canary in (CANARY_NOTE, CANARY_PHONE, CANARY_NAME, "********"):
        assert canary not in page
    assert "record-count" not in page and "Parks" not in page
    # Opening the page is not a refused read.
    assert AuditEvent.objects.filter(outcome="denied").count() == denied


def test_outsider_gets_404_on_a_restricted_dataset(client, people, department):
    restricted = published_dataset(department, slug="restricted-permits", visibility="restricted")
    load_rows(restricted, rows(2))
    client.force_login(people["outsider"])
    response = client.get(f"/datasets/{restricted.pk}/")
    assert response.status_code == 404 and CANARY_NOTE not in response.content.decode()


@pytest.mark.parametrize("who", ["city_auditor", "auditor"])
def test_auditors_see_the_flow_but_no_values(client, people, flow, who):
    page = _page(client, people[who], flow["dataset"])
    for canary in (CANARY_NOTE, CANARY_PHONE, CANARY_NAME):
        assert canary not in page
    assert 'id="preview-table"' not in page and 'id="request-access-cta"' not in page
    assert "auditors read the evidence" in _section(page, "preview")
    assert RUN_ERROR in page and 'id="record-count">12<' in page
    assert "Parks" in _section(page, "lineage")


def test_grantee_department_sees_its_own_grant_only(client, flow, parks, other_department, people):
    grant(flow["dataset"], department=other_department, approved_by=people["steward"], fields={"district": "clear"})
    parks_analyst = MembershipFactory(department=parks, role="analyst").user
    lineage = _section(_page(client, parks_analyst, flow["dataset"]), "lineage")
    assert "Parks" in lineage and "Health" not in lineage and "Only your department" in lineage


def test_next_run_follows_the_schedule(client, people, flow):
    sync = _section(_page(client, people["steward"], flow["dataset"]), "sync-status")
    assert 'id="next-run"><time' in sync and ":00</time>" in sync
    Source.objects.filter(dataset=flow["dataset"]).update(schedule="")
    sync = _section(_page(client, people["steward"], flow["dataset"]), "sync-status")
    assert 'id="next-run">not scheduled' in sync


def _count(client: Client, url: str) -> int:
    principals_forget_all()  # the same state of the per-process principal cache for every count
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


@pytest.mark.parametrize("who", ["steward", "analyst_h", "city_auditor"])
def test_the_page_costs_a_bounded_number_of_queries(client, people, flow, who, django_assert_max_num_queries):
    user = flow.get(who) or people[who]
    dataset = flow["dataset"]
    url = f"/datasets/{dataset.pk}/"
    client.force_login(user)
    client.get(url)  # warm the per-process caches (content types, sessions)
    before = _count(client, url)
    # More receivers, subscriptions, grants and runs cost no more queries.
    for n in range(3):
        department = DepartmentFactory()
        grant(dataset, department=department, approved_by=people["steward"], fields={"permit_id": "clear"})
        target = Connection.objects.create(department=department, name="db", kind="sqlite",
                                           secret_encrypted="x", redacted=f"/srv/{n}.sqlite3")
        subscription = Subscription.objects.create(dataset=dataset, department=department, connection=target,
                                                   target_table="copy")
        Run.objects.create(kind=RunKind.DELIVERY, subscription=subscription, dataset=dataset,
                           status=RunStatus.SUCCEEDED, finished_at=timezone.now())
        grant(dataset, user=flow["analyst_h"], approved_by=people["steward"], fields={"district": "masked"})
    assert _count(client, url) == before
    with django_assert_max_num_queries(32):
        client.get(url)


def test_the_record_count_follows_every_change_of_the_store(client, people, department, settings, tmp_path):
    """The count is cached under the store's change number (on PostgreSQL): a first load,
    deletions, a revival and an unchanged re-run each show the exact number of live records,
    and a view of an unchanged store does not count it again."""
    settings.MEDIA_ROOT = tmp_path
    header = [f[0] for f in PERMIT_FIELDS]
    dataset = sync_dataset(department=department)
    source = upload_source(dataset=dataset, content=csv_bytes(header, permit_rows(30)))

    def shown() -> str:
        sync = _section(_page(client, people["steward"], dataset), "sync-status")
        return sync[sync.index('id="record-count">') + len('id="record-count">'):].split("<", 1)[0]

    def upload(rows: list[list[str]]) -> None:
        Path(tmp_path, str(source.upload)).write_bytes(csv_bytes(header, rows))
        assert run_ingest(source).status == "succeeded"

    assert shown() == "0"
    upload(permit_rows(30))
    assert shown() == "30"
    upload(permit_rows(20))  # ten deleted at the source
    assert shown() == "20"
    upload(permit_rows(25))  # five of them back (tombstones revived)
    assert shown() == "25"
    upload(permit_rows(25))  # nothing changed
    assert shown() == "25"
    if is_postgres():
        with CaptureQueriesContext(connection) as ctx:
            assert shown() == "25"
        assert not [q for q in ctx.captured_queries if "count(*)" in q["sql"]]
