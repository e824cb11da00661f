"""The catalogue in the admin site, read-only: every change goes through the services (API or
UI), which keep the workflow, object permissions, search columns and audit trail in step."""

from django.contrib import admin
from django.http import HttpRequest

from catalog.models import Dataset, DatasetTransition, Field, SchemaVersion


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class SchemaVersionInline(ReadOnlyInline):
    model = SchemaVersion
    fields = readonly_fields = ("number", "status", "change_kind", "created_by", "created_at", "published_at")


class TransitionInline(ReadOnlyInline):
    model = DatasetTransition
    fk_name = "dataset"
    fields = readonly_fields = ("created_at", "action", "from_status", "to_status", "actor", "schema_version",
                                "comment")


class FieldInline(ReadOnlyInline):
    model = Field
    fields = readonly_fields = ("position", "name", "type", "sensitivity", "is_key", "nullable", "unit",
                                "renamed_from", "description")


@admin.register(Dataset)
class DatasetAdmin(ReadOnlyAdmin):
    list_display = ["title", "slug", "department", "status", "visibility", "licence", "modified_at"]
    list_filter = ["status", "visibility", "licence", "department"]
    search_fields = ["title", "slug", "description"]
    list_select_related = ["department"]
    exclude = ["search_terms", "search_text", "search_vector"]
    inlines = [SchemaVersionInline, TransitionInline]


@admin.register(SchemaVersion)
class SchemaVersionAdmin(ReadOnlyAdmin):
    list_display = ["dataset", "number", "status", "change_kind", "created_at", "published_at"]
    list_filter = ["status", "change_kind"]
    search_fields = ["dataset__title", "dataset__slug"]
    list_select_related = ["dataset"]
    inlines = [FieldInline]
