"""Deciding requests: four eyes, per-field decisions, defaults, the DPO's second approval."""

from __future__ import annotations

from typing import Any

import pytest

from departments.models import Notification
from exchange.access.models import FieldDecision, Grant, GrantField
from exchange.access.policy import effective_view
from exchange.audit.models import AuditEvent
from tests.access_factories import decide, make_cast, published_dataset, submit
from tests.factories import MembershipFactory

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


def decide_url(access_request) -> str:
    return f"/api/v1/access-requests/{access_request.pk}/decide/"


def field(name: str, approved: bool = True, form: str = "", reason: str = "") -> dict[str, Any]:
    return {"name": name, "approved": approved, "form": form, "reason": reason}


class TestFourEyes:
    def test_requester_cannot_decide_even_after_becoming_a_steward(self, as_user, cast, dataset, department):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
        client = as_user(cast["analyst_h"])
        error_of(client.post(decide_url(access_request), {"fields": [field("stop_id")]}), 403)
        MembershipFactory(department=department, role="steward", user=cast["analyst_h"])
        error = error_of(client.post(decide_url(access_request), {"fields": [field("stop_id")]}), 403)
        assert error["code"] == "four_eyes" and "another steward" in error["message"]
        assert not Grant.objects.exists() and not FieldDecision.objects.exists()

    def test_steward_of_the_requesting_department_cannot_decide_for_it(self, as_user, cast, dataset, department,
                                                                       other_department):
        # A steward of both departments asks for health, then tries to decide as transport's steward.
        both = cast["steward_h"]
        MembershipFactory(department=department, role="steward", user=both)
        other = MembershipFactory(department=other_department, role="steward").user
        access_request = submit(actor=other, dataset=dataset, fields=["stop_id"], department=other_department)
        error = error_of(as_user(both).post(decide_url(access_request), {"fields": [field("stop_id")]}), 403)
        assert error["code"] == "four_eyes" and "own department" in error["message"]
        assert not Grant.objects.exists()

    @pytest.mark.parametrize("who", ["steward_h", "analyst", "admin", "auditor", "dpo"])
    def test_only_stewards_of_the_owning_department_decide(self, as_user, cast, dataset, who):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
        response = as_user(cast[who]).post(decide_url(access_request), {"fields": [field("stop_id")]})
        assert response.status_code in (403, 404), response.content
        assert not Grant.objects.exists()

    @pytest.mark.parametrize("who", ["nobody", "outsider", "steward_h"])
    def test_strangers_do_not_learn_the_request_exists(self, as_user, cast, dataset, who):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
        error_of(as_user(cast[who]).post(decide_url(access_request), {"fields": [field("stop_id")]}), 404)

    def test_a_decided_request_is_not_decided_again(self, as_user, cast, dataset):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
        decide(actor=cast["steward"], access_request=access_request, approve={"stop_id": None})
        error = error_of(as_user(cast["steward2"]).post(decide_url(access_request), {"fields": [field("stop_id")]}),
                         409)
        assert error["current_status"] == "approved"


