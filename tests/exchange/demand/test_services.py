"""The data-request workflow: every step allowed and refused, four eyes, the audit trail, the
inbox, joining and leaving, and who sees what."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from catalog.models import Dataset
from config.api.errors import ApplicationError, ConflictError, PermissionDeniedError
from departments.models import Department, Notification
from exchange.audit.models import AuditEvent
from exchange.demand import selectors, services
from exchange.demand.models import DataRequest, DataRequestEvent, DataRequestSupporter
from tests.access_factories import published_dataset
from tests.exchange.demand.conftest import new_request, wishes

pytestmark = pytest.mark.django_db


def notified(kind: str) -> set[str]:
    return set(Notification.objects.filter(kind=kind).values_list("recipient__username", flat=True))


def names(*users) -> set[str]:
    return {u.username for u in users}


def audited(data_request: DataRequest) -> list[str]:
    return list(AuditEvent.objects.filter(object_type="exchange.datarequest", object_id=str(data_request.pk))
                .order_by("id").values_list("action", flat=True))


class TestSubmit:
    def test_an_analyst_asks_and_the_reviewers_are_told(self, cast):
        data_request = new_request(cast["analyst_h"])
        assert data_request.status == "open"
        assert data_request.department.slug == "health"
        assert [f["name"] for f in data_request.fields] == ["stop_id", "accessible", "ramp_width"]
        assert notified("data_request.submitted") == names(cast["reviewer"], cast["reviewer2"],
                                                           cast["reviewer_analyst"])
        assert audited(data_request) == ["data_request.submit"]
        assert list(data_request.events.values_list("action", flat=True)) == ["submit"]

    @pytest.mark.parametrize("who", ["nobody", "outsider", "auditor", "reviewer", "dpo"])
    def test_only_analysts_and_stewards_ask(self, cast, who):
        with pytest.raises(PermissionDeniedError):
            new_request(cast[who])
        assert not DataRequest.objects.exists()

    @pytest.mark.parametrize(("fields", "key"), [
        ([], "fields"),
        (wishes(*[f"f{i}" for i in range(101)]), "fields"),
        (wishes("a", "a"), "fields[1].name"),
        (wishes(" "), "fields[0].name"),
        (wishes("x" * 64), "fields[0].name"),
        ([services.FieldWish(name="a", description="d" * 1001)], "fields[0].description"),
    ])
    def test_bad_fields_are_refused_and_nothing_is_written(self, cast, fields, key):
        with pytest.raises(ApplicationError) as exc:
            services.data_request_submit(actor=cast["analyst_h"], title="T", description="D", purpose="P",
                                         fields=fields)
        assert key in exc.value.fields
        assert not DataRequest.objects.exists()
        assert not AuditEvent.objects.filter(action="data_request.submit").exists()

    def test_a_hundred_fields_are_fine(self, cast):
        data_request = services.data_request_submit(actor=cast["analyst_h"], title="T", description="D",
                                                    purpose="P", fields=wishes(*[f"f{i}" for i in range(100)]))
        assert len(data_request.fields) == 100

    def test_title_description_and_purpose_are_required(self, cast):
        with pytest.raises(ApplicationError) as exc:
            services.data_request_submit(actor=cast["analyst_h"], title=" ", description="", purpose="",
                                         fields=wishes("a"))
        assert set(exc.value.fields) == {"title", "description", "purpose"}

    def test_a_department_where_one_is_not_analyst_or_steward_is_refused(self, cast, department):
        with pytest.raises(ApplicationError) as exc:
            services.data_request_submit(actor=cast["analyst_h"], title="T", description="D", purpose="P",
                                         fields=wishes("a"), department=department)
        assert "department" in exc.value.fields


class TestRoute:
    def test_a_reviewer_routes_and_the_departments_stewards_are_told(self, cast, make_request, department):
        data_request = make_request("routed")
        assert data_request.status == "routed"
        assert data_request.routed_department == department
        assert notified("data_request.routed") == names(cast["steward"], cast["steward2"])
        assert audited(data_request) == ["data_request.submit", "data_request.route"]
        assert Notification.objects.get(kind="data_request.routed", recipient=cast["steward"]).action_required

    def test_a_routed_request_may_be_routed_again(self, cast, make_request, other_department):
        data_request = make_request("routed")
        data_request = services.data_request_route(actor=cast["reviewer2"], data_request=data_request,
                                                   department=other_department)
        assert data_request.routed_department == other_department

    @pytest.mark.parametrize("who", ["steward", "analyst", "dpo", "operator"])
    def test_only_reviewers_route(self, cast, make_request, department, who):
        data_request = make_request("open")
        with pytest.raises(PermissionDeniedError):
            services.data_request_route(actor=cast[who], data_request=data_request, department=department)
        assert DataRequest.objects.get(pk=data_request.pk).status == "open"

    def test_four_eyes_a_reviewer_does_not_route_their_own_request(self, cast, department):
        data_request = new_request(cast["reviewer_analyst"])
        with pytest.raises(PermissionDeniedError) as exc:
            services.data_request_route(actor=cast["reviewer_analyst"], data_request=data_request,
                                        department=department)
        assert exc.value.code == "four_eyes"
        assert cast["reviewer_analyst"].username not in notified("data_request.submitted")

    @pytest.mark.parametrize("state", ["accepted", "fulfilled", "declined", "withdrawn"])
    def test_route_is_refused_from_later_states_with_the_allowed_steps(self, cast, make_request, department, state):
        data_request = make_request(state)
        with pytest.raises(ConflictError) as exc:
            services.data_request_route(actor=cast["reviewer2"], data_request=data_request, department=department)
        assert exc.value.extra["current_status"] == state
        assert exc.value.extra["allowed"] == list(services.STEPS[state])


class TestAcceptDecline:
    def test_a_routed_steward_accepts_and_requester_and_joiners_are_told(self, cast, make_request):
        data_request = make_request("routed")
        services.data_request_join(actor=cast["steward_h"], data_request=data_request, purpose="Ramps budget")
        data_request = services.data_request_accept(actor=cast["steward"], data_request=data_request,
                                                    comment="Next quarter")
        assert data_request.status == "accepted" and data_request.decided_by == cast["steward"]
        assert notified("data_request.accepted") == names(cast["analyst_h"], cast["steward_h"])
        assert audited(data_request)[-1] == "data_request.accept"

    def test_decline_needs_a_reason_and_tells_requester_and_joiners(self, cast, make_request):
        data_request = make_request("routed")
        with pytest.raises(ApplicationError) as exc:
            services.data_request_decline(actor=cast["steward"], data_request=data_request, reason=" ")
        assert "reason" in exc.value.fields
        data_request = services.data_request_decline(actor=cast["steward"], data_request=data_request,
                                                     reason="We do not measure ramps.")
        assert data_request.status == "declined" and data_request.decline_reason == "We do not measure ramps."
        assert notified("data_request.declined") == names(cast["analyst_h"])

    def test_an_accepted_request_may_still_be_declined(self, cast, make_request):
        data_request = services.data_request_decline(actor=cast["steward"], data_request=make_request("accepted"),
                                                     reason="Budget cut.")
        assert data_request.status == "declined"

    @pytest.mark.parametrize("who", ["steward_h", "analyst", "reviewer", "admin"])
    def test_only_stewards_of_the_routed_department_decide(self, cast, make_request, who):
        data_request = make_request("routed")
        with pytest.raises(PermissionDeniedError):
            services.data_request_accept(actor=cast[who], data_request=data_request)
        with pytest.raises(PermissionDeniedError):
            services.data_request_decline(actor=cast[who], data_request=data_request, reason="x")

    def test_four_eyes_a_steward_does_not_decide_their_own_request(self, cast, make_request):
        data_request = make_request("routed", actor=cast["steward"])
        for decide in (lambda: services.data_request_accept(actor=cast["steward"], data_request=data_request),
                       lambda: services.data_request_decline(actor=cast["steward"], data_request=data_request,
                                                             reason="x")):
            with pytest.raises(PermissionDeniedError) as exc:
                decide()
            assert exc.value.code == "four_eyes"
        assert services.data_request_accept(actor=cast["steward2"], data_request=data_request).status == "accepted"

    @pytest.mark.parametrize("state", ["open", "accepted", "declined", "withdrawn", "fulfilled"])
    def test_accept_only_from_routed(self, cast, make_request, state):
        with pytest.raises((ConflictError, PermissionDeniedError)) as exc:
            services.data_request_accept(actor=cast["steward"], data_request=make_request(state))
        # Never routed (open, or withdrawn while open): nobody is its steward (403); otherwise the
        # state says no.
        assert exc.value.status_code == (403 if state in ("open", "withdrawn") else 409)


class TestFulfil:
    def test_the_published_dataset_is_linked_and_everyone_offered_a_prefilled_request(
            self, cast, make_request, department):
        data_request = make_request("accepted")
        services.data_request_join(actor=cast["steward_h"], data_request=data_request, purpose="Ramps budget")
        dataset = published_dataset(department)  # has stop_id and accessible, not ramp_width
        data_request = services.data_request_fulfil(actor=cast["steward"], data_request=data_request,
                                                    dataset=dataset)
        assert data_request.status == "fulfilled" and data_request.dataset == dataset
        assert notified("data_request.fulfilled") == names(cast["analyst_h"], cast["steward_h"])
        link = Notification.objects.filter(kind="data_request.fulfilled").values_list("link", flat=True).first()
        assert link == f"/requested-data/{data_request.pk}/request-access/"
        assert audited(data_request)[-1] == "data_request.fulfil"
        assert AuditEvent.objects.filter(action="data_request.fulfil", dataset_id=dataset.pk).exists()

        data_request = selectors.data_request_get(user=cast["analyst_h"], data_request_id=data_request.pk)
        url = services.prefilled_access_url(data_request=data_request, user=cast["analyst_h"])
        assert urlsplit(url).path == f"/datasets/{dataset.pk}/request-access/"
        query = parse_qs(urlsplit(url).query)
        assert query == {"fields": ["stop_id", "accessible"], "purpose": ["Plan accessible routes"]}
        url = services.prefilled_access_url(data_request=data_request, user=cast["steward_h"])
        assert parse_qs(urlsplit(url).query)["purpose"] == ["Ramps budget"]

    def test_only_a_published_dataset_of_the_routed_department(self, cast, make_request, other_department,
                                                              department):
        data_request = make_request("accepted")
        elsewhere = published_dataset(other_department)
        draft = published_dataset(department, status="draft")
        for dataset in (elsewhere, draft):
            with pytest.raises(ApplicationError) as exc:
                services.data_request_fulfil(actor=cast["steward"], data_request=data_request, dataset=dataset)
            assert "dataset" in exc.value.fields
        assert DataRequest.objects.get(pk=data_request.pk).status == "accepted"

    def test_fulfil_only_once_accepted(self, cast, make_request, department):
        with pytest.raises(ConflictError):
            services.data_request_fulfil(actor=cast["steward"], data_request=make_request("routed"),
                                         dataset=published_dataset(department))

    def test_four_eyes_on_fulfil(self, cast, make_request, department):
        data_request = make_request("accepted", actor=cast["steward"])
        with pytest.raises(PermissionDeniedError):
            services.data_request_fulfil(actor=cast["steward"], data_request=data_request,
                                         dataset=published_dataset(department))


class TestWithdrawAndDuplicate:
    @pytest.mark.parametrize("state", ["open", "routed", "accepted"])
    def test_the_requester_withdraws_until_fulfilled(self, cast, make_request, state):
        data_request = services.data_request_withdraw(actor=cast["analyst_h"], data_request=make_request(state),
                                                      comment="Found it elsewhere")
        assert data_request.status == "withdrawn" and data_request.closed_at is not None
        assert audited(data_request)[-1] == "data_request.withdraw"
        told = notified("data_request.withdrawn")
        assert told == (names(cast["reviewer"], cast["reviewer2"], cast["reviewer_analyst"]) if state == "open"
                        else names(cast["steward"], cast["steward2"]))

    @pytest.mark.parametrize("state", ["fulfilled", "declined", "withdrawn"])
    def test_not_after_it_is_closed(self, cast, make_request, state):
        with pytest.raises(ConflictError):
            services.data_request_withdraw(actor=cast["analyst_h"], data_request=make_request(state))

    def test_only_the_requester_withdraws(self, cast, make_request):
        with pytest.raises(PermissionDeniedError):
            services.data_request_withdraw(actor=cast["reviewer"], data_request=make_request("open"))

    def test_a_reviewer_closes_a_duplicate_with_a_link_to_the_original(self, cast, make_request):
        original = make_request("routed")
        duplicate = new_request(cast["steward_h"], title="Ramps at stops")
        services.data_request_join(actor=cast["analyst"], data_request=duplicate, purpose="Audit")
        duplicate = services.data_request_close_duplicate(actor=cast["reviewer"], data_request=duplicate,
                                                          original=original)
        assert duplicate.status == "duplicate" and duplicate.duplicate_of == original
        assert notified("data_request.duplicate") == names(cast["steward_h"], cast["analyst"])
        assert Notification.objects.filter(kind="data_request.duplicate").first().link == \
            f"/requested-data/{original.pk}/"
        assert audited(duplicate)[-1] == "data_request.duplicate"

    def test_not_a_duplicate_of_itself_nor_of_a_closed_request(self, cast, make_request):
        data_request = make_request("open")
        with pytest.raises(ApplicationError):
            services.data_request_close_duplicate(actor=cast["reviewer"], data_request=data_request,
                                                  original=data_request)
        with pytest.raises(ApplicationError):
            services.data_request_close_duplicate(actor=cast["reviewer"], data_request=data_request,
                                                  original=make_request("withdrawn"))
        with pytest.raises(PermissionDeniedError):
            services.data_request_close_duplicate(actor=cast["steward"], data_request=data_request,
                                                  original=make_request("routed"))


class TestJoinLeave:
    def test_join_with_ones_own_purpose_and_leave(self, cast, make_request):
        data_request = make_request("routed")
        supporter = services.data_request_join(actor=cast["steward_h"], data_request=data_request,
                                               purpose="Ramps budget")
        assert supporter.purpose == "Ramps budget"
        with pytest.raises(ConflictError):
            services.data_request_join(actor=cast["steward_h"], data_request=data_request, purpose="Again")
        services.data_request_leave(actor=cast["steward_h"], data_request=data_request)
        assert not DataRequestSupporter.objects.exists()
        with pytest.raises(ConflictError):
            services.data_request_leave(actor=cast["steward_h"], data_request=data_request)
        assert audited(data_request)[-2:] == ["data_request.join", "data_request.leave"]
        assert AuditEvent.objects.get(action="data_request.join").purpose == "Ramps budget"

    def test_the_requester_does_not_join_their_own(self, cast, make_request):
        with pytest.raises(ConflictError):
            services.data_request_join(actor=cast["analyst_h"], data_request=make_request("open"), purpose="x")

    def test_a_purpose_is_needed(self, cast, make_request):
        with pytest.raises(ApplicationError) as exc:
            services.data_request_join(actor=cast["steward_h"], data_request=make_request("open"), purpose=" ")
        assert "purpose" in exc.value.fields

    @pytest.mark.parametrize("state", ["fulfilled", "declined", "withdrawn"])
    def test_no_joining_a_closed_request(self, cast, make_request, state):
        with pytest.raises(ConflictError):
            services.data_request_join(actor=cast["steward_h"], data_request=make_request(state), purpose="x")


class TestVisibility:
    def test_open_requests_are_seen_by_everyone_signed_in(self, cast, make_request):
        data_request = make_request("routed")
        for who in ("nobody", "outsider", "auditor", "steward_h"):
            assert selectors.data_request_get(user=cast[who], data_request_id=data_request.pk) == data_request

    def test_a_closed_request_only_by_those_it_concerns(self, cast, make_request, department):
        declined = make_request("declined")
        DataRequestSupporter.objects.create(request=declined, user=cast["dpo"], purpose="x")
        may = {"analyst_h", "dpo", "reviewer", "reviewer2", "steward", "steward2", "analyst", "admin", "auditor"}
        for who in ("analyst_h", "dpo", "reviewer", "steward", "analyst", "admin", "auditor", "nobody",
                    "outsider", "steward_h", "city_auditor", "operator"):
            visible = selectors.data_request_list(user=cast[who]).filter(pk=declined.pk).exists()
            assert visible == (who in may), who

    def test_filters(self, cast, make_request, other_department):
        routed = make_request("routed")
        new_request(cast["steward_h"], title="Tree inventory", names=("tree_id",))
        user = cast["nobody"]
        assert list(selectors.data_request_list(user=user, status="routed")) == [routed]
        assert list(selectors.data_request_list(user=user, department="transport")) == [routed]
        assert [r.title for r in selectors.data_request_list(user=user, search="tree_id")] == ["Tree inventory"]
        assert [r.title for r in selectors.data_request_list(user=user, search="TREE")] == ["Tree inventory"]
        assert list(selectors.data_request_list(user=cast["analyst_h"], mine=True)) == [routed]


def test_steps_offered_follow_the_rules(cast, make_request):
    data_request = make_request("routed")
    assert services.steps_for(user=cast["steward"], data_request=data_request) == {"accept", "decline", "join"}
    assert services.steps_for(user=cast["reviewer"], data_request=data_request) == {"route", "duplicate", "join"}
    assert services.steps_for(user=cast["analyst_h"], data_request=data_request) == {"withdraw"}
    assert Dataset.objects.count() == 0 and Department.objects.count() == 2
    assert DataRequestEvent.objects.filter(request=data_request).count() == 2
