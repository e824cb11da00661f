"""The access pages: each for the right roles, 403/404 for the others, forms that write only
when valid and show errors next to the field, and constant query counts on the lists."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from departments.selectors import principals_forget_all
from exchange.access.models import AccessRequest, Grant, GrantStatus, RequestStatus
from exchange.access.services import grant_dpo_approve
from exchange.audit.models import AuditEvent
from tests.access_factories import active_grant, decide, make_cast, published_dataset, submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def cast(people, department, other_department):
    return make_cast(people, department, other_department)


@pytest.fixture
def dataset(department):
    return published_dataset(department)


def _period() -> dict[str, str]:
    today = timezone.localdate()
    return {"requested_start": today.isoformat(), "requested_end": (today + timedelta(days=60)).isoformat()}


def test_request_access_form_shows_fields_with_badges_and_likely_forms(client, cast, dataset):
    client.force_login(cast["analyst_h"])
    page = client.get(f"/datasets/{dataset.pk}/request-access/").content.decode()
    assert 'value="passenger_name"' in page and 'class="badge personal"' in page
    assert "pseudonymised" in page and "masked" in page
    assert 'name="csrfmiddlewaretoken"' in page


def test_request_submitted_through_the_form_creates_the_request(client, cast, dataset):
    client.force_login(cast["analyst_h"])
    response = client.post(f"/datasets/{dataset.pk}/request-access/", {
        "fields_": ["stop_id", "district", "passenger_name"], "purpose": "Plan bus routes",
        "legal_basis": "Transport Act §12", **_period(), "rf-0-field": "district", "rf-0-op": "eq",
        "rf-0-value": "North", "rf-1-field": "stop_id", "rf-1-op": "in", "rf-1-value": "3, 5",
        "rf-2-field": "", "rf-2-op": "eq", "rf-2-value": "",  # a blank row is no condition
    })
    access_request = AccessRequest.objects.get()
    assert response.status_code == 302 and response.url == f"/access/requests/{access_request.pk}/"
    assert access_request.fields == ["stop_id", "district", "passenger_name"]
    assert access_request.principal_user == cast["analyst_h"]
    assert access_request.row_filter == [{"field": "district", "op": "eq", "value": "North"},
                                         {"field": "stop_id", "op": "in", "value": [3, 5]}]
    page = client.get(response.url).content.decode()
    assert "was sent to its stewards" in page and "Submitted" in page


def test_steward_requests_for_their_department(client, cast, dataset, other_department):
    client.force_login(cast["steward_h"])
    response = client.post(f"/datasets/{dataset.pk}/request-access/", {
        "fields_": ["stop_id"], "on_behalf": other_department.slug, "purpose": "Plan",
        "legal_basis": "Act", **_period(),
    })
    assert response.status_code == 302
    assert AccessRequest.objects.get().principal_department == other_department


def test_bad_request_form_shows_errors_next_to_fields_and_writes_nothing(client, cast, dataset):
    client.force_login(cast["analyst_h"])
    events = AuditEvent.objects.count()
    today = timezone.localdate()
    response = client.post(f"/datasets/{dataset.pk}/request-access/", {
        "fields_": [], "purpose": "", "legal_basis": "Act",
        "requested_start": today.isoformat(), "requested_end": (today - timedelta(days=3)).isoformat(),
        "rf-0-field": "stop_id", "rf-0-op": "eq", "rf-0-value": "not-a-number",
    })
    assert response.status_code == 400
    page = response.content.decode()
    assert 'id="fields-errors"' in page and "Name at least one field." in page
    assert 'id="id_purpose-error"' in page and "Say what the data is for." in page
    assert 'id="id_requested_end-error"' in page
    assert 'id="rf-0-value-error"' in page and "whole number" in page
    assert not AccessRequest.objects.exists() and AuditEvent.objects.count() == events


def _request_form(**extra: str) -> dict[str, object]:
    return {"fields_": ["stop_id", "district"], "purpose": "Plan bus routes", "legal_basis": "Transport Act §12",
            **_period(), **extra}


def test_condition_rows_are_added_and_removed_without_saving(client, cast, dataset):
    client.force_login(cast["analyst_h"])
    url = f"/datasets/{dataset.pk}/request-access/"
    events = AuditEvent.objects.count()
    page = client.get(url).content.decode()
    assert 'id="add-condition"' in page and 'id="rf-0-field"' not in page and "All rows." in page
    response = client.post(url, _request_form(op="rf-add", **{"rf-0-field": "district", "rf-0-op": "eq",
                                                              "rf-0-value": "North"}))
    page = response.content.decode()
    assert response.status_code == 200 and "field-error" not in page
    assert 'name="rf-1-field"' in page and 'id="rf-1-field" name="rf-1-field" autofocus' in page
    assert 'value="North"' in page and "Plan bus routes</textarea>" in page and 'value="stop_id" checked' in page
    assert "Condition 2 added." in page
    response = client.post(url, _request_form(op="rf-remove:0", **{
        "rf-0-field": "district", "rf-0-value": "North", "rf-1-field": "boardings", "rf-1-op": "gte",
        "rf-1-value": "10"}), HTTP_HX_REQUEST="true")
    page = response.content.decode()
    assert 'name="rf-1-field"' not in page and 'value="boardings" selected' in page and 'value="10"' in page
    assert 'value="North"' not in page and "Condition 1 removed." in page and 'id="add-condition"' in page
    assert not AccessRequest.objects.exists() and AuditEvent.objects.count() == events


def test_each_condition_error_is_shown_next_to_its_condition_and_nothing_is_saved(client, cast, dataset):
    client.force_login(cast["analyst_h"])
    events = AuditEvent.objects.count()
    response = client.post(f"/datasets/{dataset.pk}/request-access/", _request_form(**{
        "rf-0-field": "district", "rf-0-op": "eq", "rf-0-value": "North",
        "rf-1-field": "", "rf-1-op": "eq", "rf-1-value": "",  # blank: left out, numbering follows the page
        "rf-2-field": "boardings", "rf-2-op": "contains", "rf-2-value": "1",
        "rf-3-field": "measured_on", "rf-3-op": "gte", "rf-3-value": "yesterday",
    }))
    assert response.status_code == 400
    page = response.content.decode()
    assert 'id="rf-2-op-error"' in page and "does not fit a integer field" in page
    assert 'id="rf-3-value-error"' in page and "YYYY-MM-DD" in page
    assert 'id="rf-0-field-error"' not in page and 'id="rf-0-value-error"' not in page
    assert 'aria-describedby="rf-2-op-error"' in page and 'value="yesterday"' in page
    assert not AccessRequest.objects.exists() and AuditEvent.objects.count() == events


def test_a_condition_without_a_field_is_refused_next_to_it(client, cast, dataset):
    client.force_login(cast["analyst_h"])
    response = client.post(f"/datasets/{dataset.pk}/request-access/", _request_form(**{
        "rf-0-field": "", "rf-0-op": "eq", "rf-0-value": "North", "requested_start": "soon"}))
    page = response.content.decode()
    assert response.status_code == 400 and 'id="rf-0-field-error"' in page and "Choose a field" in page
    assert 'id="id_requested_start-error"' in page  # the form's own errors are shown at the same time
    assert not AccessRequest.objects.exists()


def test_too_many_conditions_are_refused_by_the_service(client, cast, dataset):
    from exchange.access.services import ROW_FILTER_MAX_CONDITIONS

    client.force_login(cast["analyst_h"])
    rows = {}
    for i in range(ROW_FILTER_MAX_CONDITIONS + 1):
        rows.update({f"rf-{i}-field": "stop_id", f"rf-{i}-op": "gte", f"rf-{i}-value": str(i)})
    response = client.post(f"/datasets/{dataset.pk}/request-access/", _request_form(**rows))
    page = response.content.decode()
    assert response.status_code == 400 and 'id="conditions-errors"' in page
    assert f"At most {ROW_FILTER_MAX_CONDITIONS} conditions." in page and 'id="add-condition"' not in page
    assert not AccessRequest.objects.exists()


def test_request_access_404_for_a_dataset_I_may_not_see(client, cast, department):
    hidden = published_dataset(department, visibility="restricted")
    client.force_login(cast["analyst_h"])
    assert client.get(f"/datasets/{hidden.pk}/request-access/").status_code == 404
    assert client.get("/datasets/999999/request-access/").status_code == 404


def test_only_analysts_and_stewards_may_request(client, cast, dataset):
    client.force_login(cast["nobody"])
    response = client.post(f"/datasets/{dataset.pk}/request-access/", {
        "fields_": ["stop_id"], "purpose": "x", "legal_basis": "y", **_period()})
    assert response.status_code == 403 and not AccessRequest.objects.exists()


def test_my_requests_list_and_detail_with_timeline_and_withdraw(client, cast, dataset):
    access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
    client.force_login(cast["analyst_h"])
    listing = client.get("/access/requests/").content.decode()
    assert f"#{access_request.pk}" in listing and "Submitted" in listing
    detail = client.get(f"/access/requests/{access_request.pk}/").content.decode()
    assert "Submitted</strong> by" in detail and "Withdraw the request" in detail
    response = client.post(f"/access/requests/{access_request.pk}/", {"comment": "Any news?"})
    assert response.status_code == 302
    assert "Any news?" in client.get(f"/access/requests/{access_request.pk}/").content.decode()
    response = client.post(f"/access/requests/{access_request.pk}/withdraw/", {"comment": "No longer needed"})
    assert response.status_code == 302
    access_request.refresh_from_db()
    assert access_request.status == RequestStatus.WITHDRAWN


def test_empty_comment_shows_the_error_next_to_the_field(client, cast, dataset):
    access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
    client.force_login(cast["analyst_h"])
    response = client.post(f"/access/requests/{access_request.pk}/", {"comment": "  "})
    assert response.status_code == 400 and 'id="id_comment-error"' in response.content.decode()


def test_request_detail_is_404_for_outsiders(client, cast, dataset):
    access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
    client.force_login(cast["analyst"])  # owning department analyst: not steward, not auditor
    assert client.get(f"/access/requests/{access_request.pk}/").status_code == 404
    client.force_login(cast["nobody"])
    assert client.get(f"/access/requests/{access_request.pk}/").status_code == 404
    assert client.post(f"/access/requests/{access_request.pk}/withdraw/").status_code == 404


def test_steward_decides_two_of_three_fields_and_the_dpo_approves(client, cast, dataset):
    access_request = submit(actor=cast["analyst_h"], dataset=dataset,
                            fields=["stop_id", "passenger_name", "revenue"])
    client.force_login(cast["steward"])
    page = client.get(f"/access/requests/{access_request.pk}/decide/").content.decode()
    assert '<option value="pseudonymised" selected>' in page  # default for personal
    response = client.post(f"/access/requests/{access_request.pk}/decide/", {
        "decision-stop_id": "approve", "form-stop_id": "clear",
        "decision-passenger_name": "approve", "form-passenger_name": "pseudonymised",
        "decision-revenue": "deny", "reason-revenue": "Not needed for route planning",
        "comment": "Two of three",
    })
    assert response.status_code == 302
    access_request.refresh_from_db()
    assert access_request.status == RequestStatus.AWAITING_DPO
    grant = Grant.objects.get(request=access_request)
    assert {f.field_name: f.form for f in grant.fields.all()} == {"stop_id": "clear",
                                                                  "passenger_name": "pseudonymised"}

    client.force_login(cast["dpo"])
    queue = client.get("/access/dpo/").content.decode()
    assert f"grant #{grant.pk}" in queue
    assert f"Grant #{grant.pk}" in client.get("/access/").content.decode()
    response = client.post(f"/access/grants/{grant.pk}/dpo-approve/", {"reason": "Fine", "next": "/access/dpo/"})
    assert response.status_code == 302 and response.url == "/access/dpo/"
    grant.refresh_from_db()
    assert grant.status == GrantStatus.ACTIVE

    client.force_login(cast["analyst_h"])
    grants_page = client.get("/access/grants/").content.decode()
    assert f'id="grant-{grant.pk}"' in grants_page and "passenger_name" in grants_page
    assert "expires in 89 days" in grants_page and f"/datasets/{dataset.pk}/records/" in grants_page
    assert "Transport Act" in grants_page


def test_decide_errors_are_shown_next_to_the_field_and_nothing_is_written(client, cast, dataset):
    access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id", "passenger_name"])
    client.force_login(cast["steward"])
    response = client.post(f"/access/requests/{access_request.pk}/decide/", {
        "decision-stop_id": "deny", "reason-stop_id": "",
        "decision-passenger_name": "approve", "form-passenger_name": "clear",
    })
    assert response.status_code == 400
    page = response.content.decode()
    assert 'id="err-stop_id"' in page and "Say why the field is denied." in page
    assert 'id="err-clear"' in page and "needs a reason" in page
    access_request.refresh_from_db()
    assert access_request.status == RequestStatus.SUBMITTED and not Grant.objects.exists()


def test_decide_is_403_for_the_requester_and_other_roles_404_for_strangers(client, cast, dataset):
    access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
    client.force_login(cast["analyst_h"])
    assert client.get(f"/access/requests/{access_request.pk}/decide/").status_code == 403
    client.force_login(cast["auditor"])  # sees the request, may not decide
    assert client.get(f"/access/requests/{access_request.pk}/decide/").status_code == 403
    client.force_login(cast["nobody"])
    assert client.get(f"/access/requests/{access_request.pk}/decide/").status_code == 404


def test_access_home_shows_what_waits_on_the_steward(client, cast, dataset):
    access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
    client.force_login(cast["steward"])
    page = client.get("/access/").content.decode()
    assert f"/access/requests/{access_request.pk}/decide/" in page
    client.force_login(cast["analyst_h"])
    assert f"/access/requests/{access_request.pk}/decide/" not in client.get("/access/").content.decode()


def test_steward_revokes_and_certifies_on_the_department_grants_page(client, cast, dataset):
    grant = active_grant(cast=cast, dataset=dataset)
    client.force_login(cast["steward"])
    page = client.get("/access/grants/department/").content.decode()
    assert f"#{grant.pk}" in page and "Revoke" in page and "Certify" in page
    assert client.post(f"/access/grants/{grant.pk}/certify/", {"next": "/access/grants/department/"}).status_code == 302
    response = client.post(f"/access/grants/{grant.pk}/revoke/",
                           {"reason": "   ", "next": "/access/grants/department/?status=active"})
    # A revocation needs a reason: the page comes back with the message next to that grant's
    # reason input, the list as it was filtered, and nothing changed.
    assert response.status_code == 400
    page = response.content.decode()
    assert f'id="revoke-{grant.pk}-error"' in page and f'aria-describedby="revoke-{grant.pk}-error"' in page
    assert 'id="grant-error"' not in page and 'value="/access/grants/department/?status=active"' in page
    grant.refresh_from_db()
    assert grant.status == GrantStatus.ACTIVE
    client.post(f"/access/grants/{grant.pk}/revoke/", {"reason": "Project ended"})
    grant.refresh_from_db()
    assert grant.status == GrantStatus.REVOKED


def test_recertification_flag_on_old_grants(client, cast, dataset):
    grant = active_grant(cast=cast, dataset=dataset)
    Grant.objects.filter(pk=grant.pk).update(last_certified_at=timezone.now() - timedelta(days=400))
    client.force_login(cast["steward"])
    assert 'class="flag">recertify' in client.get("/access/grants/department/?recertify=1").content.decode()
    assert f"grant #{grant.pk}" in client.get("/access/").content.decode()


def test_grant_actions_refused_for_others(client, cast, dataset):
    grant = active_grant(cast=cast, dataset=dataset)
    client.force_login(cast["analyst_h"])  # the grantee may not revoke or certify
    assert client.post(f"/access/grants/{grant.pk}/revoke/", {"reason": "x"}).status_code == 403
    assert client.get("/access/grants/department/").status_code == 403
    assert client.get("/access/dpo/").status_code == 403
    client.force_login(cast["nobody"])
    assert client.post(f"/access/grants/{grant.pk}/revoke/", {"reason": "x"}).status_code == 404
    assert client.get(f"/access/grants/{grant.pk}/revoke/").status_code == 405


def test_explain_page_shows_visible_and_hidden_fields_with_reasons(client, cast, dataset):
    grant = active_grant(cast=cast, dataset=dataset, fields=["stop_id", "district"])
    access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["revenue"])
    decide(actor=cast["steward"], access_request=access_request, approve={}, deny=["revenue"])
    client.force_login(cast["analyst_h"])
    page = client.get(f"/datasets/{dataset.pk}/access/explain/").content.decode()
    assert f"grant #{grant.pk}" in page and "<code>stop_id</code>" in page
    assert "denied in request" in page and "Not needed for the purpose" in page
    client.force_login(cast["nobody"])
    hidden = published_dataset(dataset.department, visibility="restricted")
    assert client.get(f"/datasets/{hidden.pk}/access/explain/").status_code == 404


def test_pages_need_sign_in(client, dataset):
    for url in ("/access/", "/access/requests/", "/access/grants/", f"/datasets/{dataset.pk}/request-access/",
                "/dashboard/", "/dashboard/data/requests.json"):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response.url


def _requests(cast, dataset, n):
    for _ in range(n):
        submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id", "district"])


@pytest.mark.parametrize("url", ["/access/requests/", "/access/requests/?scope=all", "/access/"])
def test_request_lists_take_constant_queries(client, cast, dataset, django_assert_num_queries, url):
    who = "analyst_h" if "access/requests" in url else "steward"
    client.force_login(cast[who])
    _requests(cast, dataset, 2)
    client.get(url)  # warm the session and principal caches
    with CaptureQueriesContext(connection) as small:
        assert client.get(url).status_code == 200
    _requests(cast, dataset, 4)
    with django_assert_num_queries(len(small)):
        assert client.get(url).status_code == 200


@pytest.mark.parametrize("url,who", [("/access/grants/", "analyst_h"), ("/access/grants/department/", "steward"),
                                     ("/access/dpo/", "dpo2")])
def test_grant_lists_take_constant_queries(client, cast, dataset, django_assert_num_queries, url, who):
    def grants(n):
        for _ in range(n):
            r = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id", "passenger_name"])
            decide(actor=cast["steward"], access_request=r, approve={"stop_id": None, "passenger_name": None})
            if who != "dpo2":
                grant_dpo_approve(actor=cast["dpo"], grant=Grant.objects.get(request=r))

    client.force_login(cast[who])
    grants(1)
    client.get(url)
    # The same state of the per-process principal cache (empty) for both measurements.
    principals_forget_all()
    with CaptureQueriesContext(connection) as small:
        assert client.get(url).status_code == 200
    grants(3)
    principals_forget_all()
    with django_assert_num_queries(len(small)):
        page = client.get(url)
    assert page.status_code == 200 and page.content.decode().count("passenger_name") >= 4


def test_grant_action_never_redirects_off_site(client, cast, dataset):
    grant = active_grant(cast=cast, dataset=dataset)
    client.force_login(cast["steward"])
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example/"):
        response = client.post(f"/access/grants/{grant.pk}/certify/", {"next": target})
        assert response.status_code == 302 and response.url == "/access/"


def test_countdown_wording():
    from exchange.templatetags.access_ui import countdown

    now = timezone.now()
    assert countdown(now + timedelta(days=12, hours=3), now) == "expires in 12 days"
    assert countdown(now + timedelta(hours=30), now) == "expires in 30 hours"
    assert countdown(now + timedelta(minutes=1, seconds=5), now) == "expires in 1 minute"
    assert countdown(now - timedelta(seconds=1), now) == "ended"


def test_dpo_rejects_with_a_reason_only(client, cast, dataset):
    access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["passenger_name"])
    decide(actor=cast["steward"], access_request=access_request, approve={"passenger_name": None})
    grant = Grant.objects.get(request=access_request)
    client.force_login(cast["dpo"])
    response = client.post(f"/access/grants/{grant.pk}/dpo-reject/", {"reason": "", "next": "/access/dpo/"},
                           follow=True)
    page = response.content.decode()
    assert response.status_code == 400 and not response.redirect_chain
    assert f'<small id="reject-{grant.pk}-error" class="field-error" role="alert">This field is required.' in page
    assert f'aria-describedby="reject-{grant.pk}-error"' in page
    assert 'class="message error"' not in page  # next to the field, not a flash message
    grant.refresh_from_db()
    assert grant.status == GrantStatus.PENDING_DPO
    client.post(f"/access/grants/{grant.pk}/dpo-reject/", {"reason": "No legal basis for names"})
    grant.refresh_from_db()
    access_request.refresh_from_db()
    assert grant.status == GrantStatus.REJECTED and access_request.status == RequestStatus.DENIED


def test_dpo_approval_refused_keeps_the_comment_next_to_the_form(client, cast, dataset):
    access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["passenger_name"])
    decide(actor=cast["steward"], access_request=access_request, approve={"passenger_name": None})
    grant = Grant.objects.get(request=access_request)
    grant_dpo_approve(actor=cast["dpo"], grant=grant, comment="first")
    client.force_login(cast["dpo2"])
    response = client.post(f"/access/grants/{grant.pk}/dpo-approve/",
                           {"reason": "Names are fine", "next": "/access/dpo/"})
    page = response.content.decode()
    # The grant is no longer in the queue, so the message is shown at the top of the page.
    assert response.status_code == 409 and 'id="grant-error"' in page and f"Grant #{grant.pk}" in page


def test_withdraw_refused_is_shown_next_to_the_withdraw_form(client, cast, dataset):
    access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id"])
    decide(actor=cast["steward"], access_request=access_request, approve={"stop_id": None})
    client.force_login(cast["analyst_h"])
    response = client.post(f"/access/requests/{access_request.pk}/withdraw/", {"comment": "Changed my mind"})
    page = response.content.decode()
    assert response.status_code == 409 and 'id="withdraw-comment-error"' in page
    assert 'value="Changed my mind"' in page and "Withdraw the request</button>" not in page
    access_request.refresh_from_db()
    assert access_request.status == RequestStatus.APPROVED


def test_the_steward_who_decided_is_not_offered_the_dpo_queue(client, cast, dataset):
    access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["passenger_name"])
    decide(actor=cast["steward"], access_request=access_request, approve={"passenger_name": None})
    grant = Grant.objects.get(request=access_request)
    client.force_login(cast["steward"])
    assert client.post(f"/access/grants/{grant.pk}/dpo-approve/").status_code == 403


def test_dpo_queue_shows_the_sensitivity_of_each_field(client, cast, dataset):
    access_request = submit(actor=cast["analyst_h"], dataset=dataset, fields=["stop_id", "passenger_name"])
    decide(actor=cast["steward"], access_request=access_request, approve={"stop_id": None, "passenger_name": None})
    client.force_login(cast["dpo"])
    page = client.get("/access/dpo/").content.decode()
    assert '<code>passenger_name</code> <span class="badge personal">' in page
    assert '<code>stop_id</code> <span class="badge public">' in page
