"""The objection services: who may object, what they may name, the workflow, four eyes, the
timeline, the audit trail, the inboxes and the escalation job."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from config.api.errors import ApplicationError, ConflictError, PermissionDeniedError
from departments.models import Notification
from exchange.audit.models import AuditEvent
from exchange.objections import services
from exchange.objections.models import Objection, ObjectionStatus
from tests.exchange.objections.conftest import raise_objection
from tests.factories import DepartmentFactory, MembershipFactory
from tests.records_support import grant

pytestmark = pytest.mark.django_db


class TestCreate:
    def test_a_reading_department_objects_and_the_owning_stewards_are_told(self, cast, dataset, settings):
        settings.OBJECTION_ANSWER_DAYS = 7
        objection = raise_objection(cast["analyst_h"], dataset)
        assert objection.status == ObjectionStatus.OPEN and objection.department.slug == "health"
        assert objection.fields == ["district"] and objection.record_keys == ["2"]
        assert abs(objection.due_at - (timezone.now() + dt.timedelta(days=7))) < dt.timedelta(minutes=1)
        told = set(Notification.objects.filter(kind="objection.created").values_list("recipient_id", flat=True))
        assert told == {cast["steward"].pk, cast["steward2"].pk}
        assert Notification.objects.filter(kind="objection.created", action_required=True).count() == 2
        event = AuditEvent.objects.get(action="objection.create")
        assert event.fields == ["district"] and event.row_count == 1 and event.dataset_id == dataset.pk
        assert [e.action for e in objection.events.all()] == ["create"]

    def test_a_hidden_field_is_unknown_like_one_that_does_not_exist(self, cast, dataset):
        for name in ("secret_note", "no_such_field"):
            with pytest.raises(ApplicationError) as exc:
                raise_objection(cast["analyst_h"], dataset, fields=[name])
            assert exc.value.fields == {"fields": [f"Unknown field: {name}."]}
        assert not Objection.objects.exists()

    def test_a_record_outside_the_view_is_refused_but_a_missing_one_may_be_named(self, cast, dataset):
        with pytest.raises(ApplicationError) as exc:
            raise_objection(cast["analyst_h"], dataset, record_keys=["99"])
        assert "record_keys" in exc.value.fields
        objection = raise_objection(cast["analyst_h"], dataset, kind="missing_record", record_keys=["99"],
                                    comment="Permit 99 was issued in March.")
        assert objection.record_keys == ["99"]

    def test_records_are_named_only_by_a_key_seen_in_clear(self, cast, dataset):
        parks_analyst = MembershipFactory(department=DepartmentFactory(slug="parks"), role="analyst").user
        grant(dataset, user=parks_analyst, approved_by=cast["steward"], fields={"district": "clear"})
        with pytest.raises(ApplicationError) as exc:
            raise_objection(parks_analyst, dataset)
        assert "key field you see in clear" in exc.value.fields["record_keys"][0]
        assert raise_objection(parks_analyst, dataset, kind="other", record_keys=[]).department.slug == "parks"

    @pytest.mark.parametrize("who", ["outsider", "nobody", "reviewer", "auditor"])
    def test_only_a_reading_department_may_object(self, cast, dataset, who):
        with pytest.raises(PermissionDeniedError):
            raise_objection(cast[who], dataset)

    @pytest.mark.parametrize("who", ["steward", "analyst", "admin"])
    def test_the_owner_does_not_object_to_its_own_data(self, cast, dataset, who):
        with pytest.raises(PermissionDeniedError) as exc:
            raise_objection(cast[who], dataset)
        assert exc.value.code in ("own_dataset", "no_grant")

    def test_records_and_fields_are_optional(self, cast, dataset):
        objection = raise_objection(cast["analyst_h"], dataset, record_keys=[], fields=[])
        assert objection.record_keys == [] and objection.fields == []


class TestAnswer:
    def test_a_steward_accepts_with_the_fix_and_the_objector_is_told(self, cast, dataset):
        objection = raise_objection(cast["analyst_h"], dataset)
        objection = services.objection_accept(actor=cast["steward"], objection=objection,
                                              note="Corrected the district in the source.")
        assert objection.status == ObjectionStatus.ACCEPTED and objection.answered_by == cast["steward"]
        told = set(Notification.objects.filter(kind="objection.accepted").values_list("recipient_id", flat=True))
        assert told == {cast["analyst_h"].pk, cast["steward2"].pk}
        assert AuditEvent.objects.filter(action="objection.accept").count() == 1

    def test_a_rejection_needs_a_reason(self, cast, dataset):
        objection = raise_objection(cast["analyst_h"], dataset)
        with pytest.raises(ApplicationError) as exc:
            services.objection_reject(actor=cast["steward"], objection=objection, reason="  ")
        assert "reason" in exc.value.fields
        objection = services.objection_reject(actor=cast["steward"], objection=objection, reason="Right as is.")
        assert objection.status == ObjectionStatus.REJECTED and objection.answer == "Right as is."

    def test_nobody_answers_their_own_objection(self, cast, dataset, department):
        # A steward of health who is also a steward of transport cannot object (owner), so four
        # eyes is tested with a reviewer who raised it as health's analyst.
        reviewer_analyst = MembershipFactory(department=dataset.department.__class__.objects.get(slug="health"),
                                             role="analyst").user
        from departments import services as department_services

        department_services.city_role_grant(actor=None, user=reviewer_analyst, role="governance_reviewer")
        objection = raise_objection(reviewer_analyst, dataset)
        services.objection_escalate_overdue(now=objection.due_at)
        with pytest.raises(PermissionDeniedError) as exc:
            services.objection_accept(actor=reviewer_analyst, objection=objection, note="Fixed.")
        assert exc.value.code == "four_eyes"

    @pytest.mark.parametrize("who", ["analyst", "admin", "analyst_h", "steward_h", "reviewer"])
    def test_only_owning_stewards_answer_before_escalation(self, cast, dataset, who):
        objection = raise_objection(cast["analyst_h"], dataset)
        with pytest.raises(PermissionDeniedError):
            services.objection_reject(actor=cast[who], objection=objection, reason="No.")

    def test_a_closed_objection_takes_no_step(self, cast, dataset):
        objection = raise_objection(cast["analyst_h"], dataset)
        services.objection_withdraw(actor=cast["analyst_h"], objection=objection)
        with pytest.raises(ConflictError) as exc:
            services.objection_accept(actor=cast["steward"], objection=objection, note="Fixed.")
        assert exc.value.extra == {"current_status": "withdrawn", "allowed": []}

    def test_only_the_objector_withdraws(self, cast, dataset):
        objection = raise_objection(cast["analyst_h"], dataset)
        with pytest.raises(PermissionDeniedError):
            services.objection_withdraw(actor=cast["steward_h"], objection=objection)
        objection = services.objection_withdraw(actor=cast["analyst_h"], objection=objection, comment="My mistake.")
        assert objection.status == ObjectionStatus.WITHDRAWN
        assert AuditEvent.objects.filter(action="objection.withdraw").exists()


class TestEscalation:
    def test_overdue_objections_escalate_once_to_the_reviewers(self, cast, dataset):
        objection = raise_objection(cast["analyst_h"], dataset)
        assert services.objection_escalate_overdue() == 0
        later = objection.due_at + dt.timedelta(minutes=1)
        assert services.objection_escalate_overdue(now=later) == 1
        assert services.objection_escalate_overdue(now=later) == 0
        objection.refresh_from_db()
        assert objection.escalated and objection.status == ObjectionStatus.OPEN
        assert Notification.objects.get(kind="objection.escalated", action_required=True).recipient == cast["reviewer"]
        assert AuditEvent.objects.filter(action="objection.escalate").count() == 1
        assert [e.action for e in objection.events.all()] == ["create", "escalate"]

    def test_a_reviewer_answers_an_escalated_objection(self, cast, dataset):
        objection = raise_objection(cast["analyst_h"], dataset)
        services.objection_escalate_overdue(now=objection.due_at)
        objection = services.objection_reject(actor=cast["reviewer"], objection=objection, reason="Data is right.")
        assert objection.status == ObjectionStatus.REJECTED

    def test_answered_objections_do_not_escalate(self, cast, dataset):
        objection = raise_objection(cast["analyst_h"], dataset)
        services.objection_accept(actor=cast["steward"], objection=objection, note="Fixed.")
        assert services.objection_escalate_overdue(now=objection.due_at + dt.timedelta(days=1)) == 0

    def test_the_beat_job_runs_the_service(self, cast, dataset):
        from exchange.tasks import objection_tasks

        objection = raise_objection(cast["analyst_h"], dataset)
        Objection.objects.filter(pk=objection.pk).update(due_at=timezone.now() - dt.timedelta(seconds=1))
        assert objection_tasks.housekeeping_escalate_objections.apply().get() == 1
        assert objection_tasks.housekeeping_escalate_objections.apply().get() == 0


def test_beat_runs_the_escalation():
    from config.celery import app

    tasks = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert "exchange.tasks.housekeeping_escalate_objections" in tasks
