"""The department, city-role and account pages: administrators manage their members in the
browser through the same audited services as the API, operators manage city-wide roles, and
everyone manages their own API tokens."""

from __future__ import annotations

import pytest
from django.test import Client
from knox.models import AuthToken

from departments.models import CityRoleAssignment, Membership, Role
from exchange.audit.models import AuditEvent
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_members_see_the_member_list_but_only_admins_get_the_forms(people, department):
    page = client_for(people["analyst"]).get(f"/departments/{department.slug}/")
    assert page.status_code == 200
    assert people["steward"].username in page.content.decode()
    assert b"Add a member" not in page.content and b"Change role" not in page.content

    page = client_for(people["admin"]).get(f"/departments/{department.slug}/")
    assert b"Add a member" in page.content and b"Change role" in page.content

    outsider_view = client_for(people["nobody"]).get(f"/departments/{department.slug}/")
    assert outsider_view.status_code == 200 and b'id="members"' not in outsider_view.content


def test_an_admin_adds_a_member_and_the_change_is_audited(people, department):
    newcomer = UserFactory(username="newcomer")
    response = client_for(people["admin"]).post(f"/departments/{department.slug}/members/add/",
                                                {"username": "newcomer", "role": "analyst"}, follow=True)
    assert response.status_code == 200
    assert "newcomer joined Transport as analyst." in response.content.decode()
    membership = Membership.objects.get(department=department, user=newcomer)
    assert membership.role == Role.ANALYST and membership.added_by == people["admin"]
    event = AuditEvent.objects.get(action="membership.add", object_id=str(membership.pk))
    assert event.actor_id == people["admin"].pk and event.details["role"] == "analyst"


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"username": "ghost", "role": "analyst"}, "username", "No active user with that username."),
    ({"username": "", "role": "analyst"}, "username", "This field is required."),
    ({"username": "member", "role": "emperor"}, "role", "Select a valid choice."),
])
def test_bad_member_input_is_shown_next_to_the_field_and_nothing_is_written(people, department, data, field, message):
    UserFactory(username="member")
    before = Membership.objects.count(), AuditEvent.objects.filter(action="membership.add").count()
    response = client_for(people["admin"]).post(f"/departments/{department.slug}/members/add/", data)
    assert response.status_code == 400
    html = response.content.decode()
    assert f'id="id_{field}-error"' in html and message in html
    assert (Membership.objects.count(), AuditEvent.objects.filter(action="membership.add").count()) == before


def test_adding_someone_twice_says_so_next_to_the_username(people, department):
    response = client_for(people["admin"]).post(f"/departments/{department.slug}/members/add/",
                                                {"username": people["steward"].username, "role": "analyst"})
    assert response.status_code == 400
    assert 'id="id_username-error"' in response.content.decode()
    assert "Already a member of this department." in response.content.decode()
    assert Membership.objects.get(department=department, user=people["steward"]).role == Role.STEWARD


def test_an_admin_changes_a_role_and_removes_a_member(people, department):
    admin = client_for(people["admin"])
    analyst = Membership.objects.get(department=department, user=people["analyst"])
    response = admin.post(f"/departments/{department.slug}/members/{analyst.pk}/role/", {"role": "steward"})
    assert response.status_code == 302
    analyst.refresh_from_db()
    assert analyst.role == Role.STEWARD
    assert AuditEvent.objects.filter(action="membership.change_role", object_id=str(analyst.pk)).exists()

    response = admin.post(f"/departments/{department.slug}/members/{analyst.pk}/remove/")
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=analyst.pk).exists()
    assert AuditEvent.objects.filter(action="membership.remove", object_id=str(analyst.pk)).exists()


def test_the_last_admin_cannot_step_down_and_the_error_sits_on_their_row(people, department):
    admin = Membership.objects.get(department=department, user=people["admin"])
    response = client_for(people["admin"]).post(f"/departments/{department.slug}/members/{admin.pk}/role/",
                                                {"role": "analyst"})
    assert response.status_code == 400
    html = response.content.decode()
    assert f'id="member-{admin.pk}-error"' in html and "at least one administrator" in html
    admin.refresh_from_db()
    assert admin.role == Role.ADMIN


