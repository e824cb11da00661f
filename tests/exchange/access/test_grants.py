"""Grants after the decision: revocation, expiry, reminders, recertification, schema-change
lapse, guardian permissions, the lists, the inbox and explain."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from guardian.shortcuts import get_perms

from departments.models import Notification
from departments.selectors import principal_forget
from exchange.access import tasks
from exchange.access.models import Grant, GrantField
from exchange.access.policy import effective_view
from exchange.access.receivers import lapsing_field_names, on_schema_version_published
from exchange.access.services import grant_fields_lapse
from exchange.audit.models import AuditEvent
from exchange.audit.services import audit_verify
from tests.access_factories import active_grant, decide, make_cast, published_dataset, schema_with_fields, submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def cast(people, department, other_department) -> dict[str, Any]:
    return make_cast(people, department, other_department)


@pytest.fixture
def dataset(department):
    return published_dataset(department)


def error_of(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    return response.json()["error"]


class TestRevoke:
    def test_steward_revokes(self, as_user, cast, dataset, department):
        grant = active_grant(cast=cast, dataset=dataset)
        assert cast["analyst_h"].has_perm("catalog.view_dataset", dataset)
        response = as_user(cast["steward2"]).post(f"/api/v1/grants/{grant.pk}/revoke/", {"reason": "Project ended"})
        assert response.status_code == 200, response.content
        assert response.json()["status"] == "revoked" and response.json()["revoke_reason"] == "Project ended"
        fresh = type(cast["analyst_h"]).objects.get(pk=cast["analyst_h"].pk)
        assert not fresh.has_perm("catalog.view_dataset", dataset)
        assert not effective_view(dataset=dataset, user=fresh).fields
        event = AuditEvent.objects.get(action="grant.revoke")
        assert event.department_id == department.pk and event.fields == ["stop_id", "district"]
        assert Notification.objects.filter(kind="grant.revoked", recipient=cast["analyst_h"]).exists()
        error = error_of(as_user(cast["steward"]).post(f"/api/v1/grants/{grant.pk}/revoke/", {"reason": "again"}),
                         409)
        assert error["code"] == "invalid_state"

    def test_without_the_sync_receivers_a_revoke_fails_and_changes_nothing(self, cast, dataset):
        """The grant services reach the subscriptions through a signal; a process where nobody
        listens must not revoke a grant while its deliveries go on."""
        from exchange.access.services import grant_revoke
        from exchange.access.signals import grant_changing
        from exchange.sync.receivers import on_grant_changing

        grant = active_grant(cast=cast, dataset=dataset)
        assert grant_changing.disconnect(dispatch_uid="exchange.sync.lock_for_grant")
        try:
            with pytest.raises(RuntimeError, match="no receiver"):
                grant_revoke(actor=cast["steward2"], grant=grant, reason="Project ended")
        finally:
            grant_changing.connect(on_grant_changing, dispatch_uid="exchange.sync.lock_for_grant")
        grant.refresh_from_db()
        assert grant.status == "active"
        assert not AuditEvent.objects.filter(action="grant.revoke").exists()

    def test_dpo_may_revoke(self, as_user, cast, dataset):
        grant = active_grant(cast=cast, dataset=dataset)
        assert as_user(cast["dpo"]).post(f"/api/v1/grants/{grant.pk}/revoke/", {"reason": "Breach"}).status_code == 200

    @pytest.mark.parametrize(("who", "status"), [("analyst_h", 403), ("auditor", 403), ("analyst", 404),
                                                 ("outsider", 404), ("nobody", 404)])
    def test_others_may_not(self, as_user, cast, dataset, who, status):
        grant = active_grant(cast=cast, dataset=dataset)
        error_of(as_user(cast[who]).post(f"/api/v1/grants/{grant.pk}/revoke/", {"reason": "x"}), status)
        grant.refresh_from_db()
        assert grant.status == "active"

    def test_reason_is_required(self, as_user, cast, dataset):
        grant = active_grant(cast=cast, dataset=dataset)
        error = error_of(as_user(cast["steward"]).post(f"/api/v1/grants/{grant.pk}/revoke/", {}), 400)
        assert "reason" in error["fields"]

    def test_permission_stays_while_another_grant_remains(self, as_user, cast, dataset):
        first = active_grant(cast=cast, dataset=dataset, fields=["stop_id"])
        active_grant(cast=cast, dataset=dataset, fields=["district"])
        as_user(cast["steward"]).post(f"/api/v1/grants/{first.pk}/revoke/", {"reason": "Merged"})
        assert get_perms(cast["analyst_h"], dataset) == ["view_dataset"]

    def test_department_grant_goes_to_the_department_group(self, as_user, cast, dataset, other_department):
        grant = active_grant(cast=cast, dataset=dataset, grantee="steward_h", department=other_department)
        assert "view_dataset" in get_perms(other_department.group, dataset)
        assert effective_view(dataset=dataset, department=other_department).fields
        as_user(cast["steward"]).post(f"/api/v1/grants/{grant.pk}/revoke/", {"reason": "Done"})
        assert get_perms(other_department.group, dataset) == []


class TestExpiryAndReminders:
    def test_beat_task_expires_grants_past_their_end(self, cast, dataset, department):
        grant = active_grant(cast=cast, dataset=dataset)
        keep = active_grant(cast=cast, dataset=dataset, fields=["boardings"])
        Grant.objects.filter(pk=grant.pk).update(valid_from=timezone.now() - timedelta(days=2),
                                                 valid_until=timezone.now() - timedelta(minutes=1))
        assert tasks.housekeeping_expire_grants.delay().get() == 1
        grant.refresh_from_db()
        keep.refresh_from_db()
        assert grant.status == "expired" and keep.status == "active"
        event = AuditEvent.objects.get(action="grant.expire")
        assert event.actor_kind == "system" and event.dataset_id == dataset.pk and event.department_id == department.pk
        assert Notification.objects.filter(kind="grant.expired", recipient=cast["analyst_h"]).count() == 1
        assert get_perms(cast["analyst_h"], dataset) == ["view_dataset"]  # the other grant is active
        assert tasks.housekeeping_expire_grants.delay().get() == 0
        assert AuditEvent.objects.filter(action="grant.expire").count() == 1

    def test_a_grant_still_waiting_for_the_dpo_expires_and_its_request_is_denied(self, as_user, cast, dataset):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["passenger_name"])
        decide(actor=cast["steward"], access_request=access_request, approve={"passenger_name": None})
        grant = Grant.objects.get()
        Grant.objects.filter(pk=grant.pk).update(valid_from=timezone.now() - timedelta(days=2),
                                                 valid_until=timezone.now() - timedelta(minutes=1))
        assert tasks.housekeeping_expire_grants() == 1
        grant.refresh_from_db()
        access_request.refresh_from_db()
        assert grant.status == "expired" and access_request.status == "denied"
        assert as_user(cast["dpo"]).get("/api/v1/access/pending/").json()["grants_awaiting_dpo"] == []
        error_of(as_user(cast["dpo"]).post(f"/api/v1/grants/{grant.pk}/dpo-approve/"), 409)
        assert audit_verify().intact

    def test_expiry_removes_the_permission_with_the_last_grant(self, cast, dataset):
        grant = active_grant(cast=cast, dataset=dataset)
        Grant.objects.filter(pk=grant.pk).update(valid_from=timezone.now() - timedelta(days=2),
                                                 valid_until=timezone.now() - timedelta(minutes=1))
        tasks.housekeeping_expire_grants()
        assert get_perms(cast["analyst_h"], dataset) == []

    def test_reminder_is_sent_once(self, cast, dataset, settings):
        settings.GRANT_REMINDER_DAYS = 14
        soon = active_grant(cast=cast, dataset=dataset)
        later = active_grant(cast=cast, dataset=dataset, fields=["boardings"])
        Grant.objects.filter(pk=soon.pk).update(valid_until=timezone.now() + timedelta(days=10))
        assert tasks.housekeeping_grant_reminders() == 1
        assert tasks.housekeeping_grant_reminders() == 0
        reminders = Notification.objects.filter(kind="grant.expiring", object_id=str(soon.pk))
        assert {n.recipient for n in reminders} == {cast["analyst_h"], cast["steward"], cast["steward2"]}
        assert not Notification.objects.filter(kind="grant.expiring", object_id=str(later.pk)).exists()
        soon.refresh_from_db()
        assert soon.reminder_sent_at is not None

    def test_department_grantee_reminder_goes_to_its_stewards(self, cast, dataset, other_department):
        grant = active_grant(cast=cast, dataset=dataset, grantee="steward_h", department=other_department)
        Grant.objects.filter(pk=grant.pk).update(valid_until=timezone.now() + timedelta(days=1))
        tasks.housekeeping_grant_reminders()
        recipients = set(Notification.objects.filter(kind="grant.expiring").values_list("recipient__username",
                                                                                         flat=True))
        assert cast["steward_h"].username in recipients and cast["outsider"].username not in recipients


class TestRecertification:
    def age(self, grant, days: int) -> None:
        Grant.objects.filter(pk=grant.pk).update(last_certified_at=timezone.now() - timedelta(days=days))

    def test_old_grants_are_flagged_and_put_to_the_stewards_once(self, as_user, cast, dataset):
        old = active_grant(cast=cast, dataset=dataset)
        fresh = active_grant(cast=cast, dataset=dataset, fields=["boardings"])
        self.age(old, 91)
        body = as_user(cast["steward"]).get("/api/v1/grants/").json()
        flags = {g["id"]: g["needs_recertification"] for g in body["results"]}
        assert flags == {old.pk: True, fresh.pk: False}
        flagged = as_user(cast["steward"]).get("/api/v1/grants/?needs_recertification=true").json()
        assert [g["id"] for g in flagged["results"]] == [old.pk]
        pending = as_user(cast["steward"]).get("/api/v1/access/pending/").json()
        assert [g["id"] for g in pending["grants_to_recertify"]] == [old.pk]

        assert tasks.housekeeping_recertification() == 1
        assert tasks.housekeeping_recertification() == 0
        asked = Notification.objects.filter(kind="grant.recertify")
        assert {n.recipient for n in asked} == {cast["steward"], cast["steward2"]}

    def test_certify_clears_the_flag(self, as_user, cast, dataset, department):
        grant = active_grant(cast=cast, dataset=dataset)
        self.age(grant, 120)
        tasks.housekeeping_recertification()
        error_of(as_user(cast["analyst_h"]).post(f"/api/v1/grants/{grant.pk}/certify/"), 403)
        error_of(as_user(cast["dpo"]).post(f"/api/v1/grants/{grant.pk}/certify/"), 403)
        response = as_user(cast["steward"]).post(f"/api/v1/grants/{grant.pk}/certify/", {"comment": "Still needed"})
        assert response.status_code == 200, response.content
        assert response.json()["needs_recertification"] is False
        event = AuditEvent.objects.get(action="grant.certify")
        assert event.department_id == department.pk and event.details["comment"] == "Still needed"
        # Due again one period later: asked again.
        self.age(grant, 100)
        Grant.objects.filter(pk=grant.pk).update(recertification_requested_at=timezone.now() - timedelta(days=101))
        assert tasks.housekeeping_recertification() == 1


class TestSchemaChangeLapse:
    def test_lapsed_fields_leave_the_view(self, cast, dataset, department):
        grant = active_grant(cast=cast, dataset=dataset, fields=["stop_id", "district"])
        lapsed = grant_fields_lapse(dataset=dataset, removed_or_changed=["district", "boardings"],
                                    reason="Schema v2 removed it")
        assert [g.pk for g in lapsed] == [grant.pk]
        gf = GrantField.objects.get(grant=grant, field_name="district")
        assert gf.lapsed_at is not None and gf.lapse_reason == "Schema v2 removed it"
        assert list(effective_view(dataset=dataset, user=cast["analyst_h"]).fields) == ["stop_id"]
        event = AuditEvent.objects.get(action="grant.lapse")
        assert event.fields == ["district"] and event.department_id == department.pk
        assert Notification.objects.filter(kind="grant.fields_lapsed", recipient=cast["analyst_h"]).exists()
        assert grant_fields_lapse(dataset=dataset, removed_or_changed=["district"], reason="again") == []

    def test_a_grant_scoped_by_a_changed_field_loses_all_its_fields(self, cast, dataset):
        from exchange.access.services import grant_dpo_approve

        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id", "boardings"],
                                row_filter=[{"field": "district", "op": "eq", "value": "North"}])
        decide(actor=cast["steward"], access_request=access_request, approve={"stop_id": None, "boardings": None})
        scoped = access_request.grant
        if scoped.status == "pending_dpo":
            grant_dpo_approve(actor=cast["dpo"], grant=scoped)
        unscoped = active_grant(cast=cast, dataset=dataset, fields=["accessible"])
        lapsed = grant_fields_lapse(dataset=dataset, removed_or_changed=["district"], reason="v2 removed district.")
        assert [g.pk for g in lapsed] == [scoped.pk]
        assert set(GrantField.objects.filter(grant=scoped, lapsed_at__isnull=False)
                   .values_list("field_name", flat=True)) == {"stop_id", "boardings"}
        assert list(effective_view(dataset=dataset, user=cast["analyst_h"]).fields) == ["accessible"]
        assert AuditEvent.objects.get(action="grant.lapse").details["row_filter_lapsed"] is True
        assert GrantField.objects.get(grant=unscoped).lapsed_at is None

    def test_changed_field_names_from_the_change_list(self):
        changes = [
            {"change": "removed", "field": "a"},
            {"change": "renamed", "field": "b2", "from": "b"},
            {"change": "retyped", "field": "c", "from": "integer", "to": "text"},
            {"change": "added", "field": "d"},
            {"change": "sensitivity", "field": "e", "from": "internal", "to": "personal"},
            {"change": "sensitivity", "field": "f", "from": "personal", "to": "internal"},
        ]
        assert lapsing_field_names(changes=changes) == ["a", "b", "b2", "c", "e"]

    def test_receiver_lapses_from_a_published_version(self, cast, dataset):
        grant = active_grant(cast=cast, dataset=dataset, fields=["stop_id", "district", "boardings", "accessible"])
        previous = dataset.current_schema
        new_fields = [("stop_id", "integer", "public"), ("area", "text", "public"),
                      ("boardings", "decimal", "internal"), ("accessible", "boolean", "public"),
                      ("added_field", "text", "public")]
        version = schema_with_fields(dataset, new_fields, number=2, renamed={"area": "district"},
                                     changes=[{"change": "renamed", "field": "area", "from": "district"}])
        on_schema_version_published(sender=None, dataset=dataset, schema_version=version, previous=previous)
        lapsed = set(GrantField.objects.filter(grant=grant, lapsed_at__isnull=False)
                     .values_list("field_name", flat=True))
        assert lapsed == {"district", "boardings"}
        view = effective_view(dataset=dataset, user=cast["analyst_h"])
        assert set(view.fields) == {"stop_id", "accessible"}  # the added field is never granted by default


class TestLists:
    def test_who_sees_which_grants(self, as_user, cast, dataset, other_department):
        mine = active_grant(cast=cast, dataset=dataset)
        dept = active_grant(cast=cast, dataset=dataset, grantee="steward_h", department=other_department)

        def ids(who: str, query: str = "") -> set[int]:
            return {g["id"] for g in as_user(cast[who]).get(f"/api/v1/grants/{query}").json()["results"]}

        assert ids("analyst_h") == {mine.pk, dept.pk}
        assert ids("analyst_h", "?scope=mine") == {mine.pk, dept.pk}
        assert ids("steward_h") == {dept.pk}
        assert ids("steward") == ids("dpo") == ids("city_auditor") == {mine.pk, dept.pk}
        assert ids("nobody") == ids("analyst") == set()
        error_of(as_user(cast["nobody"]).get(f"/api/v1/grants/{mine.pk}/"), 404)
        assert as_user(cast["auditor"]).get(f"/api/v1/grants/{mine.pk}/").status_code == 200

    # principal (2); grants: the page with its total, fields; pending: requests, grants to
    # recertify, fields
    @pytest.mark.parametrize(("url", "queries"), [("/api/v1/grants/", 4), ("/api/v1/access/pending/", 5)])
    def test_lists_cost_constant_queries(self, as_user, cast, dataset, django_assert_num_queries, url, queries):
        def make(n: int) -> None:
            for _ in range(n):
                grant = active_grant(cast=cast, dataset=dataset, fields=["stop_id", "district"])
                Grant.objects.filter(pk=grant.pk).update(last_certified_at=timezone.now() - timedelta(days=200))
                submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])

        client = as_user(cast["steward"])
        seen = []
        for n in (2, 4):  # N, then 3N in all
            make(n)
            principal_forget(cast["steward"])
            with django_assert_num_queries(queries) as ctx:
                client.get(url)
            seen.append(len(ctx.captured_queries))
        assert seen[0] == seen[1]


class TestExplain:
    def url(self, dataset, query: str) -> str:
        return f"/api/v1/datasets/{dataset.pk}/access/explain/?{query}"

    def test_grantee_sees_forms_grants_and_reasons(self, as_user, cast, dataset):
        grant = active_grant(cast=cast, dataset=dataset, fields=["stop_id", "revenue"])
        pending = submit(actor=cast["analyst_h"], dataset=dataset, fields=["passenger_name", "boardings"])
        decide(actor=cast["steward"], access_request=pending, approve={"passenger_name": None},
               deny=["boardings"])
        body = as_user(cast["analyst_h"]).get(self.url(dataset, f"user={cast['analyst_h'].username}")).json()
        assert {f["name"]: (f["form"], f["grant_ids"]) for f in body["fields"]} == {
            "stop_id": ("clear", [grant.pk]), "revenue": ("masked", [grant.pk])}
        hidden = {h["name"]: h["reason"] for h in body["hidden"]}
        assert "waiting for the data protection officer" in hidden["passenger_name"]
        assert "denied in request" in hidden["boardings"] and "Not needed" in hidden["boardings"]
        assert "no active grant covers this field" in hidden["district"]
        assert [g["id"] for g in body["grants"]] == [grant.pk] and body["is_owner"] is False

    def test_owner_sees_everything(self, as_user, cast, dataset):
        body = as_user(cast["steward"]).get(self.url(dataset, "department=transport")).json()
        assert body["is_owner"] is True and body["hidden"] == []

    def test_who_may_ask(self, as_user, cast, dataset):
        about_analyst = self.url(dataset, f"user={cast['analyst_h'].username}")
        for who in ("steward", "auditor", "dpo", "city_auditor", "analyst_h"):
            assert as_user(cast[who]).get(about_analyst).status_code == 200, who
        for who in ("steward_h", "outsider", "analyst"):
            error_of(as_user(cast[who]).get(about_analyst), 403)
        assert as_user(cast["outsider"]).get(self.url(dataset, "department=health")).status_code == 200
        error_of(as_user(cast["outsider"]).get(self.url(dataset, "department=transport")), 403)
        error_of(as_user(cast["steward"]).get(self.url(dataset, "user=ghost")), 400)
        error_of(as_user(cast["steward"]).get(self.url(dataset, "")), 400)

    def test_restricted_dataset_is_404_for_strangers(self, as_user, cast, department):
        dataset = published_dataset(department, visibility="restricted")
        error_of(as_user(cast["analyst_h"]).get(self.url(dataset, f"user={cast['analyst_h'].username}")), 404)


class TestHousekeepingSetup:
    def test_beat_schedules_the_grant_tasks(self):
        from config.celery import app

        scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
        assert {"exchange.tasks.housekeeping_expire_grants", "exchange.tasks.housekeeping_grant_reminders",
                "exchange.tasks.housekeeping_recertification"} <= scheduled
        assert app.conf.task_routes["exchange.tasks.housekeeping_*"] == {"queue": "housekeeping"}

    @pytest.mark.parametrize("value", ["0", "two weeks"])
    def test_bad_day_settings_fail_loudly(self, value):
        from tests.test_foundation import run_manage

        result = run_manage("check", env={"DEBUG": "1", "GRANT_REMINDER_DAYS": value})
        assert result.returncode != 0
        assert "GRANT_REMINDER_DAYS" in result.stderr or f"'{value}'" in result.stderr
