from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group

from departments.models import Department, Membership
from departments.selectors import principal_forget
from exchange.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["status"] == status
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


class TestDirectory:
    def test_anonymous_gets_401_in_the_common_shape(self, api, department):
        assert_error(api.get("/api/v1/departments/"), 401, "not_authenticated")

    def test_every_signed_in_user_sees_the_directory(self, as_user, people, department, other_department):
        response = as_user(people["nobody"]).get("/api/v1/departments/")
        assert response.status_code == 200
        assert [d["slug"] for d in response.json()] == ["health", "transport"]

    def test_list_costs_constant_queries(self, as_user, people, django_assert_num_queries):
        from tests.factories import DepartmentFactory

        client = as_user(people["nobody"])
        DepartmentFactory.create_batch(10)
        principal_forget(people["nobody"])
        with django_assert_num_queries(3):  # principal: memberships + city roles; the list
            assert len(client.get("/api/v1/departments/").json()) == 12

    def test_search(self, as_user, people):
        body = as_user(people["nobody"]).get("/api/v1/departments/?search=heal").json()
        assert [d["slug"] for d in body] == ["health"]

    def test_unknown_department_is_404(self, as_user, people):
        assert_error(as_user(people["nobody"]).get("/api/v1/departments/nope/"), 404, "not_found")

    def test_deactivated_department_is_hidden_from_non_operators(self, as_user, people, department):
        Department.objects.filter(pk=department.pk).update(is_active=False)
        assert_error(as_user(people["analyst"]).get("/api/v1/departments/transport/"), 404)
        assert as_user(people["operator"]).get("/api/v1/departments/transport/").status_code == 200


class TestCreateDepartment:
    payload = {"code": "planning", "name": "Urban Planning", "contact_email": "data@planning.city.example"}

    def test_operator_creates_with_group_and_audit(self, as_user, people):
        response = as_user(people["operator"]).post("/api/v1/departments/", self.payload)
        assert response.status_code == 201, response.content
        assert response.json()["slug"] == "urban-planning"
        department = Department.objects.get(code="planning")
        assert department.group.name == "department:planning"
        event = AuditEvent.objects.get(action="department.create")
        assert event.actor_id == people["operator"].pk and event.department_id == department.pk

    @pytest.mark.parametrize("who", ["admin", "steward", "analyst", "nobody", "city_auditor"])
    def test_others_may_not(self, as_user, people, who):
        assert_error(as_user(people[who]).post("/api/v1/departments/", self.payload), 403, "permission_denied")
        assert not Department.objects.filter(code="planning").exists()

    @pytest.mark.parametrize("code", ["Plan", "plan ning", "plan;drop", "p", "-plan", "plan-", "x" * 40, "plän"])
    def test_unsafe_code_is_refused_and_nothing_is_written(self, as_user, people, code):
        groups_before = Group.objects.count()
        error = assert_error(
            as_user(people["operator"]).post("/api/v1/departments/", {**self.payload, "code": code}), 400, "invalid"
        )
        assert "code" in error["fields"]
        assert Group.objects.count() == groups_before
        assert not Department.objects.filter(name="Urban Planning").exists()

    def test_duplicate_code_is_a_field_error(self, as_user, people):
        error = assert_error(
            as_user(people["operator"]).post("/api/v1/departments/", {**self.payload, "code": "transport"}), 400
        )
        assert "code" in error["fields"]


class TestUpdateDepartment:
    def test_department_admin_edits_own_department(self, as_user, people):
        response = as_user(people["admin"]).patch("/api/v1/departments/transport/", {"description": "Roads"})
        assert response.status_code == 200
        assert response.json()["description"] == "Roads"
        assert AuditEvent.objects.filter(action="department.update").count() == 1

    @pytest.mark.parametrize("who", ["steward", "analyst", "auditor", "outsider", "city_auditor"])
    def test_others_may_not(self, as_user, people, who):
        assert_error(as_user(people[who]).patch("/api/v1/departments/transport/", {"description": "x"}), 403)

    def test_invalid_email_is_a_field_error(self, as_user, people):
        error = assert_error(
            as_user(people["admin"]).patch("/api/v1/departments/transport/", {"contact_email": "nope"}), 400
        )
        assert "contact_email" in error["fields"]