class TestDecide:
    def test_full_approval_of_open_fields_is_active_at_once(self, as_user, cast, dataset, department):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id", "boardings"])
        response = as_user(cast["steward"]).post(decide_url(access_request), {
            "fields": [field("stop_id"), field("boardings", form="masked")], "comment": "OK for planning",
        })
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["status"] == "approved" and body["grant"] is not None
        assert [e["action"] for e in body["timeline"]] == ["submitted", "decided"]
        grant = Grant.objects.get(pk=body["grant"])
        assert grant.status == "active" and grant.purpose == "Plan bus routes"
        assert grant.legal_basis == "Transport Act §12" and grant.valid_until == access_request.requested_end
        assert {f.field_name: f.form for f in grant.fields.all()} == {"stop_id": "clear", "boardings": "masked"}
        assert cast["analyst_h"].has_perm("catalog.view_dataset", dataset)
        view = effective_view(dataset=dataset, user=cast["analyst_h"])
        assert {n: f.form for n, f in view.fields.items()} == {"stop_id": "clear", "boardings": "masked"}

        decided = AuditEvent.objects.get(action="access_request.decide")
        assert decided.department_id == department.pk and decided.dataset_id == dataset.pk
        assert decided.details["approved"] == {"stop_id": "clear", "boardings": "masked"}
        created = AuditEvent.objects.get(action="grant.create")
        assert created.fields == ["stop_id", "boardings"] and created.purpose == "Plan bus routes"
        assert Notification.objects.filter(kind="access_request.approved", recipient=cast["analyst_h"]).exists()

    def test_partial_approval(self, as_user, cast, dataset):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id", "district", "boardings"])
        response = as_user(cast["steward"]).post(decide_url(access_request), {"fields": [
            field("stop_id"), field("district", approved=False, reason="Not needed"),
            field("boardings", approved=False, reason="Commercially sensitive"),
        ]})
        assert response.status_code == 200, response.content
        assert response.json()["status"] == "partially_approved"
        assert {d["name"]: d["approved"] for d in response.json()["decisions"]} == {
            "stop_id": True, "district": False, "boardings": False}
        grant = Grant.objects.get()
        assert list(grant.fields.values_list("field_name", flat=True)) == ["stop_id"]

    def test_everything_denied_makes_no_grant(self, as_user, cast, dataset):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
        response = as_user(cast["steward"]).post(decide_url(access_request), {
            "fields": [field("stop_id", approved=False, reason="No legal basis")]})
        assert response.json()["status"] == "denied"
        assert not Grant.objects.exists()
        assert not cast["analyst_h"].has_perm("catalog.view_dataset", dataset)
        assert Notification.objects.filter(kind="access_request.denied", recipient=cast["analyst_h"]).exists()

    @pytest.mark.parametrize(
        ("fields", "key"),
        [
            ([field("stop_id"), field("district"), field("boardings")], "fields"),  # boardings not requested
            ([field("stop_id")], "fields"),  # district undecided
            ([field("stop_id"), field("district", approved=False)], "fields.district.reason"),
            ([field("stop_id"), field("stop_id"), field("district")], "fields"),
        ],
    )
    def test_bad_decisions_grant_nothing(self, as_user, cast, dataset, fields, key):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id", "district"])
        error = error_of(as_user(cast["steward"]).post(decide_url(access_request), {"fields": fields}), 400)
        assert key in error["fields"], error
        assert not Grant.objects.exists() and not FieldDecision.objects.exists()
        assert not AuditEvent.objects.filter(action__in=["access_request.decide", "grant.create"]).exists()
        access_request.refresh_from_db()
        assert access_request.status == "submitted"

    def test_unknown_form_is_refused(self, as_user, cast, dataset):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
        error = error_of(as_user(cast["steward"]).post(decide_url(access_request),
                                                       {"fields": [field("stop_id", form="rot13")]}), 400)
        assert "fields" in error["fields"]


def test_a_row_filter_broken_by_a_schema_change_cannot_be_approved(as_user, cast, dataset):
    from tests.access_factories import schema_with_fields

    access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"],
                            row_filter=[{"field": "district", "op": "eq", "value": "North"}])
    schema_with_fields(dataset, [("stop_id", "integer", "public")], number=2)
    response = as_user(cast["steward"]).post(decide_url(access_request), {"fields": [field("stop_id")]})
    assert error_of(response, 409)["code"] == "row_filter_stale"
    assert not Grant.objects.exists()
    response = as_user(cast["steward"]).post(decide_url(access_request), {
        "fields": [field("stop_id", approved=False, reason="Filter no longer valid")]})
    assert response.json()["status"] == "denied"


class TestDefaultsAndClearOnPersonal:
    def test_approval_without_a_form_takes_the_classification_default(self, cast, dataset):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset,
                                fields=["district", "boardings", "revenue", "passenger_name"])
        decide(actor=cast["steward"], access_request=access_request,
               approve={"district": None, "boardings": None, "revenue": None, "passenger_name": None})
        forms = dict(GrantField.objects.values_list("field_name", "form"))
        assert forms == {"district": "clear", "boardings": "clear", "revenue": "masked",
                         "passenger_name": "pseudonymised"}

    def test_clear_on_personal_needs_a_reason(self, as_user, cast, dataset):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["passenger_name"])
        client = as_user(cast["steward"])
        error = error_of(client.post(decide_url(access_request),
                                     {"fields": [field("passenger_name", form="clear")]}), 400)
        assert "clear_reason" in error["fields"]
        assert not Grant.objects.exists()
        response = client.post(decide_url(access_request), {
            "fields": [field("passenger_name", form="clear")], "clear_reason": "Court order 17/2026"})
        assert response.status_code == 200, response.content
        assert "Court order 17/2026" in FieldDecision.objects.get().reason
        assert AuditEvent.objects.get(action="access_request.decide").details["clear_reason"] == "Court order 17/2026"

    def test_clear_on_confidential_needs_no_reason(self, cast, dataset):
        access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["revenue"])
        decide(actor=cast["steward"], access_request=access_request, approve={"revenue": "clear"})
        assert GrantField.objects.get().form == "clear"


