"""CKAN clients work unchanged: the official ``ckanapi`` client, pointed at the site's URL as
its documentation says, against a live server. ckanapi POSTs a JSON body to the unversioned
``/api/action/<name>`` (``get_only=True``: GET with query parameters), sends a token as both
``Authorization`` and ``X-CKAN-API-Key``, and turns the error envelope's ``__type`` into its
exceptions (NotFound, NotAuthorized, ValidationError, else CKANAPIError)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import ckanapi
import pytest
import requests

from departments import services
from exchange.audit.models import AuditEvent
from tests.factories import DatasetFactory
from tests.records_support import grant, load_rows, published_dataset

pytestmark = pytest.mark.django_db(transaction=True)

NAME, PHONE, NOTE = "CANARY-NAME-Ferreira", "CANARY-PHONE-77", "CANARY-NOTE-c4a7"


def permit_rows() -> list[dict[str, Any]]:
    districts = ["North", "South", "East"]
    return [
        {"permit_id": i, "applicant_name": f"{NAME}-{i}", "phone": f"{PHONE}{i:02d}", "district": districts[i % 3],
         "fee_eur": Decimal(f"{100 + i}.50"), "approved": i % 2 == 0,
         "submitted_on": dt.date(2026, 1, 1) + dt.timedelta(days=i), "secret_note": f"{NOTE}-{i}"}
        for i in range(1, 13)
    ]


def remote(live_server: Any, *, token: str | None = None, get_only: bool = False) -> ckanapi.RemoteCKAN:
    session = requests.Session()
    session.trust_env = False  # loopback, whatever proxy the environment names
    return ckanapi.RemoteCKAN(live_server.url, apikey=token, get_only=get_only, session=session)


@pytest.fixture
def world(make_dataset, cast, department, other_department) -> dict[str, Any]:
    make_dataset("published", title="Street trees", slug="street-trees", keywords=["trees", "green"],
                 themes=["ENVI"], licence="CC0-1.0")
    make_dataset("published", title="Park trees", slug="park-trees", keywords=["trees"], licence="CC-BY-4.0")
    make_dataset("published", title="Parking fines", slug="parking-fines", visibility="restricted",
                 keywords=["parking"])
    DatasetFactory(department=other_department, steward=cast["other_steward"], reviewer=cast["reviewer"],
                   status="published", title="Clinic list", slug="clinics", keywords=["clinics"])
    permits = published_dataset(department)  # city-internal licence: not for anonymous callers
    load_rows(permits, permit_rows())
    grant(permits, user=cast["outsider"], approved_by=cast["steward"],
          fields={"permit_id": "clear", "district": "clear", "phone": "masked"})
    return {"permits": permits, "resource_id": f"{permits.pk}-records"}


def test_anonymous_ckanapi_reads_the_open_catalogue(live_server, world):
    ckan = remote(live_server)
    assert ckan.action.status_show()["ckan_version"].startswith("2.")
    assert ckan.action.package_list() == ["clinics", "park-trees", "street-trees"]

    result = ckan.action.package_search(q="trees", fq="tags:trees", rows=1, start=1, sort="name asc")
    assert result["count"] == 2 and [r["name"] for r in result["results"]] == ["street-trees"]
    result = ckan.action.package_search(q="trees", fq="tags:green -groups:heal", rows=10, start=0,
                                        sort="title_string desc")
    assert [r["name"] for r in result["results"]] == ["street-trees"]
    result = remote(live_server, get_only=True).action.package_search(q="trees", rows=1, sort="name asc")
    assert result["count"] == 2 and [r["name"] for r in result["results"]] == ["park-trees"]

    with pytest.raises(ckanapi.NotFound):
        ckan.action.package_show(id="no-such-dataset")
    with pytest.raises(ckanapi.NotFound):  # restricted: an anonymous caller may not know it exists
        ckan.action.package_show(id="parking-fines")
    assert ckan.action.package_show(id="street-trees")["organization"]["name"] == "transport"
    with pytest.raises(ckanapi.ValidationError) as invalid:
        ckan.action.package_search(rows="many")
    assert "rows" in invalid.value.error_dict
    with pytest.raises(ckanapi.CKANAPIError) as unknown:
        ckan.action.package_create(name="new")
    assert type(unknown.value) is ckanapi.CKANAPIError and "Action name not known" in str(unknown.value)

    assert ckan.action.organization_list() == ["health", "transport"]
    assert {o["name"]: o["package_count"] for o in ckan.action.organization_list(all_fields=True)} == {
        "health": 1, "transport": 2}
    assert ckan.action.tag_list() == ["clinics", "green", "trees"]

    with pytest.raises(ckanapi.NotAuthorized):
        ckan.action.datastore_search(resource_id=world["resource_id"])
    assert not AuditEvent.objects.filter(action="records.datastore_search").exists()


def test_ckanapi_with_a_token_reads_what_its_user_may(live_server, world, cast):
    def token(user: Any) -> str:
        return services.token_issue(user=user)[1]

    grantee = remote(live_server, token=token(cast["outsider"]))
    result = grantee.action.datastore_search(
        resource_id=world["resource_id"], filters={"district": ["North", "East"]},
        fields=["permit_id", "district", "phone"], sort="permit_id asc", limit=3)
    assert result["total"] == 8 and [r["permit_id"] for r in result["records"]] == [2, 3, 5]
    assert result["records"][0] == {"permit_id": 2, "district": "East", "phone": "*" * 13 + "7702"}  # masked
    assert [f["id"] for f in result["fields"]] == ["permit_id", "district", "phone"]
    with pytest.raises(ckanapi.ValidationError):  # not granted: cannot be asked for, nor probed
        grantee.action.datastore_search(resource_id=world["resource_id"], fields=["secret_note"])
    everything = grantee.action.datastore_search(resource_id=world["resource_id"], limit=100)
    assert everything["total"] == 12 and set(everything["records"][0]) == {"permit_id", "district", "phone"}
    text = str(everything)
    assert NOTE not in text and NAME not in text and PHONE not in text

    reads = AuditEvent.objects.filter(action="records.datastore_search", actor_id=cast["outsider"].pk)
    assert sorted(reads.values_list("outcome", "row_count")) == [("allowed", 3), ("allowed", 12), ("denied", None)]

    with pytest.raises(ckanapi.NotAuthorized):  # sees the dataset, holds no grant
        remote(live_server, token=token(cast["nobody"])).action.datastore_search(resource_id=world["resource_id"])
    with pytest.raises(ckanapi.NotFound):
        remote(live_server, token=token(cast["nobody"])).action.package_show(id="parking-fines")
    steward = remote(live_server, token=token(cast["steward"]))
    assert steward.action.package_show(id="parking-fines")["private"] is True
    assert "permits" in steward.action.package_list()
    with pytest.raises(ckanapi.NotAuthorized):
        remote(live_server, token="a" * 64).action.package_list()
