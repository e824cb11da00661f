"""The records API, exports and previews, through the one policy."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
from decimal import Decimal

import pytest
from django.utils import timezone

from catalog.models import Visibility
from departments.selectors import principal_forget
from exchange.access.models import GrantField, GrantStatus
from exchange.audit.models import AuditEvent
from exchange.records import read_cache
from exchange.records.selectors import mask, pseudonymise
from tests.departments.test_api import assert_error
from tests.factories import MembershipFactory
from tests.records_support import grant, load_rows, published_dataset

pytestmark = pytest.mark.django_db

CANARY_NOTE = "CANARY-SECRET-NOTE-7f3a"
CANARY_NAME = "CANARY-NAME-Okafor"
CANARY_PHONE = "CANARY-PHONE-5551234"


def rows(n: int = 12) -> list[dict]:
    districts = ["North", "South", "East"]
    return [
        {
            "permit_id": i, "applicant_name": f"{CANARY_NAME}-{i}", "phone": f"{CANARY_PHONE}{i:02d}",
            "district": districts[i % 3], "fee_eur": Decimal(f"{100 + i}.50"), "approved": i % 2 == 0,
            "submitted_on": dt.date(2026, 1, 1) + dt.timedelta(days=i), "secret_note": f"{CANARY_NOTE}-{i}",
        }
        for i in range(1, n + 1)
    ]


@pytest.fixture
def permits(department, people):
    dataset = published_dataset(department)
    load_rows(dataset, rows())
    return dataset


@pytest.fixture
def grantee(people, permits):
    """An analyst of the health department with a personal grant: three fields clear, phone
    masked, applicant name pseudonymised; the confidential note is not granted."""
    user = people["outsider"]
    grant(permits, user=user, approved_by=people["steward"], fields={
        "permit_id": "clear", "district": "clear", "fee_eur": "clear", "phone": "masked",
        "applicant_name": "pseudonymised",
    })
    return user


def url(dataset, suffix="records/"):
    return f"/api/v1/datasets/{dataset.pk}/{suffix}"


class TestOwnerAndGrantee:
    def test_owner_sees_everything_in_clear(self, as_user, people, permits):
        body = as_user(people["analyst"]).get(url(permits)).json()
        assert [f["name"] for f in body["fields"]] == [
            "permit_id", "applicant_name", "phone", "district", "fee_eur", "approved", "submitted_on", "secret_note"]
        assert body["results"][0]["secret_note"] == f"{CANARY_NOTE}-1"
        assert body["results"][0]["approved"] is False and body["results"][1]["approved"] is True
        # Decimals travel as strings; SQLite keeps them as numbers, so compare as numbers.
        assert Decimal(body["results"][0]["fee_eur"]) == Decimal("101.50")
        assert body["results"][0]["submitted_on"] == "2026-01-02"

    def test_grantee_sees_exactly_the_granted_fields_in_their_forms(self, as_user, grantee, permits):
        body = as_user(grantee).get(url(permits)).json()
        assert body["fields"][0] == {"name": "permit_id", "type": "integer", "form": "clear", "sensitivity": "public",
                                     "conditional": False}
        assert {f["name"]: f["form"] for f in body["fields"]} == {
            "permit_id": "clear", "applicant_name": "pseudonymised", "phone": "masked", "district": "clear",
            "fee_eur": "clear"}
        first = body["results"][0]
        assert set(first) == {"permit_id", "applicant_name", "phone", "district", "fee_eur"}
        assert first["phone"] == mask(f"{CANARY_PHONE}01") == "*" * (len(CANARY_PHONE) - 2) + "3401"
        assert first["applicant_name"] == pseudonymise(f"{CANARY_NAME}-1")
        assert len(first["applicant_name"]) == 32
        assert CANARY_NOTE not in json.dumps(body) and CANARY_NAME not in json.dumps(body)

    def test_pseudonyms_are_stable_for_joins(self, as_user, grantee, permits, department, people):
        other = published_dataset(department, slug="permit-contacts", fields=[
            {"name": "contact_id", "type": "integer", "is_key": True, "nullable": False, "sensitivity": "public"},
            {"name": "applicant_name", "type": "text", "sensitivity": "personal"},
        ])
        load_rows(other, [{"contact_id": 1, "applicant_name": f"{CANARY_NAME}-1"}])
        grant(other, user=grantee, approved_by=people["steward"],
              fields={"contact_id": "clear", "applicant_name": "pseudonymised"})
        a = as_user(grantee).get(url(permits)).json()["results"][0]["applicant_name"]
        b = as_user(grantee).get(url(other)).json()["results"][0]["applicant_name"]
        assert a == b

    def test_each_read_is_audited_once(self, as_user, grantee, permits):
        before = AuditEvent.objects.count()
        as_user(grantee).get(url(permits) + "?district=North")
        event = AuditEvent.objects.get(pk__gt=0, action="records.read")
        assert AuditEvent.objects.count() == before + 1
        assert event.actor_id == grantee.pk and event.dataset_id == permits.pk
        assert event.row_count == 4 and event.fields == ["permit_id", "applicant_name", "phone", "district",
                                                          "fee_eur"]
        assert event.filters["conditions"] == [{"field": "district", "op": "eq", "value": "North"}]
        assert event.purpose == "Road works planning"


class TestRefusals:
    @pytest.mark.parametrize("query", [
        "?secret_note=x", "?secret_note__contains=CANARY", "?fields=permit_id,secret_note", "?order=secret_note",
        "?approved=true", "?nonexistent=1",
    ])
    def test_hidden_or_unknown_fields_are_refused_never_answered(self, as_user, grantee, permits, query):
        response = as_user(grantee).get(url(permits) + query)
        error = assert_error(response, 400, "field_not_visible")
        assert "results" not in response.json() and CANARY_NOTE not in response.content.decode()
        assert error["fields"]
        denied = AuditEvent.objects.get(action="records.read", outcome="denied")
        assert denied.details["reason"] == "field_not_visible" and "CANARY" not in json.dumps(denied.details)

    def test_filter_on_masked_field_compares_the_masked_value(self, as_user, grantee, permits):
        raw = as_user(grantee).get(url(permits) + f"?phone__contains={CANARY_PHONE}").json()
        assert raw["results"] == []  # the clear value cannot be probed
        masked = as_user(grantee).get(url(permits) + "?phone__contains=3401").json()
        assert [r["permit_id"] for r in masked["results"]] == [1]

    @pytest.mark.parametrize("query,code", [
        ("?fee_eur__contains=1", "invalid_operator"), ("?permit_id=abc", "invalid_value"),
        ("?page_size=0", "invalid"), ("?page_size=100000", "invalid"), ("?cursor=forged", "invalid_cursor"),
    ])
    def test_bad_queries(self, as_user, grantee, permits, query, code):
        assert_error(as_user(grantee).get(url(permits) + query), 400, code)

    def test_no_grant_is_403_and_audited(self, as_user, people, permits):
        for who in ("nobody", "city_auditor", "reviewer"):
            assert_error(as_user(people[who]).get(url(permits)), 403, "no_grant")
        assert AuditEvent.objects.filter(action="records.read", outcome="denied").count() == 3

    def test_restricted_dataset_is_404_for_outsiders(self, as_user, people, department):
        hidden = published_dataset(department, slug="hidden", visibility=Visibility.RESTRICTED)
        for suffix in ("records/", "export/?format=csv", "preview/"):
            assert_error(as_user(people["nobody"]).get(url(hidden, suffix)), 404)

    def test_unknown_dataset_is_404(self, as_user, people):
        assert_error(as_user(people["analyst"]).get("/api/v1/datasets/999999/records/"), 404)

    def test_expired_revoked_and_pending_grants_give_nothing(self, as_user, people, permits):
        user = people["nobody"]
        g = grant(permits, user=user, approved_by=people["steward"], fields={"district": "clear"})
        assert as_user(user).get(url(permits)).status_code == 200
        for change in ({"status": GrantStatus.REVOKED, "revoked_at": timezone.now()},
                       {"status": GrantStatus.ACTIVE, "revoked_at": None,
                        "valid_until": timezone.now() - dt.timedelta(seconds=1)},
                       {"status": GrantStatus.PENDING_DPO, "valid_until": timezone.now() + dt.timedelta(days=1)}):
            type(g).objects.filter(pk=g.pk).update(**change)
            assert_error(as_user(user).get(url(permits)), 403, "no_grant")

    def test_lapsed_field_disappears(self, as_user, grantee, permits):
        GrantField.objects.filter(field_name="phone").update(lapsed_at=timezone.now())
        body = as_user(grantee).get(url(permits)).json()
        assert "phone" not in body["results"][0]
        assert_error(as_user(grantee).get(url(permits) + "?phone=x"), 400, "field_not_visible")


class TestRowFiltersAndUnion:
    def test_department_grant_with_row_filter(self, as_user, people, permits, other_department):
        member = MembershipFactory(department=other_department, role="analyst").user
        grant(permits, department=other_department, approved_by=people["steward"],
              fields={"permit_id": "clear", "district": "clear"},
              row_filter=[{"field": "district", "op": "eq", "value": "North"}])
        body = as_user(member).get(url(permits)).json()
        assert {r["district"] for r in body["results"]} == {"North"}
        assert len(body["results"]) == 4

    def test_department_grant_does_not_reach_admins_or_auditors(self, as_user, people, permits, other_department):
        grant(permits, department=other_department, approved_by=people["steward"], fields={"district": "clear"})
        auditor = MembershipFactory(department=other_department, role="auditor").user
        assert_error(as_user(auditor).get(url(permits)), 403)

    def test_union_most_revealing_form_on_the_rows_each_grant_covers(self, as_user, people, permits,
                                                                     other_department):
        member = MembershipFactory(department=other_department, role="analyst").user
        # Masked phone everywhere (personal grant), clear phone on North rows (department grant).
        grant(permits, user=member, approved_by=people["steward"], fields={"permit_id": "clear", "phone": "masked"})
        grant(permits, department=other_department, approved_by=people["steward"],
              fields={"phone": "clear", "district": "clear"},
              row_filter=[{"field": "district", "op": "eq", "value": "North"}])
        principal_forget(member)
        body = as_user(member).get(url(permits)).json()
        by_id = {r["permit_id"]: r for r in body["results"]}
        assert len(by_id) == 12
        assert by_id[3]["phone"] == f"{CANARY_PHONE}03"  # permit 3 is in the North
        assert by_id[3]["district"] == "North"
        assert by_id[2]["phone"] == mask(f"{CANARY_PHONE}02")
        assert by_id[2]["district"] is None  # district granted only on North rows

    def test_row_filter_on_a_field_gone_from_the_schema_covers_no_row(self, as_user, people, permits):
        user = people["nobody"]
        grant(permits, user=user, approved_by=people["steward"], fields={"district": "clear"},
              row_filter=[{"field": "retired_field", "op": "eq", "value": "x"}])
        assert as_user(user).get(url(permits)).json()["results"] == []


class TestPaginationAndOrder:
    def test_cursor_walks_every_row_once(self, as_user, grantee, permits):
        seen, next_url = [], url(permits) + "?page_size=5&order=-fee_eur"
        while next_url:
            body = as_user(grantee).get(next_url).json()
            seen += [r["permit_id"] for r in body["results"]]
            next_url = body["next"]
        assert seen == list(range(12, 0, -1))

    def test_cursor_with_hidden_key_uses_internal_order(self, as_user, people, permits):
        user = people["nobody"]
        grant(permits, user=user, approved_by=people["steward"], fields={"district": "clear"})
        seen, next_url = 0, url(permits) + "?page_size=5"
        while next_url:
            body = as_user(user).get(next_url).json()
            seen += len(body["results"])
            next_url = body["next"]
            if next_url:
                # The cursor carries only the internal change number, not the hidden key.
                cursor = next_url.split("cursor=")[1].split("&")[0]
                payload = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
                values = json.loads(payload.rsplit(":", 1)[0])
                assert len(values) == 1 and isinstance(values[0], int)
        assert seen == 12

    def test_order_with_nulls_and_filters(self, as_user, grantee, permits):
        load_rows(permits, [{"permit_id": 99, "district": None, "fee_eur": None}])
        ids = []
        next_url = url(permits) + "?page_size=4&order=district,-permit_id"
        while next_url:
            body = as_user(grantee).get(next_url).json()
            ids += [(r["district"], r["permit_id"]) for r in body["results"]]
            next_url = body["next"]
        assert ids[-1] == (None, 99)
        assert [d for d, _ in ids[:-1]] == sorted(d for d, _ in ids[:-1])
        assert len(ids) == 13

    def test_query_count_is_constant_whatever_the_number_of_grants(self, as_user, people, permits,
                                                                   django_assert_max_num_queries,
                                                                   django_assert_num_queries, other_department):
        user = people["outsider"]
        grant(permits, user=user, approved_by=people["steward"], fields={"district": "clear"})
        client = as_user(user)
        client.get(url(permits))  # warm the per-process content-type cache
        principal_forget(user)
        read_cache.clear()  # the full path; test_read_cache.py counts the cached one
        # principal (2), dataset visibility (2: permission, dataset), schema fields, grants and
        # their fields (2), store table check, the page, and the audit append (last hash and
        # insert, inside a savepoint here; on PostgreSQL also the chain lock).
        with django_assert_max_num_queries(14) as first:
            client.get(url(permits))
        for i in range(6):
            grant(permits, user=user, approved_by=people["steward"], fields={"permit_id": "clear"},
                  purpose=f"purpose {i}")
            grant(permits, department=other_department, approved_by=people["steward"], fields={"fee_eur": "masked"})
        principal_forget(user)
        read_cache.clear()
        with django_assert_num_queries(len(first.captured_queries)):
            # The department grant does not reach the outsider, an admin of that department.
            assert [f["name"] for f in client.get(url(permits)).json()["fields"]] == ["permit_id", "district"]


class TestExportAndPreview:
    def test_csv_export_streams_exactly_the_view(self, as_user, grantee, permits):
        response = as_user(grantee).get(url(permits, "export/?format=csv&district=North"),
                                        HTTP_X_REQUEST_ID="export-7", REMOTE_ADDR="10.1.2.3")
        assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
        # On the record before the first row leaves; the row count comes with the stream's end.
        started = AuditEvent.objects.get(action="records.export_started")
        assert started.row_count is None and started.details["format"] == "csv"
        assert started.fields == ["permit_id", "applicant_name", "phone", "district", "fee_eur"]
        assert (started.request_id, started.client_ip, started.actor_id) == ("export-7", "10.1.2.3", grantee.pk)
        assert not AuditEvent.objects.filter(action="records.export").exists()
        body = b"".join(response.streaming_content).decode()
        parsed = list(csv.reader(io.StringIO(body)))
        assert parsed[0] == ["permit_id", "applicant_name", "phone", "district", "fee_eur"]
        assert len(parsed) == 5 and {r[3] for r in parsed[1:]} == {"North"}
        assert CANARY_NOTE not in body and CANARY_NAME not in body and CANARY_PHONE not in body
        event = AuditEvent.objects.get(action="records.export")
        assert event.row_count == 4 and event.details["format"] == "csv"
        # Written when the stream ends, after the request's middleware returned: still the
        # request's id and address.
        assert (event.request_id, event.client_ip) == ("export-7", "10.1.2.3")

    def test_ndjson_export(self, as_user, grantee, permits):
        response = as_user(grantee).get(url(permits, "export/?format=ndjson"))
        lines = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
        assert len(lines) == 12 and set(lines[0]) == {"permit_id", "applicant_name", "phone", "district", "fee_eur"}
        assert lines[0]["fee_eur"] in ("101.50", "101.5")

    def test_owner_csv_has_typed_text_forms(self, as_user, people, permits):
        response = as_user(people["steward"]).get(url(permits, "export/?format=csv&permit_id=2"))
        parsed = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
        assert Decimal(parsed[0].pop("fee_eur")) == Decimal("102.50")
        assert parsed == [{
            "permit_id": "2", "applicant_name": f"{CANARY_NAME}-2", "phone": f"{CANARY_PHONE}02",
            "district": "East", "approved": "true", "submitted_on": "2026-01-03",
            "secret_note": f"{CANARY_NOTE}-2"}]

    def test_bad_format(self, as_user, grantee, permits):
        assert_error(as_user(grantee).get(url(permits, "export/?format=xlsx")), 400)

    def test_preview(self, as_user, grantee, permits):
        body = as_user(grantee).get(url(permits, "preview/")).json()
        assert len(body["results"]) == 12 and CANARY_NOTE not in json.dumps(body)
        assert AuditEvent.objects.filter(action="records.preview").count() == 1
