"""The Requested data pages: each for every signed-in role, 404 for what one may not see, every
step from its form with a success message, errors next to the input, the links from the
catalogue, and the access-request form pre-filled from a fulfilled request."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from exchange.demand.models import DataRequest, DataRequestSupporter
from tests.access_factories import published_dataset
from tests.exchange.demand.conftest import new_request

pytestmark = pytest.mark.django_db


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


@pytest.mark.parametrize("who", ["nobody", "outsider", "analyst_h", "steward", "reviewer", "auditor", "dpo"])
def test_the_list_and_a_request_render_for_every_role(client, cast, make_request, who):
    data_request = make_request("routed")
    client.force_login(cast[who])
    page = client.get("/requested-data/")
    assert page.status_code == 200 and data_request.title in page.content.decode()
    detail = client.get(f"/requested-data/{data_request.pk}/")
    assert detail.status_code == 200 and "ramp_width" in detail.content.decode()
    assert client.get("/requested-data/new/").status_code == 200


def test_list_filters_by_status_department_and_words(client, cast, make_request):
    make_request("routed")
    new_request(cast["steward_h"], title="Tree inventory", names=("tree_id",))
    client.force_login(cast["nobody"])
    body = client.get("/requested-data/", {"status": "open"}).content.decode()
    assert "Tree inventory" in body and "Bus stop accessibility" not in body
    body = client.get("/requested-data/", {"department": "transport"}).content.decode()
    assert "Tree inventory" not in body and "Bus stop accessibility" in body
    body = client.get("/requested-data/", {"q": "tree"}).content.decode()
    assert "Tree inventory" in body and "Bus stop accessibility" not in body


def test_anonymous_goes_to_the_login_page(client, make_request):
    data_request = make_request("open")
    for url in ("/requested-data/", "/requested-data/new/", f"/requested-data/{data_request.pk}/"):
        assert client.get(url)["Location"].startswith("/accounts/login/")


def test_a_request_filed_through_the_form(client, cast):
    client.force_login(cast["analyst_h"])
    response = client.post("/requested-data/new/", {
        "title": "Noise near schools", "description": "Hourly levels.", "purpose": "Health study",
        "wished_fields": "school_id: register number\n\nnoise_db: measured level\n", "department": "health"})
    data_request = DataRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/requested-data/{data_request.pk}/"
    assert data_request.fields == [{"name": "school_id", "description": "register number"},
                                   {"name": "noise_db", "description": "measured level"}]
    page = client.get(response["Location"])
    assert "sent to the governance reviewers" in " ".join(messages_of(page))


def test_bad_form_input_is_shown_next_to_the_field_and_nothing_is_written(client, cast):
    client.force_login(cast["analyst_h"])
    response = client.post("/requested-data/new/", {"title": "", "description": "D", "purpose": "P",
                                                    "wished_fields": "a: one\na: again"})
    assert response.status_code == 400
    body = response.content.decode()
    assert "Give the request a title." in body and "Line 2: Name each field once." in body
    assert 'aria-invalid="true"' in body
    too_many = "\n".join(f"f{i}" for i in range(101))
    response = client.post("/requested-data/new/", {"title": "T", "description": "D", "purpose": "P",
                                                    "wished_fields": too_many})
    assert response.status_code == 400 and "At most 100 fields." in response.content.decode()
    assert not DataRequest.objects.exists()


def test_someone_who_may_not_ask_is_told_so_and_refused(client, cast):
    client.force_login(cast["auditor"])
    assert "Only analysts and stewards may request data." in client.get("/requested-data/new/").content.decode()
    response = client.post("/requested-data/new/", {"title": "T", "description": "D", "purpose": "P",
                                                    "wished_fields": "a"})
    assert response.status_code == 403


def test_the_whole_way_through_the_pages(client, cast, department):
    client.force_login(cast["analyst_h"])
    data_request = new_request(cast["analyst_h"])
    url = f"/requested-data/{data_request.pk}/"

    client.force_login(cast["steward_h"])
    response = client.post(f"{url}join/", {"purpose": "Ramps budget"}, follow=True)
    assert "You joined the request" in " ".join(messages_of(response))

    client.force_login(cast["reviewer"])
    assert 'action="' + url + 'route/"' in client.get(url).content.decode()
    response = client.post(f"{url}route/", {"department": "transport"}, follow=True)
    assert "routed to Transport" in " ".join(messages_of(response))

    client.force_login(cast["steward"])
    body = client.get(url).content.decode()
    assert "Accept: we will publish it" in body and "Decline" in body
    response = client.post(f"{url}accept/", {}, follow=True)
    assert "You accepted the request" in " ".join(messages_of(response))
    dataset = published_dataset(department)
    assert dataset.title in client.get(url).content.decode()  # offered in the fulfil form
    response = client.post(f"{url}fulfil/", {"dataset": str(dataset.pk)}, follow=True)
    assert "The dataset is linked" in " ".join(messages_of(response))

    client.force_login(cast["analyst_h"])
    body = client.get(url).content.decode()
    assert f'href="/datasets/{dataset.pk}/"' in body and f"{url}request-access/" in body
    redirect = client.get(f"{url}request-access/")
    assert redirect.status_code == 302
    assert redirect["Location"] == (f"/datasets/{dataset.pk}/request-access/?fields=stop_id&fields=accessible"
                                    "&purpose=Plan+accessible+routes")
    form = client.get(redirect["Location"]).content.decode()
    assert 'value="stop_id" checked' in form and 'value="accessible" checked' in form
    assert 'value="district" checked' not in form
    assert "Plan accessible routes</textarea>" in form


def test_the_access_request_form_ignores_unknown_fields_and_never_echoes_them(client, cast, dataset):
    client.force_login(cast["analyst_h"])
    query = urlencode([("fields", "stop_id"), ("fields", "<script>evil_name</script>"),
                       ("fields", "no_such_field"), ("purpose", "Route planning")])
    response = client.get(f"/datasets/{dataset.pk}/request-access/?{query}")
    body = response.content.decode()
    assert response.status_code == 200
    assert 'value="stop_id" checked' in body
    assert "evil_name" not in body and "no_such_field" not in body
    assert "Route planning</textarea>" in body


def test_errors_of_a_step_are_shown_next_to_its_form(client, cast, make_request):
    data_request = make_request("routed")
    client.force_login(cast["steward"])
    response = client.post(f"/requested-data/{data_request.pk}/decline/", {"reason": " "})
    assert response.status_code == 400
    assert 'id="decline-error"' in response.content.decode()
    client.force_login(cast["reviewer"])
    response = client.post(f"/requested-data/{data_request.pk}/duplicate/", {"duplicate_of": "987654"})
    assert response.status_code == 400 and "No such data request." in response.content.decode()
    client.force_login(cast["analyst_h"])
    response = client.post(f"/requested-data/{data_request.pk}/join/", {"purpose": "x"})
    assert response.status_code == 409


def test_withdraw_leave_and_who_may_do_what(client, cast, make_request):
    data_request = make_request("open")
    DataRequestSupporter.objects.create(request=data_request, user=cast["steward_h"], purpose="x")
    client.force_login(cast["steward_h"])
    assert "Withdraw the request" not in client.get(f"/requested-data/{data_request.pk}/").content.decode()
    assert client.post(f"/requested-data/{data_request.pk}/withdraw/").status_code == 403
    response = client.post(f"/requested-data/{data_request.pk}/leave/", follow=True)
    assert "You left the request." in " ".join(messages_of(response))
    client.force_login(cast["analyst_h"])
    response = client.post(f"/requested-data/{data_request.pk}/withdraw/", {"comment": "Not needed"}, follow=True)
    assert "The request was withdrawn." in " ".join(messages_of(response))
    assert client.post(f"/requested-data/{data_request.pk}/no-such-step/").status_code == 404


def test_a_closed_request_is_the_404_page_for_those_it_does_not_concern(client, cast, make_request):
    data_request = make_request("withdrawn")
    client.force_login(cast["steward_h"])
    for url in (f"/requested-data/{data_request.pk}/", f"/requested-data/{data_request.pk}/request-access/"):
        assert client.get(url).status_code == 404
    assert client.post(f"/requested-data/{data_request.pk}/join/", {"purpose": "x"}).status_code == 404
    assert data_request.title not in client.get("/requested-data/").content.decode()
    client.force_login(cast["reviewer"])
    assert client.get(f"/requested-data/{data_request.pk}/").status_code == 200


def test_the_catalogue_links_to_requested_data_also_when_nothing_matches(client, cast, dataset):
    client.force_login(cast["analyst_h"])
    body = client.get("/catalogue/", {"q": "zebra crossings"}).content.decode()
    assert "Can't find it?" in body and "/requested-data/new/?q=zebra%20crossings" in body
    assert 'href="/requested-data/"' in body  # the main navigation
    form = client.get("/requested-data/new/?q=zebra%20crossings").content.decode()
    assert 'value="zebra crossings"' in form


def test_the_list_page_costs_the_same_queries_for_more_requests(client, cast, make_request,
                                                               django_assert_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    make_request("routed")
    client.force_login(cast["nobody"])
    client.get("/requested-data/")
    with CaptureQueriesContext(connection) as one:
        client.get("/requested-data/")
    for i in range(5):
        new_request(cast["steward_h"], title=f"Other {i}")
    with django_assert_num_queries(len(one)):
        assert "Other 4" in client.get("/requested-data/").content.decode()
