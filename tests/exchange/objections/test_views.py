"""The objection pages: both inboxes, the form on a dataset (only for those who read it), an
objection's page with the records as the reader's own view shows them, every step from its
form, errors next to the input, and the open objections on the dataset page."""

from __future__ import annotations

import pytest

from exchange.objections import services
from exchange.objections.models import Objection
from tests.exchange.objections.conftest import raise_objection

pytestmark = pytest.mark.django_db


def test_the_objector_raises_one_from_the_dataset_page(client, cast, dataset):
    client.force_login(cast["analyst_h"])
    page = client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert f"/datasets/{dataset.pk}/object/" in page
    form = client.get(f"/datasets/{dataset.pk}/object/").content.decode()
    assert 'value="phone"' in form and "secret_note" not in form and "<code>permit_id</code>" in form
    response = client.post(f"/datasets/{dataset.pk}/object/", {
        "kind": "wrong_value", "record_keys": "2\n", "field_names": ["phone"], "comment": "Phone is wrong."})
    objection = Objection.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/objections/{objection.pk}/"
    body = client.get(f"/objections/{objection.pk}/").content.decode()
    assert "+49 30 5550002" not in body and "0002" in body and "NOTE-SECRET" not in body


def test_errors_stay_next_to_the_input(client, cast, dataset):
    client.force_login(cast["analyst_h"])
    response = client.post(f"/datasets/{dataset.pk}/object/", {"kind": "wrong_value", "record_keys": "99",
                                                               "comment": "x"})
    assert response.status_code == 400 and "No record with permit_id 99" in response.content.decode()


@pytest.mark.parametrize("who", ["steward", "outsider", "nobody", "reviewer"])
def test_who_does_not_read_the_dataset_is_not_offered_the_form(client, cast, dataset, who):
    client.force_login(cast[who])
    assert f"/datasets/{dataset.pk}/object/" not in client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert client.get(f"/datasets/{dataset.pk}/object/").status_code == 403


def test_the_owner_sees_it_in_clear_on_its_inbox_and_the_dataset_page_and_answers(client, cast, dataset):
    objection = raise_objection(cast["analyst_h"], dataset, fields=["phone"])
    client.force_login(cast["steward"])
    assert f"/objections/{objection.pk}/" in client.get("/objections/").content.decode()
    assert f"/objections/{objection.pk}/" in client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert "+49 30 5550002" in client.get(f"/objections/{objection.pk}/").content.decode()
    response = client.post(f"/objections/{objection.pk}/reject/", {"reason": ""})
    assert response.status_code == 400 and 'id="reject-error"' in response.content.decode()
    response = client.post(f"/objections/{objection.pk}/accept/", {"note": "Phone corrected."}, follow=True)
    assert "You accepted the objection" in response.content.decode()
    objection.refresh_from_db()
    assert objection.status == "accepted"
    client.force_login(cast["analyst_h"])
    body = client.get("/objections/?scope=raised&status=").content.decode()
    assert f"/objections/{objection.pk}/" in body and "Accepted" in body


def test_the_objector_withdraws_and_outsiders_get_404(client, cast, dataset):
    objection = raise_objection(cast["analyst_h"], dataset)
    client.force_login(cast["outsider"])
    assert client.get(f"/objections/{objection.pk}/").status_code == 404
    assert client.post(f"/objections/{objection.pk}/withdraw/").status_code == 404
    client.force_login(cast["analyst_h"])
    assert client.post(f"/objections/{objection.pk}/withdraw/", {"comment": "Mine."}).status_code == 302
    objection.refresh_from_db()
    assert objection.status == "withdrawn"


def test_reviewers_find_escalated_ones_in_their_tab(client, cast, dataset):
    objection = raise_objection(cast["analyst_h"], dataset)
    services.objection_escalate_overdue(now=objection.due_at)
    client.force_login(cast["reviewer"])
    body = client.get("/objections/").content.decode()
    assert f"/objections/{objection.pk}/" in body and "escalated" in body
    assert "Reject" in client.get(f"/objections/{objection.pk}/").content.decode()


def test_the_list_page_costs_the_same_for_many(client, cast, dataset, django_assert_max_num_queries):
    raise_objection(cast["analyst_h"], dataset)
    client.force_login(cast["steward"])
    client.get("/objections/")
    for _ in range(5):
        raise_objection(cast["analyst_h"], dataset, kind="other", record_keys=[])
    with django_assert_max_num_queries(8):
        assert client.get("/objections/").content.decode().count('href="/objections/') >= 6