def test_non_admins_cannot_manage_members(people, department, other_department):
    analyst = Membership.objects.get(department=department, user=people["analyst"])
    steward = client_for(people["steward"])
    assert steward.post(f"/departments/{department.slug}/members/add/",
                        {"username": people["nobody"].username, "role": "admin"}).status_code == 403
    assert steward.post(f"/departments/{department.slug}/members/{analyst.pk}/remove/").status_code == 403
    # An admin of another department manages only their own: the membership is not theirs to find.
    outsider = client_for(people["outsider"])
    assert outsider.post(f"/departments/{other_department.slug}/members/{analyst.pk}/remove/").status_code == 404
    assert Membership.objects.filter(pk=analyst.pk).exists()
    assert client_for(people["admin"]).post("/departments/no-such-department/members/add/", {}).status_code == 404


def test_an_admin_edits_the_contact_details(people, department):
    admin = client_for(people["admin"])
    page = admin.get(f"/departments/{department.slug}/edit/")
    assert page.status_code == 200
    response = admin.post(f"/departments/{department.slug}/edit/", {"contact_email": "not-an-address"})
    assert response.status_code == 400 and 'id="id_contact_email-error"' in response.content.decode()
    response = admin.post(f"/departments/{department.slug}/edit/",
                          {"description": "Buses and trams.", "contact_email": "open-data@transport.city.example"})
    assert response.status_code == 302
    department.refresh_from_db()
    assert department.contact_email == "open-data@transport.city.example"
    assert department.description == "Buses and trams."
    event = AuditEvent.objects.filter(action="department.update").latest("id")
    assert event.details["after"]["contact_email"] == "open-data@transport.city.example"
    assert client_for(people["steward"]).get(f"/departments/{department.slug}/edit/").status_code == 403


def test_operators_manage_city_roles_and_nobody_else_learns_the_page_exists(people):
    operator = client_for(people["operator"])
    target = UserFactory(username="future-dpo")
    response = operator.post("/city-roles/", {"username": "future-dpo", "role": "data_protection_officer"})
    assert response.status_code == 302
    assignment = CityRoleAssignment.objects.get(user=target)
    assert AuditEvent.objects.filter(action="city_role.grant", object_id=str(assignment.pk)).exists()

    again = operator.post("/city-roles/", {"username": "future-dpo", "role": "data_protection_officer"})
    assert again.status_code == 400 and 'id="id_username-error"' in again.content.decode()
    assert CityRoleAssignment.objects.filter(user=target).count() == 1

    assert operator.post(f"/city-roles/{assignment.pk}/revoke/").status_code == 302
    assert not CityRoleAssignment.objects.filter(user=target).exists()
    assert AuditEvent.objects.filter(action="city_role.revoke").exists()

    for name in ("admin", "city_auditor", "reviewer"):
        client = client_for(people[name])
        assert client.get("/city-roles/").status_code == 404
        assert client.post("/city-roles/", {"username": name, "role": "auditor"}).status_code == 404


def test_a_token_is_shown_once_works_for_the_api_and_can_be_revoked(people, department):
    user = people["analyst"]
    client = client_for(user)
    response = client.post("/account/tokens/")
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    token = AuthToken.objects.get(user=user)
    html = response.content.decode()
    start = html.index('id="new-token-value"')
    value = html[start:].split('value="', 1)[1].split('"', 1)[0]
    assert value.startswith(token.token_key)

    api = Client()
    assert api.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Token {value}").status_code == 200

    page = client.get("/account/").content.decode()
    assert token.token_key in page and value not in page  # listed by its prefix, never shown again
    assert "Data steward" not in page and "Analyst in" in page

    assert client.post(f"/account/tokens/{token.token_key}/revoke/").status_code == 302
    assert api.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Token {value}").status_code == 401
    assert {"auth.token_issued", "auth.token_revoked"} <= set(
        AuditEvent.objects.filter(object_id=token.token_key).values_list("action", flat=True))


def test_nobody_revokes_someone_elses_token(people):
    client = client_for(people["steward"])
    client.post("/account/tokens/")
    token = AuthToken.objects.get(user=people["steward"])
    assert client_for(people["analyst"]).post(f"/account/tokens/{token.token_key}/revoke/").status_code == 404
    assert AuthToken.objects.filter(pk=token.pk).exists()


def test_pages_need_a_sign_in(department):
    anonymous = Client()
    for url in ("/account/", f"/departments/{department.slug}/edit/", "/city-roles/"):
        response = anonymous.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