class TestMembers:
    url = "/api/v1/departments/transport/members/"

    @pytest.mark.parametrize("who", ["admin", "steward", "analyst", "auditor", "operator", "city_auditor"])
    def test_members_operators_and_city_auditors_see_members(self, as_user, people, who):
        response = as_user(people[who]).get(self.url)
        assert response.status_code == 200
        assert {m["role"] for m in response.json()} == {"admin", "steward", "analyst", "auditor"}

    @pytest.mark.parametrize("who", ["outsider", "nobody", "reviewer"])
    def test_outsiders_may_not_list_members(self, as_user, people, who):
        assert_error(as_user(people[who]).get(self.url), 403, "permission_denied")

    def test_member_list_costs_constant_queries(self, as_user, people, django_assert_num_queries):
        client = as_user(people["admin"])
        principal_forget(people["admin"])
        with django_assert_num_queries(4):  # principal (2), department, members with users
            client.get(self.url)
        for _ in range(5):
            from tests.factories import MembershipFactory

            MembershipFactory(department=Department.objects.get(slug="transport"))
        principal_forget(people["admin"])
        with django_assert_num_queries(4):
            assert len(client.get(self.url).json()) == 9

    def test_admin_adds_member_who_joins_the_group(self, as_user, people, department):
        newcomer = people["nobody"]
        response = as_user(people["admin"]).post(self.url, {"username": newcomer.username, "role": "analyst"})
        assert response.status_code == 201, response.content
        assert newcomer.groups.filter(pk=department.group_id).exists()
        event = AuditEvent.objects.filter(action="membership.add").last()
        assert event.details == {"user": newcomer.username, "role": "analyst"}
        assert event.actor_id == people["admin"].pk

    @pytest.mark.parametrize("who", ["steward", "analyst", "auditor", "outsider", "city_auditor"])
    def test_only_admins_add(self, as_user, people, who):
        response = as_user(people[who]).post(self.url, {"username": people["nobody"].username, "role": "analyst"})
        assert_error(response, 403)
        assert not Membership.objects.filter(user=people["nobody"]).exists()

    def test_unknown_role(self, as_user, people):
        response = as_user(people["admin"]).post(self.url, {"username": people["nobody"].username, "role": "king"})
        error = assert_error(response, 400, "unknown_role")
        assert "role" in error["fields"]
        assert not Membership.objects.filter(user=people["nobody"]).exists()
        assert not AuditEvent.objects.filter(action="membership.add", details__user=people["nobody"].username).exists()

    def test_duplicate_membership(self, as_user, people):
        response = as_user(people["admin"]).post(self.url, {"username": people["analyst"].username, "role": "steward"})
        assert_error(response, 409, "duplicate_membership")
        assert Membership.objects.get(user=people["analyst"]).role == "analyst"

    def test_unknown_user(self, as_user, people):
        error = assert_error(as_user(people["admin"]).post(self.url, {"username": "ghost", "role": "analyst"}), 400)
        assert "username" in error["fields"]

    def test_missing_fields(self, as_user, people):
        error = assert_error(as_user(people["admin"]).post(self.url, {}), 400, "invalid")
        assert set(error["fields"]) == {"username", "role"}

    def test_change_role_and_remove(self, as_user, people, department):
        membership = Membership.objects.get(user=people["analyst"])
        client = as_user(people["admin"])
        response = client.patch(f"{self.url}{membership.pk}/", {"role": "steward"})
        assert response.status_code == 200 and response.json()["role"] == "steward"
        assert client.delete(f"{self.url}{membership.pk}/").status_code == 204
        assert not people["analyst"].groups.filter(pk=department.group_id).exists()
        actions = list(AuditEvent.objects.values_list("action", flat=True).order_by("id"))
        assert actions[-2:] == ["membership.change_role", "membership.remove"]

    def test_last_admin_cannot_leave_or_step_down(self, as_user, people):
        membership = Membership.objects.get(user=people["admin"])
        client = as_user(people["admin"])
        assert_error(client.patch(f"{self.url}{membership.pk}/", {"role": "analyst"}), 409, "last_admin")
        assert_error(client.delete(f"{self.url}{membership.pk}/"), 409, "last_admin")
        assert Membership.objects.get(pk=membership.pk).role == "admin"

    def test_membership_of_another_department_is_404(self, as_user, people):
        foreign = Membership.objects.get(user=people["outsider"])
        assert_error(as_user(people["admin"]).patch(f"{self.url}{foreign.pk}/", {"role": "analyst"}), 404)


class TestMe:
    def test_me_lists_departments_and_city_roles(self, as_user, people):
        body = as_user(people["steward"]).get("/api/v1/me/").json()
        assert body["departments"] == [
            {"slug": "transport", "code": "transport", "name": "Transport", "role": "steward"}
        ]
        assert body["city_roles"] == []
        assert as_user(people["reviewer"]).get("/api/v1/me/").json()["city_roles"] == ["governance_reviewer"]


class TestCityRoles:
    def test_operator_grants_and_revokes(self, as_user, people):
        client = as_user(people["operator"])
        response = client.post(
            "/api/v1/city-roles/", {"username": people["nobody"].username, "role": "data_protection_officer"}
        )
        assert response.status_code == 201, response.content
        assert_error(
            client.post(
                "/api/v1/city-roles/", {"username": people["nobody"].username, "role": "data_protection_officer"}
            ),
            409,
            "duplicate_role",
        )
        assert client.delete(f"/api/v1/city-roles/{response.json()['id']}/").status_code == 204
        assert_error(client.delete(f"/api/v1/city-roles/{response.json()['id']}/"), 404)

    def test_unknown_city_role(self, as_user, people):
        response = as_user(people["operator"]).post(
            "/api/v1/city-roles/", {"username": people["nobody"].username, "role": "mayor"}
        )
        assert_error(response, 400, "unknown_role")

    @pytest.mark.parametrize("who", ["admin", "reviewer", "city_auditor"])
    def test_only_operators(self, as_user, people, who):
        assert_error(as_user(people[who]).get("/api/v1/city-roles/"), 403)