class TestDpoSecondApproval:
    def make_pending(self, cast, dataset, requester: str = "analyst_h"):
        access_request = submit(actor=cast[requester], dataset=dataset, fields=["stop_id", "passenger_name"])
        return decide(actor=cast["steward"], access_request=access_request,
                      approve={"stop_id": None, "passenger_name": None})

    def test_sensitive_fields_wait_for_the_dpo(self, as_user, cast, dataset):
        access_request = self.make_pending(cast, dataset)
        grant = Grant.objects.get()
        assert access_request.status == "awaiting_dpo" and grant.status == "pending_dpo"
        assert not effective_view(dataset=dataset, user=cast["analyst_h"]).fields
        assert not cast["analyst_h"].has_perm("catalog.view_dataset", dataset)
        told = Notification.objects.filter(kind="grant.pending_dpo")
        assert {n.recipient for n in told} == {cast["dpo"], cast["dpo2"]} and all(n.action_required for n in told)
        pending = as_user(cast["dpo"]).get("/api/v1/access/pending/").json()
        assert [g["id"] for g in pending["grants_awaiting_dpo"]] == [grant.pk]

    @pytest.mark.parametrize("who", ["steward", "steward2", "analyst_h", "city_auditor"])
    def test_only_a_dpo_approves(self, as_user, cast, dataset, who):
        self.make_pending(cast, dataset)
        grant = Grant.objects.get()
        error_of(as_user(cast[who]).post(f"/api/v1/grants/{grant.pk}/dpo-approve/"), 403)
        grant.refresh_from_db()
        assert grant.status == "pending_dpo"

    def test_dpo_approval_activates(self, as_user, cast, dataset):
        self.make_pending(cast, dataset)
        grant = Grant.objects.get()
        response = as_user(cast["dpo"]).post(f"/api/v1/grants/{grant.pk}/dpo-approve/", {"comment": "Art. 6(1)(e)"})
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["status"] == "active" and body["dpo_approved_by"] == cast["dpo"].username
        grant.request.refresh_from_db()
        assert grant.request.status == "approved"
        assert cast["analyst_h"].has_perm("catalog.view_dataset", dataset)
        view = effective_view(dataset=dataset, user=cast["analyst_h"])
        assert view.fields["passenger_name"].form == "pseudonymised"
        assert AuditEvent.objects.filter(action="grant.dpo_approve", dataset_id=dataset.pk).exists()
        error = error_of(as_user(cast["dpo2"]).post(f"/api/v1/grants/{grant.pk}/dpo-approve/"), 409)
        assert error["current_status"] == "active"

    def test_dpo_cannot_approve_their_own_request(self, as_user, cast, dataset, other_department):
        MembershipFactory(department=other_department, role="analyst", user=cast["dpo"])
        self.make_pending(cast, dataset, requester="dpo")
        grant = Grant.objects.get()
        error = error_of(as_user(cast["dpo"]).post(f"/api/v1/grants/{grant.pk}/dpo-approve/"), 403)
        assert error["code"] == "four_eyes"
        assert as_user(cast["dpo"]).get("/api/v1/access/pending/").json()["grants_awaiting_dpo"] == []
        assert as_user(cast["dpo2"]).post(f"/api/v1/grants/{grant.pk}/dpo-approve/").status_code == 200

    def test_the_deciding_steward_cannot_also_be_the_dpo(self, as_user, cast, dataset):
        from departments import services as department_services

        department_services.city_role_grant(actor=None, user=cast["steward"], role="data_protection_officer")
        self.make_pending(cast, dataset)
        grant = Grant.objects.get()
        assert not Notification.objects.filter(kind="grant.pending_dpo", recipient=cast["steward"]).exists()
        error = error_of(as_user(cast["steward"]).post(f"/api/v1/grants/{grant.pk}/dpo-approve/"), 403)
        assert error["code"] == "four_eyes"
        assert as_user(cast["steward"]).get("/api/v1/access/pending/").json()["grants_awaiting_dpo"] == []

    def test_dpo_rejection_denies_the_request(self, as_user, cast, dataset):
        self.make_pending(cast, dataset)
        grant = Grant.objects.get()
        client = as_user(cast["dpo"])
        assert client.post(f"/api/v1/grants/{grant.pk}/dpo-reject/", {"reason": ""}).status_code == 400
        response = client.post(f"/api/v1/grants/{grant.pk}/dpo-reject/", {"reason": "Purpose too vague"})
        assert response.status_code == 200, response.content
        assert response.json()["status"] == "rejected"
        grant.request.refresh_from_db()
        assert grant.request.status == "denied"
        assert not effective_view(dataset=dataset, user=cast["analyst_h"]).fields
        assert AuditEvent.objects.get(action="grant.dpo_reject").details["reason"] == "Purpose too vague"
        assert Notification.objects.filter(kind="grant.dpo_rejected", recipient=cast["analyst_h"]).exists()
        assert Notification.objects.filter(kind="grant.dpo_rejected", recipient=cast["steward"]).exists()
        detail = as_user(cast["analyst_h"]).get(f"/api/v1/access-requests/{grant.request_id}/").json()
        assert [e["action"] for e in detail["timeline"]] == ["submitted", "decided", "dpo_rejected"]
