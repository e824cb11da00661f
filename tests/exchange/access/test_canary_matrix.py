"""No value outside a principal's grant reaches them, on any path that can show record values.

Canary values are planted in fields that are not granted (a confidential note) and in the
clear form of granted-but-transformed fields (a masked phone, a pseudonymised name). Every
role and principal kind then walks every endpoint; no canary may appear in any response body
or export. The owner's walk proves the canaries are really there to be found.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User

from departments import services
from tests.exchange.records.test_records import CANARY_NAME, CANARY_NOTE, CANARY_PHONE, rows
from tests.factories import MembershipFactory, UserFactory
from tests.records_support import grant, load_rows, published_dataset

pytestmark = pytest.mark.django_db

CANARIES = (CANARY_NOTE, CANARY_NAME, CANARY_PHONE)


def _body(response: Any) -> str:
    if hasattr(response, "streaming_content"):
        return b"".join(response.streaming_content).decode(errors="replace")
    return response.content.decode(errors="replace")


def endpoints(dataset_id: int) -> list[tuple[str, str]]:
    """Every HTTP path that can return record values (API and web pages), with variations of
    the parameters that could be used to probe."""
    base = f"/api/v1/datasets/{dataset_id}"
    return [
        ("api", f"{base}/records/"),
        ("api", f"{base}/records/?page_size=1000"),
        ("api", f"{base}/records/?q=CANARY"),
        ("api", f"{base}/records/?order=-district&page_size=3"),
        ("api", f"{base}/records/?fields=permit_id,secret_note"),
        ("api", f"{base}/records/?secret_note__contains=CANARY"),
        ("api", f"{base}/records/?phone__contains=CANARY"),
        ("api", f"{base}/records/?applicant_name__contains=CANARY"),
        ("api", f"{base}/export/?format=csv"),
        ("api", f"{base}/export/?format=ndjson"),
        ("api", f"{base}/export/?format=csv&q=CANARY"),
        ("api", f"{base}/preview/"),
        ("web", f"/datasets/{dataset_id}/records/"),
        ("web", f"/datasets/{dataset_id}/records/?f_field=secret_note&f_value=CANARY"),
        ("api", f"/api/v1/audit/datasets/{dataset_id}/who-could-see/?field=secret_note"),
        ("api", f"/api/v1/audit/datasets/{dataset_id}/grant-timeline/"),
        ("api", "/api/v1/audit/events/"),
        ("api", f"/api/3/action/datastore_search?resource_id={dataset_id}-records&limit=1000"),
        ("api", f"/api/3/action/datastore_search?resource_id={dataset_id}&q=CANARY"),
        ("api", f'/api/3/action/datastore_search?resource_id={dataset_id}&filters={{"secret_note":"x"}}'),
        ("api", f"/api/3/action/datastore_search?resource_id={dataset_id}&sort=phone%20desc"),
        ("api", f"/api/3/action/package_show?id={dataset_id}"),
        ("api", "/api/3/action/package_search?q=CANARY"),
        ("api", f"/api/v1/datasets/{dataset_id}/"),
        ("api", "/api/v1/search/?q=CANARY"),
        ("web", f"/datasets/{dataset_id}.ttl"),
        ("web", "/catalog.jsonld"),
    ]


@pytest.fixture
def world(department, other_department, people) -> dict[str, Any]:
    dataset = published_dataset(department)
    load_rows(dataset, rows())
    granted_fields = {"permit_id": "clear", "district": "clear", "fee_eur": "clear", "phone": "masked",
                      "applicant_name": "pseudonymised"}
    grantee = UserFactory()
    grant(dataset, user=grantee, approved_by=people["steward"], fields=granted_fields)
    dept_analyst = MembershipFactory(department=other_department, role="analyst").user
    dept_auditor = MembershipFactory(department=other_department, role="auditor").user
    grant(dataset, department=other_department, approved_by=people["steward"], fields=granted_fields,
          row_filter=[{"field": "district", "op": "eq", "value": "North"}])
    dpo = UserFactory()
    services.city_role_grant(actor=None, user=dpo, role="data_protection_officer")
    return {
        "dataset": dataset,
        "principals": {
            "grantee (personal grant)": grantee,
            "department analyst (department grant, row filter)": dept_analyst,
            "department auditor (department grant does not reach)": dept_auditor,
            "outsider department admin": people["outsider"],
            "no department": people["nobody"],
            "city auditor": people["city_auditor"],
            "governance reviewer": people["reviewer"],
            "data protection officer": dpo,
            "operator (staff)": people["operator"],
            "owner's department auditor": people["auditor"],
        },
    }


def walk(client: Any, login: Callable[[User], None], user: User, dataset_id: int) -> dict[str, str]:
    bodies = {}
    for kind, path in endpoints(dataset_id):
        login(user)
        bodies[path] = _body(client.get(path))
        del kind
    return bodies


def test_owner_sees_the_canaries(client, people, world):
    bodies = walk(client, client.force_login, people["steward"], world["dataset"].pk)
    assert CANARY_NOTE in bodies[f"/api/v1/datasets/{world['dataset'].pk}/records/"]
    assert CANARY_NAME in bodies[f"/api/v1/datasets/{world['dataset'].pk}/export/?format=csv"]


@pytest.mark.parametrize("who", [
    "grantee (personal grant)", "department analyst (department grant, row filter)",
    "department auditor (department grant does not reach)", "outsider department admin", "no department",
    "city auditor", "governance reviewer", "data protection officer", "operator (staff)",
    "owner's department auditor",
])
def test_no_canary_reaches_anyone_else(client, world, who):
    user = world["principals"][who]
    bodies = walk(client, client.force_login, user, world["dataset"].pk)
    leaks = [(path, canary) for path, body in bodies.items() for canary in CANARIES if canary in body]
    assert not leaks, f"{who} received canary values: {leaks}"


def test_token_clients_walk_the_same_paths(api, world):
    """The API with a token instead of a session: same answers, no canary."""
    from knox.models import AuthToken

    user = world["principals"]["grantee (personal grant)"]
    _, token = AuthToken.objects.create(user=user)
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    for kind, path in endpoints(world["dataset"].pk):
        if kind != "api":
            continue
        body = _body(api.get(path))
        assert not any(c in body for c in CANARIES), path


def test_dpo_sees_restricted_metadata_but_no_values(client, department, people):
    from catalog.models import Visibility
    from departments import services as department_services

    restricted = published_dataset(department, slug="restricted-permits", visibility=Visibility.RESTRICTED)
    load_rows(restricted, rows())
    dpo = UserFactory()
    department_services.city_role_grant(actor=None, user=dpo, role="data_protection_officer")
    client.force_login(dpo)
    assert client.get(f"/api/v1/datasets/{restricted.pk}/").status_code == 200
    assert client.get(f"/api/v1/datasets/{restricted.pk}/records/").status_code == 403
    client.force_login(people["nobody"])
    assert client.get(f"/api/v1/datasets/{restricted.pk}/").status_code == 404
