"""The auditors' API: who may read the trail, filters, pagination, export and reports."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from exchange.audit.models import AuditEvent
from exchange.audit.services import (
    AuditEntry,
    RequestContext,
    audit_record,
    audit_record_many,
    reset_request_context,
    set_request_context,
)

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/audit/events/"
EXPORT = "/api/v1/audit/events/export/"


def _ids(response) -> set[int]:
    return {row["id"] for row in response.json()["results"]}


def _streamed(response) -> str:
    return b"".join(response.streaming_content).decode()


@pytest.fixture
def trail(people, department, other_department):
    """Events in both departments on top of the membership events the cast produced."""
    audit_record(actor=people["steward"], action="dataset.publish", department_id=department.pk, dataset_id=7)
    audit_record(actor=people["analyst"], action="records.read", department_id=department.pk, dataset_id=7,
                 fields=["name"], row_count=20)
    audit_record(actor=people["outsider"], action="records.read", department_id=other_department.pk, dataset_id=9,
                 outcome="denied")
    audit_record(actor=None, actor_label="ingest-job", action="ingest.run", department_id=other_department.pk,
                 details={"note": "=HYPERLINK(\"http://evil\")"})
    return AuditEvent.objects.order_by("id")


# --- Who may read ---------------------------------------------------------------------------

@pytest.mark.parametrize("who", ["city_auditor", "operator"])
def test_city_auditors_and_operators_see_everything(as_user, people, trail, who):
    before = set(trail.values_list("id", flat=True))
    response = as_user(people[who]).get(EVENTS, {"page_size": 500})
    assert response.status_code == 200
    assert _ids(response) == before


def test_department_auditors_see_only_their_department(as_user, people, trail, department):
    response = as_user(people["auditor"]).get(EVENTS, {"page_size": 500})
    assert response.status_code == 200
    expected = set(trail.filter(department_id=department.pk).values_list("id", flat=True))
    assert expected and _ids(response) == expected


@pytest.mark.parametrize("who", ["analyst", "steward", "admin", "outsider", "nobody", "reviewer"])
@pytest.mark.parametrize("path", [
    EVENTS, EXPORT, "/api/v1/audit/verify/", "/api/v1/audit/reports/department/transport/",
    "/api/v1/audit/reports/user/someone/",
])
def test_everybody_else_is_refused_and_the_attempt_is_audited(as_user, people, trail, who, path):
    response = as_user(people[who]).get(path)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    denied = AuditEvent.objects.filter(action="audit.denied").get()
    assert denied.actor_id == people[who].pk and denied.outcome == "denied" and denied.details["path"] == path
    assert not AuditEvent.objects.filter(action="audit.read").exists()


def test_anonymous_callers_are_refused_and_audited(api, trail):
    assert api.get(EVENTS).status_code in (401, 403)
    denied = AuditEvent.objects.get(action="audit.denied")
    assert denied.actor_kind == "anonymous" and denied.details["path"] == EVENTS


def test_every_read_is_audited_once_with_filters_and_row_count(as_user, people, trail):
    response = as_user(people["city_auditor"]).get(EVENTS, {"action": "records.read", "page_size": 10})
    assert response.status_code == 200 and len(response.json()["results"]) == 2
    read = AuditEvent.objects.get(action="audit.read")
    assert read.actor_id == people["city_auditor"].pk
    assert read.filters == {"action": "records.read"} and read.row_count == 2


def test_the_events_list_takes_constant_queries(as_user, people, trail, django_assert_num_queries):
    client = as_user(people["city_auditor"])
    with CaptureQueriesContext(connection) as few:
        assert client.get(EVENTS, {"page_size": 5}).status_code == 200
    audit_record_many([AuditEntry(action="test.more", department_id=1) for _ in range(60)])
    client = as_user(people["auditor"])  # a fresh principal, as in a new request
    with django_assert_num_queries(len(few)):
        response = client.get(EVENTS, {"page_size": 100})
    assert response.status_code == 200


# --- Filters --------------------------------------------------------------------------------

def test_filters(as_user, people, trail, department, other_department):
    client = as_user(people["city_auditor"])

    def ids(**params) -> set[int]:
        response = client.get(EVENTS, {**params, "page_size": 500})
        assert response.status_code == 200, response.json()
        return _ids(response)

    def expect(**lookup) -> set[int]:
        events = AuditEvent.objects.filter(**lookup).exclude(action__startswith="audit.")
        return set(events.values_list("id", flat=True))

    assert ids(department="health") == expect(department_id=other_department.pk)
    assert ids(department=str(department.pk)) == expect(department_id=department.pk)
    assert ids(dataset="7") == expect(dataset_id=7)
    assert ids(actor=people["analyst"].username) == expect(actor_id=people["analyst"].pk)
    assert ids(actor=str(people["steward"].pk)) == expect(actor_id=people["steward"].pk)
    assert ids(actor="ingest-job") == expect(actor_label="ingest-job")
    assert ids(action="records.read") == expect(action="records.read")
    assert ids(action="membership.") == expect(action__startswith="membership.") != set()
    assert ids(action="member*") == expect(action__startswith="member")
    assert ids(outcome="denied") == expect(outcome="denied")
    assert ids(object_type="departments.membership") == expect(object_type="departments.membership") != set()
    today = datetime.now(UTC).date()
    assert ids(since=str(today - timedelta(days=1)), until=str(today + timedelta(days=1))) >= expect()
    assert ids(until=str(today - timedelta(days=1))) == set()
    assert ids(since=(datetime.now(UTC) + timedelta(hours=1)).isoformat()) == set()


def test_a_date_means_the_whole_local_day_whatever_the_hour(as_user, people):
    """`until=<date>` runs to the end of that day and `since=<date>` from its start, in the
    city's time zone, at any hour of the clock (a date read as that day's midnight made
    `until` end where the day begins)."""
    from zoneinfo import ZoneInfo

    from django.utils import timezone as tz

    from exchange.audit.services import AuditEntry, audit_record_many

    local = ZoneInfo(str(tz.get_current_timezone()))
    audit_record_many([
        AuditEntry(action="dataset.update", actor_label=label, occurred_at=at) for label, at in (
            ("late", datetime(2026, 1, 31, 23, 30, tzinfo=local)), ("early", datetime(2026, 2, 1, 0, 30, tzinfo=local)))
    ])
    client = as_user(people["city_auditor"])

    def labels(**params) -> set[str]:
        response = client.get(EVENTS, {**params, "action": "dataset.update", "page_size": 500})
        assert response.status_code == 200, response.json()
        return {row["actor_label"] for row in response.json()["results"]}

    assert labels(until="2026-01-31") == {"late"}
    assert labels(since="2026-02-01") == {"early"}
    assert labels(since="2026-01-31", until="2026-01-31") == {"late"}
    assert labels(until="2026-01-31T23:00:00") == set()  # a date-time is that moment, local time


def test_request_id_filter(as_user, people, trail):
    token = set_request_context(RequestContext(client_ip="10.0.0.9", request_id="req-42"))
    try:
        tagged = audit_record(actor=people["steward"], action="dataset.update")
    finally:
        reset_request_context(token)
    response = as_user(people["city_auditor"]).get(EVENTS, {"request_id": "req-42"})
    assert _ids(response) == {tagged.pk}
    assert response.json()["results"][0]["client_ip"] == "10.0.0.9"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"actr": "x"}, "actr"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-02-30"}, "until"),
        ({"since": "2026-13-01T00:00:00"}, "since"),
        ({"outcome": "maybe"}, "outcome"),
        ({"department": "no-such-department"}, "department"),
        ({"dataset": "seven"}, "dataset"),
    ],
)
def test_bad_filters_are_clear_400s(as_user, people, trail, params, field):
    response = as_user(people["city_auditor"]).get(EVENTS, params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"]


def test_cursor_pagination_walks_newest_first(as_user, people, trail):
    client = as_user(people["city_auditor"])
    seen: list[int] = []
    url: str | None = f"{EVENTS}?page_size=3"
    while url:
        body = client.get(url).json()
        seen += [row["id"] for row in body["results"]]
        url = body["next"]
    assert seen == sorted(seen, reverse=True)
    assert set(seen) >= set(trail.exclude(action__startswith="audit.").values_list("id", flat=True))


# --- Export ---------------------------------------------------------------------------------

def test_csv_export_streams_the_filtered_set(as_user, people, trail, other_department):
    response = as_user(people["city_auditor"]).get(EXPORT, {"format": "csv", "department": "health"})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(_streamed(response))))
    expected = list(AuditEvent.objects.filter(department_id=other_department.pk).order_by("id"))
    assert [int(r["id"]) for r in rows] == [e.pk for e in expected]
    assert int(response["X-Row-Count"]) == len(rows)
    ingest = next(r for r in rows if r["action"] == "ingest.run")
    assert json.loads(ingest["details"].lstrip("'")) == {"note": "=HYPERLINK(\"http://evil\")"}
    assert rows[0]["hash"] == expected[0].hash and rows[0]["prev_hash"] == expected[0].prev_hash
    exported = AuditEvent.objects.get(action="audit.export")
    assert exported.row_count == len(rows) and exported.filters == {"department": "health"}
    assert exported.details["format"] == "csv"


def test_csv_cells_that_a_spreadsheet_would_run_are_defused(as_user, people):
    audit_record(actor=None, actor_label="=cmd|' /C calc'!A0", action="auth.login_failed")
    response = as_user(people["city_auditor"]).get(EXPORT, {"action": "auth.login_failed"})
    rows = list(csv.DictReader(io.StringIO(_streamed(response))))
    assert rows[-1]["actor_label"] == "'=cmd|' /C calc'!A0"


def test_ndjson_export_is_one_event_per_line_in_chain_order(as_user, people, trail, department):
    response = as_user(people["auditor"]).get(EXPORT, {"format": "ndjson"})
    assert response.status_code == 200 and response["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in _streamed(response).splitlines()]
    expected = list(AuditEvent.objects.filter(department_id=department.pk).order_by("id"))
    assert [line["id"] for line in lines] == [e.pk for e in expected]
    assert lines[0]["hash"] == expected[0].hash and lines[0]["fields"] == expected[0].fields
    read = next(line for line in lines if line["action"] == "records.read")
    assert read["fields"] == ["name"] and read["row_count"] == 20


def test_export_rejects_unknown_format_and_filters(as_user, people, trail):
    client = as_user(people["city_auditor"])
    bad_format = client.get(EXPORT, {"format": "xml"})
    assert bad_format.status_code == 400 and "format" in bad_format.json()["error"]["fields"]
    bad_filter = client.get(EXPORT, {"format": "csv", "colour": "red"})
    assert bad_filter.status_code == 400 and "colour" in bad_filter.json()["error"]["fields"]
    assert not AuditEvent.objects.filter(action="audit.export").exists()


# --- Reports --------------------------------------------------------------------------------

def test_a_persons_access_report(as_user, people, trail):
    analyst = people["analyst"]
    audit_record(actor=analyst, action="records.read", dataset_id=7, department_id=None, row_count=5)
    response = as_user(people["city_auditor"]).get(f"/api/v1/audit/reports/user/{analyst.username}/")
    assert response.status_code == 200
    body = response.json()
    assert body["subject"] == {"kind": "user", "id": analyst.pk, "name": analyst.username}
    assert body["total"] == AuditEvent.objects.filter(actor_id=analyst.pk).count() == len(body["results"])
    assert {"action": "records.read", "outcome": "allowed", "count": 2} in body["by_action"]
    assert body["datasets"][0]["dataset_id"] == 7 and body["datasets"][0]["count"] == 2
    assert body["last_activity"] is not None
    read = AuditEvent.objects.get(action="audit.read")
    assert read.details == {"endpoint": "report.user", "subject": analyst.username}


def test_a_department_auditor_reports_on_people_within_their_department_only(as_user, people, trail):
    response = as_user(people["auditor"]).get(f"/api/v1/audit/reports/user/{people['outsider'].username}/")
    assert response.status_code == 200
    assert response.json()["total"] == 0  # the outsider acted in health, not transport


def test_a_department_report(as_user, people, trail, department):
    response = as_user(people["auditor"]).get("/api/v1/audit/reports/department/transport/", {"page_size": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["subject"]["name"] == "transport"
    assert body["total"] == AuditEvent.objects.filter(department_id=department.pk).exclude(
        action__startswith="audit.").count()
    assert len(body["results"]) == 2 and body["next"]
    assert body["datasets"] == [{"dataset_id": 7, "count": 2, "last": body["datasets"][0]["last"]}]


def test_a_department_auditor_may_not_report_on_another_department(as_user, people, trail, other_department):
    response = as_user(people["auditor"]).get("/api/v1/audit/reports/department/health/")
    assert response.status_code == 403
    denied = AuditEvent.objects.get(action="audit.denied")
    assert denied.department_id == other_department.pk and denied.actor_id == people["auditor"].pk


def test_reports_404_for_unknown_subjects_and_400_for_bad_filters(as_user, people, trail):
    client = as_user(people["city_auditor"])
    assert client.get("/api/v1/audit/reports/user/ghost/").status_code == 404
    assert client.get("/api/v1/audit/reports/department/nowhere/").status_code == 404
    response = client.get("/api/v1/audit/reports/department/transport/", {"department": "health"})
    assert response.status_code == 400 and "department" in response.json()["error"]["fields"]
    response = client.get("/api/v1/audit/reports/department/transport/", {"since": "soon"})
    assert response.status_code == 400 and "since" in response.json()["error"]["fields"]


# --- Verify ---------------------------------------------------------------------------------

def test_auditors_can_verify_the_chain(as_user, people, trail):
    count = AuditEvent.objects.count()
    response = as_user(people["auditor"]).get("/api/v1/audit/verify/")
    assert response.status_code == 200
    assert response.json() == {
        "intact": True, "checked": count, "broken_at": None, "reason": "", "checkpoints": 0,
        "summary": f"intact, {count} events",
    }
    assert AuditEvent.objects.get(action="audit.verify").details["intact"] is True
