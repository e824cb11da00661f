from __future__ import annotations

import pytest

from tests.exchange.records.test_records import CANARY_NOTE, rows
from tests.records_support import grant, load_rows, published_dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def permits(department):
    dataset = published_dataset(department)
    load_rows(dataset, rows())
    return dataset


def test_records_page_shows_exactly_the_view(client, people, permits):
    grant(permits, user=people["outsider"], approved_by=people["steward"],
          fields={"permit_id": "clear", "phone": "masked"})
    client.force_login(people["outsider"])
    page = client.get(f"/datasets/{permits.pk}/records/").content.decode()
    assert "permit_id" in page and "phone" in page and "(masked)" in page
    assert CANARY_NOTE not in page and "secret_note</th>" not in page
    assert "secret_note</code>: not visible" in page


def test_filter_on_hidden_field_shows_the_error_next_to_the_form(client, people, permits):
    grant(permits, user=people["outsider"], approved_by=people["steward"], fields={"permit_id": "clear"})
    client.force_login(people["outsider"])
    response = client.get(f"/datasets/{permits.pk}/records/?f_field=secret_note&f_value=x")
    assert response.status_code == 400
    assert "not in your view" in response.content.decode() and CANARY_NOTE not in response.content.decode()


def test_load_more_returns_rows_only(client, people, permits):
    client.force_login(people["steward"])
    first = client.get(f"/datasets/{permits.pk}/records/?page_size=5").content.decode()
    assert "Load more" in first
    cursor = first.split("cursor=")[1].split('"')[0].split("&")[0]
    more = client.get(f"/datasets/{permits.pk}/records/?page_size=5&cursor={cursor}", HTTP_HX_REQUEST="true")
    assert "<table" not in more.content.decode() and "<tr>" in more.content.decode()


def test_no_grant_and_unknown(client, people, permits):
    client.force_login(people["nobody"])
    assert client.get(f"/datasets/{permits.pk}/records/").status_code == 403
    assert client.get("/datasets/99999/records/").status_code == 404
