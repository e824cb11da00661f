"""The publication workflow: every transition, who may take it, four eyes, 409s, the
timeline, audit events, notifications and the signals sent after commit."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import mail

from catalog.models import Dataset, DatasetTransition, SchemaStatus
from catalog.signals import breaking_change_published, schema_version_published
from departments.models import Notification
from exchange.audit.models import AuditEvent
from exchange.audit.services import audit_verify
from tests.departments.test_api import assert_error
from tests.factories import PERMIT_FIELDS

pytestmark = pytest.mark.django_db

# (action, status the dataset is in, status it goes to)
TRANSITIONS = {
    "submit": ("draft", "in_review"),
    "approve": ("in_review", "published"),
    "request_changes": ("in_review", "changes_requested"),
    "withdraw": ("in_review", "draft"),
    "revise": ("changes_requested", "draft"),
    "deprecate": ("published", "deprecated"),
    "retire": ("deprecated", "retired"),
}
ROLES = ["steward", "other_steward", "analyst", "reviewer", "steward_reviewer", "dpo", "operator"]
# Expected HTTP status of each role taking each transition. The dataset is visible to a
# role only where the visibility rules say so (else 404); "steward_reviewer" submitted it
# themselves in its row, so approving or requesting changes is refused (four eyes).
EXPECTED: dict[str, dict[str, int]] = {
    "submit": {"steward": 200, "other_steward": 404, "analyst": 403, "reviewer": 404, "steward_reviewer": 200,
               "dpo": 404, "operator": 403},
    "approve": {"steward": 403, "other_steward": 404, "analyst": 403, "reviewer": 200, "steward_reviewer": 403,
                "dpo": 403, "operator": 403},
    "request_changes": {"steward": 403, "other_steward": 404, "analyst": 403, "reviewer": 200,
                        "steward_reviewer": 403, "dpo": 403, "operator": 403},
    "withdraw": {"steward": 200, "other_steward": 404, "analyst": 403, "reviewer": 403, "steward_reviewer": 200,
                 "dpo": 403, "operator": 403},
    "revise": {"steward": 200, "other_steward": 404, "analyst": 403, "reviewer": 404, "steward_reviewer": 200,
               "dpo": 404, "operator": 403},
    "deprecate": {"steward": 200, "other_steward": 403, "analyst": 403, "reviewer": 403, "steward_reviewer": 200,
                  "dpo": 403, "operator": 403},
    "retire": {"steward": 200, "other_steward": 403, "analyst": 403, "reviewer": 403, "steward_reviewer": 200,
               "dpo": 403, "operator": 403},
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", list(TRANSITIONS))
def test_who_may_take_which_transition(as_user, cast, make_dataset, action, role):
    from_status, to_status = TRANSITIONS[action]
    # In its own row the steward-who-reviews is the one who submitted.
    submitter = cast["steward_reviewer"] if role == "steward_reviewer" else cast["steward"]
    dataset = make_dataset(from_status, steward=submitter)
    events_before = AuditEvent.objects.count()
    response = as_user(cast[role]).post(
        f"/api/v1/datasets/{dataset.pk}/transitions/", {"action": action, "comment": "Looks right."}
    )
    expected = EXPECTED[action][role]
    dataset.refresh_from_db()
    if expected == 200:
        assert response.status_code == 200, response.content
        assert response.json()["status"] == to_status
        assert dataset.status == to_status
        step = DatasetTransition.objects.filter(dataset=dataset).latest()
        assert (step.action, step.from_status, step.to_status, step.actor_id, step.comment) == (
            action, from_status, to_status, cast[role].pk, "Looks right.")
        event = AuditEvent.objects.order_by("-id").first()
        assert event.action == f"dataset.{action}" and event.dataset_id == dataset.pk
        assert event.actor_id == cast[role].pk and event.details["to"] == to_status
    else:
        assert_error(response, expected)
        assert dataset.status == from_status
        assert AuditEvent.objects.count() == events_before
    if role == "steward_reviewer" and action in ("approve", "request_changes"):
        assert response.json()["error"]["code"] == "four_eyes"


@pytest.mark.parametrize(
    ("status", "action", "allowed"),
    [
        ("draft", "approve", ["submit"]),
        ("in_review", "submit", ["approve", "request_changes", "withdraw"]),
        ("changes_requested", "approve", ["revise"]),
        ("published", "retire", ["deprecate"]),
        ("deprecated", "deprecate", ["retire"]),
        ("retired", "deprecate", []),
    ],
)
def test_illegal_transition_is_409_listing_the_allowed_ones(as_user, cast, make_dataset, status, action, allowed):
    dataset = make_dataset(status)
    error = assert_error(
        as_user(cast["steward"]).post(f"/api/v1/datasets/{dataset.pk}/transitions/", {"action": action}), 409,
        "illegal_transition",
    )
    assert error["allowed"] == allowed
    dataset.refresh_from_db()
    assert dataset.status == status


def test_unknown_action_is_400(as_user, cast, make_dataset):
    dataset = make_dataset()
    error = assert_error(as_user(cast["steward"]).post(f"/api/v1/datasets/{dataset.pk}/transitions/",
                                                       {"action": "publish"}), 400)
    assert "action" in error["fields"]


def test_four_eyes_another_reviewer_may_approve(as_user, cast, make_dataset):
    dataset = make_dataset("in_review", steward=cast["steward_reviewer"])
    url = f"/api/v1/datasets/{dataset.pk}/transitions/"
    assert_error(as_user(cast["steward_reviewer"]).post(url, {"action": "approve"}), 403, "four_eyes")
    assert as_user(cast["reviewer"]).post(url, {"action": "approve"}).status_code == 200
    dataset.refresh_from_db()
    assert dataset.status == "published"
    assert dataset.current_schema.status == SchemaStatus.PUBLISHED and dataset.published_at


def test_request_changes_needs_a_comment(as_user, cast, make_dataset):
    dataset = make_dataset("in_review")
    error = assert_error(as_user(cast["reviewer"]).post(f"/api/v1/datasets/{dataset.pk}/transitions/",
                                                        {"action": "request_changes"}), 400)
    assert "comment" in error["fields"]


def test_submitting_an_incomplete_dataset_is_400_with_field_errors(as_user, cast, make_dataset):
    dataset = make_dataset(fields=None, themes=[])
    Dataset.objects.filter(pk=dataset.pk).update(contact=None)
    error = assert_error(as_user(cast["steward"]).post(f"/api/v1/datasets/{dataset.pk}/transitions/",
                                                       {"action": "submit"}), 400, "incomplete")
    assert set(error["fields"]) == {"schema", "themes", "contact"}
    dataset.refresh_from_db()
    assert dataset.status == "draft"
    assert not DatasetTransition.objects.filter(dataset=dataset).exists()


def test_full_lifecycle_timeline_notifications_and_audit(as_user, cast, make_dataset,
                                                         django_capture_on_commit_callbacks):
    dataset = make_dataset()
    url = f"/api/v1/datasets/{dataset.pk}/transitions/"
    steward, reviewer = cast["steward"], cast["reviewer"]
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert as_user(steward).post(url, {"action": "submit", "comment": "First version"}).status_code == 200
    # Every governance reviewer is asked to act, by inbox and by mail.
    asked = Notification.objects.filter(kind="dataset.submitted", action_required=True)
    assert set(asked.values_list("recipient_id", flat=True)) == {reviewer.pk, cast["steward_reviewer"].pk}
    assert any(reviewer.email in m.to for m in mail.outbox)

    assert as_user(reviewer).post(url, {"action": "request_changes", "comment": "Units?"}).status_code == 200
    told = Notification.objects.filter(kind="dataset.changes_requested")
    assert steward.pk in set(told.values_list("recipient_id", flat=True))
    assert told.get(recipient=steward).action_required

    for who, action in ((steward, "revise"), (steward, "submit"), (reviewer, "approve"), (steward, "deprecate"),
                        (steward, "retire")):
        assert as_user(who).post(url, {"action": action}).status_code == 200, action
    assert Notification.objects.filter(kind="dataset.approved", recipient=steward).exists()

    timeline = as_user(steward).get(f"/api/v1/datasets/{dataset.pk}/timeline/").json()
    assert [(t["action"], t["from_status"], t["to_status"]) for t in timeline] == [
        ("submit", "draft", "in_review"), ("request_changes", "in_review", "changes_requested"),
        ("revise", "changes_requested", "draft"), ("submit", "draft", "in_review"),
        ("approve", "in_review", "published"), ("deprecate", "published", "deprecated"),
        ("retire", "deprecated", "retired"),
    ]
    assert timeline[1]["actor"] == reviewer.username and timeline[1]["comment"] == "Units?"
    actions = list(AuditEvent.objects.filter(dataset_id=dataset.pk).values_list("action", flat=True))
    assert actions == ["dataset.create", "dataset.schema_update", "dataset.submit", "dataset.request_changes",
                       "dataset.revise", "dataset.submit", "dataset.approve", "dataset.deprecate", "dataset.retire"]
    assert audit_verify().intact


def test_publication_sends_the_signal_after_commit(cast, make_dataset, django_capture_on_commit_callbacks):
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        received.append(kwargs)

    schema_version_published.connect(receiver)
    try:
        dataset = make_dataset("in_review")
        from catalog import services

        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            services.dataset_transition(actor=cast["reviewer"], dataset=dataset, action="approve")
        assert received == []  # nothing before commit
        for callback in callbacks:
            callback()
    finally:
        schema_version_published.disconnect(receiver)
    assert len(received) == 1
    assert received[0]["dataset"].pk == dataset.pk
    assert received[0]["schema_version"].number == 1 and received[0]["previous"] is None


def test_breaking_schema_change_flow(as_user, cast, make_dataset, django_capture_on_commit_callbacks):
    dataset = make_dataset("published")
    steward = as_user(cast["steward"])
    fields = [
        {"name": "permit_number", "renamed_from": "permit_id", "type": "text", "sensitivity": "public",
         "is_key": True},
        {"name": "applicant_name", "type": "text", "sensitivity": "personal"},
        {"name": "fee_eur", "type": "integer", "sensitivity": "internal"},
        {"name": "submitted_on", "type": "date", "sensitivity": "public"},
    ]
    response = steward.put(f"/api/v1/datasets/{dataset.pk}/schema/", {"fields": fields}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["number"] == 2 and body["status"] == "draft" and body["change_kind"] == "breaking"
    assert {(c["change"], c["field"]) for c in body["changes"] if c["change"] != "described"} == {
        ("renamed", "permit_number"), ("retyped", "fee_eur"), ("removed", "parcel_id")}
    url = f"/api/v1/datasets/{dataset.pk}/transitions/"
    assert steward.post(url, {"action": "submit"}).status_code == 200
    dataset.refresh_from_db()
    assert dataset.status == "published" and dataset.current_schema.number == 1
    assert AuditEvent.objects.filter(action="schema.submit", dataset_id=dataset.pk).exists()
    breaking: list[dict[str, Any]] = []

    def on_breaking(sender: Any, **kwargs: Any) -> None:
        breaking.append(kwargs)

    breaking_change_published.connect(on_breaking)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert as_user(cast["reviewer"]).post(url, {"action": "approve"}).status_code == 200
    finally:
        breaking_change_published.disconnect(on_breaking)
    dataset.refresh_from_db()
    assert dataset.current_schema.number == 2
    assert dataset.schema_versions.get(number=1).status == SchemaStatus.SUPERSEDED
    assert breaking and breaking[0]["previous"].number == 1
    assert {c["change"] for c in breaking[0]["changes"]} == {"renamed", "retyped", "removed"}
    assert Notification.objects.filter(kind="schema.breaking_change", recipient=cast["steward"]).exists()
    assert AuditEvent.objects.filter(action="schema.approve", dataset_id=dataset.pk).exists()
    versions = steward.get(f"/api/v1/datasets/{dataset.pk}/schema/versions/").json()
    assert [v["status"] for v in versions] == ["superseded", "published"]
    assert versions[1]["diff_kind"] == "breaking"


def test_schema_version_four_eyes_and_409(as_user, cast, make_dataset):
    dataset = make_dataset("published", steward=cast["steward_reviewer"])
    client = as_user(cast["steward_reviewer"])
    fields = [*PERMIT_FIELDS,
              {"name": "decided_on", "type": "date", "sensitivity": "public"}]
    assert client.put(f"/api/v1/datasets/{dataset.pk}/schema/", {"fields": fields}, format="json").json()[
        "change_kind"] == "additive"
    url = f"/api/v1/datasets/{dataset.pk}/transitions/"
    assert client.post(url, {"action": "submit"}).status_code == 200
    assert_error(client.post(url, {"action": "approve"}), 403, "four_eyes")
    # While the version is in review, the schema cannot be edited.
    error = assert_error(client.put(f"/api/v1/datasets/{dataset.pk}/schema/", {"fields": fields}, format="json"),
                         409, "not_editable")
    assert set(error["allowed"]) == {"deprecate", "approve", "request_changes", "withdraw"}
    assert as_user(cast["reviewer"]).post(url, {"action": "approve"}).status_code == 200
    dataset.refresh_from_db()
    assert dataset.current_schema.number == 2 and dataset.current_schema.change_kind == "additive"


def test_reviewer_sees_schema_review_of_a_restricted_dataset_in_queue(as_user, cast, make_dataset):
    dataset = make_dataset("published", visibility="restricted")
    reviewer = as_user(cast["reviewer"])
    assert_error(reviewer.get(f"/api/v1/datasets/{dataset.pk}/"), 404)
    fields = [dict(f) for f in PERMIT_FIELDS]
    fields[1]["sensitivity"] = "confidential"
    client = as_user(cast["steward"])
    body = client.put(f"/api/v1/datasets/{dataset.pk}/schema/", {"fields": fields}, format="json").json()
    assert body["change_kind"] == "additive"
    assert body["changes"] == [{"change": "sensitivity", "field": "applicant_name", "from": "personal",
                                "to": "confidential", "breaking": False}]
    client.post(f"/api/v1/datasets/{dataset.pk}/transitions/", {"action": "submit"})
    reviewer = as_user(cast["reviewer"])
    queue = reviewer.get("/api/v1/review-queue/").json()
    assert [(q["id"], q["kind"], q["review_version"]) for q in queue] == [(dataset.pk, "schema_version", 2)]
    assert reviewer.get(f"/api/v1/datasets/{dataset.pk}/").status_code == 200
    assert_error(as_user(cast["analyst"]).get("/api/v1/review-queue/"), 403)


def test_admin_is_read_only(client, cast, make_dataset):
    dataset = make_dataset("published")
    client.force_login(cast["operator"])
    cast["operator"].is_superuser = True
    cast["operator"].save()
    assert client.get(f"/admin/catalog/dataset/{dataset.pk}/change/").status_code == 200
    response = client.post(f"/admin/catalog/dataset/{dataset.pk}/change/", {"title": "Hacked"})
    assert response.status_code == 403
    assert client.post(f"/admin/catalog/dataset/{dataset.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.get("/admin/catalog/dataset/add/").status_code == 403
    dataset.refresh_from_db()
    assert dataset.title != "Hacked"
