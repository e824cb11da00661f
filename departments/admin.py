from django.contrib import admin
from django.http import HttpRequest

from departments import services
from departments.models import CityRoleAssignment, Department, Membership


class ReadOnlyGovernanceAdmin(admin.ModelAdmin):
    """Memberships and roles change only through the API or the UI, where the services keep
    groups, object permissions and the audit trail in step. The admin shows them."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class MembershipInline(admin.TabularInline):
    model = Membership
    fk_name = "department"
    extra = 0
    can_delete = False
    readonly_fields = ["user", "role", "added_by", "created_at"]

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Department)
class DepartmentAdmin(admin.ModelAdmin):
    list_display = ["name", "code", "slug", "contact_email", "is_active"]
    search_fields = ["name", "code"]
    readonly_fields = ["code", "slug", "group", "created_at", "updated_at"]
    inlines = [MembershipInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # through the API, so the group and the audit event are created with it

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # deactivate instead; history refers to departments

    def save_model(self, request: HttpRequest, obj: Department, form: object, change: bool) -> None:
        changed = {name: getattr(obj, name) for name in form.changed_data}  # type: ignore[attr-defined]
        fresh = Department.objects.get(pk=obj.pk)
        services.department_update(actor=request.user, department=fresh, **changed)


@admin.register(Membership)
class MembershipAdmin(ReadOnlyGovernanceAdmin):
    list_display = ["user", "department", "role", "created_at"]
    list_filter = ["role", "department"]
    search_fields = ["user__username", "department__name"]
    list_select_related = ["user", "department"]


@admin.register(CityRoleAssignment)
class CityRoleAssignmentAdmin(ReadOnlyGovernanceAdmin):
    list_display = ["user", "role", "granted_by", "created_at"]
    list_filter = ["role"]
    list_select_related = ["user", "granted_by"]
