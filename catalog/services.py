"""Every change to the catalogue goes through these functions.

Each one checks who may act, validates, writes, records the step in the dataset's timeline,
appends an audit event in the same transaction, and leaves notifications and signals to run
after commit. Preconditions: the caller fetched the dataset with
:func:`catalog.selectors.dataset_get_for_user` (so it is visible to the actor); the services
re-read and lock the row themselves before changing it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, TypedDict

from django.contrib.auth.models import AnonymousUser, User
from django.contrib.postgres.search import SearchVector
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Max, Value
from django.urls import reverse
from django.utils import timezone
from guardian.models import GroupObjectPermission, UserObjectPermission
from guardian.shortcuts import assign_perm

from catalog import signals
from catalog.keywords import RESERVED_FIELD_NAMES
from catalog.models import (
    ChangeKind,
    Dataset,
    DatasetStatus,
    DatasetTransition,
    Field,
    FieldType,
    Licence,
    SchemaStatus,
    SchemaVersion,
    Sensitivity,
    Theme,
    UpdateFrequency,
    Visibility,
    field_name_validator,
)
from catalog.quality import validate_rules
from catalog.selectors import dataset_visible, is_owner_steward
from config.api.errors import ApplicationError, ConflictError, PermissionDeniedError
from departments.models import CityRole, Department, Membership, Role
from departments.notifications import notify
from departments.selectors import principal_of
from exchange.audit.services import audit_record

Actor = User | AnonymousUser | None

EDITABLE_METADATA = (
    "title", "slug", "description", "themes", "keywords", "licence", "update_frequency",
    "temporal_start", "temporal_end", "spatial", "contact", "visibility",
)
# Metadata may change while nobody is reviewing it; the schema has its own rules (below).
METADATA_EDITABLE_IN = (DatasetStatus.DRAFT, DatasetStatus.PUBLISHED, DatasetStatus.DEPRECATED)
MAX_KEYWORDS = 30
MAX_KEYWORD_LENGTH = 60
MAX_FIELDS = 500


class FieldSpec(TypedDict, total=False):
    name: str
    type: str
    sensitivity: str
    description: str
    unit: str
    nullable: bool
    is_key: bool
    renamed_from: str


@dataclass(frozen=True)
class Transition:
    action: str
    to_status: str
    # Who may take it: "steward" of the owning department, or a governance "reviewer".
    by: str


# The workflow of a dataset, and (once it is published) of its next schema version.
DATASET_TRANSITIONS: dict[str, dict[str, Transition]] = {
    DatasetStatus.DRAFT: {"submit": Transition("submit", DatasetStatus.IN_REVIEW, "steward")},
    DatasetStatus.IN_REVIEW: {
        "approve": Transition("approve", DatasetStatus.PUBLISHED, "reviewer"),
        "request_changes": Transition("request_changes", DatasetStatus.CHANGES_REQUESTED, "reviewer"),
        "withdraw": Transition("withdraw", DatasetStatus.DRAFT, "steward"),
    },
    DatasetStatus.CHANGES_REQUESTED: {"revise": Transition("revise", DatasetStatus.DRAFT, "steward")},
    DatasetStatus.PUBLISHED: {"deprecate": Transition("deprecate", DatasetStatus.DEPRECATED, "steward")},
    DatasetStatus.DEPRECATED: {"retire": Transition("retire", DatasetStatus.RETIRED, "steward")},
    DatasetStatus.RETIRED: {},
}
SCHEMA_TRANSITIONS: dict[str, dict[str, Transition]] = {
    SchemaStatus.DRAFT: {
        "submit": Transition("submit", SchemaStatus.IN_REVIEW, "steward"),
        "discard": Transition("discard", "discarded", "steward"),
    },
    SchemaStatus.IN_REVIEW: {
        "approve": Transition("approve", SchemaStatus.PUBLISHED, "reviewer"),
        "request_changes": Transition("request_changes", SchemaStatus.CHANGES_REQUESTED, "reviewer"),
        "withdraw": Transition("withdraw", SchemaStatus.DRAFT, "steward"),
    },
    SchemaStatus.CHANGES_REQUESTED: {
        "revise": Transition("revise", SchemaStatus.DRAFT, "steward"),
        "discard": Transition("discard", "discarded", "steward"),
    },
}
ALL_ACTIONS = ("submit", "approve", "request_changes", "withdraw", "revise", "deprecate", "retire", "discard")
PENDING_SCHEMA_STATUSES = (SchemaStatus.DRAFT, SchemaStatus.IN_REVIEW, SchemaStatus.CHANGES_REQUESTED)


def _user(actor: Actor) -> User | None:
    return actor if isinstance(actor, User) else None


def _link(dataset: Dataset, *, review: bool = False) -> str:
    """Where a notified person acts: the review page for reviewers, the dataset page otherwise."""
    return reverse("ui-review-detail" if review else "ui-dataset-detail", args=[dataset.pk])


# --- Who may -----------------------------------------------------------------------------------

def _require_steward(actor: Actor, dataset: Dataset) -> None:
    if not is_owner_steward(user=actor, dataset=dataset):
        raise PermissionDeniedError("Only stewards of the owning department may do this.")


def pending_schema_version(dataset: Dataset) -> SchemaVersion | None:
    """The next schema version of a published dataset, while it is being prepared or reviewed."""
    if dataset.current_schema_id is None:
        return None
    return (
        SchemaVersion.objects.filter(dataset=dataset, status__in=PENDING_SCHEMA_STATUSES)
        .order_by("-number").first()
    )


def allowed_transitions(*, dataset: Dataset, pending: SchemaVersion | None) -> list[str]:
    """The actions the workflow allows from the current state, whoever asks."""
    actions = list(DATASET_TRANSITIONS[dataset.status])
    if pending is not None and dataset.status in (DatasetStatus.PUBLISHED, DatasetStatus.DEPRECATED):
        actions += [a for a in SCHEMA_TRANSITIONS[pending.status] if a not in actions]
    return actions


def transitions_for_user(*, user: Actor, dataset: Dataset, pending: SchemaVersion | None) -> list[str]:
    """The subset of :func:`allowed_transitions` this user may take (for the UI's buttons)."""
    steward = is_owner_steward(user=user, dataset=dataset)
    reviewer = user is not None and user.is_authenticated and principal_of(user).is_reviewer
    out = []
    for action in allowed_transitions(dataset=dataset, pending=pending):
        spec = _transition_spec(dataset, pending, action)
        if spec.by == "steward" and steward:
            out.append(action)
        elif spec.by == "reviewer" and reviewer and _last_submitter_id(dataset, pending) != getattr(user, "pk", None):
            out.append(action)
    return out


def _transition_spec(dataset: Dataset, pending: SchemaVersion | None, action: str) -> Transition:
    if action in DATASET_TRANSITIONS[dataset.status]:
        return DATASET_TRANSITIONS[dataset.status][action]
    assert pending is not None
    return SCHEMA_TRANSITIONS[pending.status][action]


def _last_submitter_id(dataset: Dataset, pending: SchemaVersion | None) -> int | None:
    qs = DatasetTransition.objects.filter(dataset=dataset, action="submit")
    qs = qs.filter(schema_version=pending) if pending is not None and dataset.current_schema_id else qs.filter(
        schema_number__isnull=True)
    return qs.order_by("-created_at", "-id").values_list("actor_id", flat=True).first()


# --- Validation --------------------------------------------------------------------------------

def _metadata_errors(changes: dict[str, Any]) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if "themes" in changes:
        themes = changes["themes"]
        if not isinstance(themes, list) or not all(isinstance(t, str) for t in themes):
            errors["themes"] = ["A list of EU data theme codes."]
        else:
            unknown = [t for t in themes if t not in Theme.values]
            if unknown:
                errors["themes"] = [f"Unknown theme(s) {', '.join(unknown)}; choose from {', '.join(Theme.values)}."]
            elif len(set(themes)) != len(themes):
                errors["themes"] = ["A theme is listed twice."]
    if "keywords" in changes:
        keywords = changes["keywords"]
        if not isinstance(keywords, list) or not all(isinstance(k, str) and k.strip() for k in keywords):
            errors["keywords"] = ["A list of non-empty words or phrases."]
        elif len(keywords) > MAX_KEYWORDS or any(len(k) > MAX_KEYWORD_LENGTH for k in keywords):
            errors["keywords"] = [f"At most {MAX_KEYWORDS} keywords of at most {MAX_KEYWORD_LENGTH} characters."]
    for name, choices in (("licence", Licence), ("update_frequency", UpdateFrequency), ("visibility", Visibility)):
        if name in changes and changes[name] not in choices.values:
            errors[name] = [f"Choose one of: {', '.join(choices.values)}."]
    return errors


def _clean_dataset(dataset: Dataset, extra_errors: dict[str, list[str]]) -> None:
    errors = dict(extra_errors)
    try:
        dataset.full_clean(exclude=["current_schema", "search_vector", "search_terms", "search_text"])
    except ValidationError as exc:
        for key, messages in exc.message_dict.items():
            errors.setdefault("non_field_errors" if key == "__all__" else key, []).extend(messages)
    if errors:
        raise ApplicationError("The dataset is not valid.", fields=errors)


def _check_contact(department: Department, contact: User | None) -> dict[str, list[str]]:
    if contact is not None and not Membership.objects.filter(user=contact, department=department).exists():
        return {"contact": ["The contact must be a member of the owning department."]}
    return {}


def validate_fields(
    specs: Sequence[dict[str, Any]], *, previous: Sequence[Field] = ()
) -> tuple[list[Field], dict[str, list[str]]]:
    """Check a whole field list and build unsaved Field objects. Errors are keyed
    ``fields[i].attribute`` (``fields`` for the list as a whole)."""
    errors: dict[str, list[str]] = {}
    fields: list[Field] = []
    previous_names = {f.name for f in previous}

    def err(key: str, message: str) -> None:
        errors.setdefault(key, []).append(message)

    if not isinstance(specs, list | tuple) or not specs:
        return [], {"fields": ["A schema needs at least one field."]}
    if len(specs) > MAX_FIELDS:
        return [], {"fields": [f"At most {MAX_FIELDS} fields."]}
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        at = f"fields[{i}]"
        if not isinstance(spec, dict):
            err(at, "Each field is an object.")
            continue
        name = str(spec.get("name") or "")
        if not name:
            err(f"{at}.name", "A name is required.")
        elif len(name) > 63:
            err(f"{at}.name", "At most 63 characters (PostgreSQL's identifier limit).")
        else:
            try:
                field_name_validator(name)
            except ValidationError:
                err(f"{at}.name", "Use lowercase letters, digits and underscores, starting with a letter "
                                  "(no spaces, quotes or other characters).")
            else:
                if name in RESERVED_FIELD_NAMES:
                    err(f"{at}.name", f"{name!r} is a reserved SQL word; choose another name.")
        if name and name in seen:
            err(f"{at}.name", f"Duplicate field name {name!r}.")
        seen.add(name)
        ftype = spec.get("type")
        if ftype not in FieldType.values:
            err(f"{at}.type", f"Unknown type {ftype!r}; choose one of: {', '.join(FieldType.values)}.")
        sensitivity = spec.get("sensitivity")
        if not sensitivity:
            err(f"{at}.sensitivity", "Every field needs a sensitivity class.")
        elif sensitivity not in Sensitivity.values:
            err(f"{at}.sensitivity", f"Choose one of: {', '.join(Sensitivity.values)}.")
        is_key = bool(spec.get("is_key", False))
        nullable = bool(spec.get("nullable", not is_key))
        if is_key and nullable:
            err(f"{at}.nullable", "A key field cannot be nullable.")
        renamed_from = str(spec.get("renamed_from") or "")
        if renamed_from and renamed_from not in previous_names:
            err(f"{at}.renamed_from", "Name a field of the current published schema.")
        if renamed_from and renamed_from != name and renamed_from in {str(s.get("name")) for s in specs
                                                                      if isinstance(s, dict)}:
            err(f"{at}.renamed_from", f"{renamed_from!r} is still in the schema; it cannot be renamed too.")
        description = str(spec.get("description") or "")
        unit = str(spec.get("unit") or "")
        if len(unit) > 40:
            err(f"{at}.unit", "At most 40 characters.")
        fields.append(Field(
            position=i + 1, name=name, type=str(ftype or ""), sensitivity=str(sensitivity or ""),
            description=description, unit=unit, nullable=nullable, is_key=is_key,
            renamed_from=renamed_from if renamed_from != name else "",
        ))
    if not errors and not any(f.is_key for f in fields):
        err("fields", "Mark the key: one or several fields (non-nullable) that identify a record.")
    renames = [f.renamed_from for f in fields if f.renamed_from]
    if len(renames) != len(set(renames)):
        err("fields", "A field can be renamed only once.")
    return fields, errors


def classify_changes(previous: Sequence[Field], fields: Sequence[Field]) -> tuple[str, list[dict[str, Any]]]:
    """Compare a schema with the one before it: what changed, and whether readers break."""
    if not previous:
        return ChangeKind.INITIAL, []
    before = {f.name: f for f in previous}
    changes: list[dict[str, Any]] = []
    matched: set[str] = set()
    for field in fields:
        source_name = field.renamed_from or field.name
        old = before.get(source_name)
        if old is None:
            changes.append({"change": "added", "field": field.name, "type": field.type,
                            "sensitivity": field.sensitivity, "breaking": field.is_key or not field.nullable})
            continue
        matched.add(source_name)
        if field.renamed_from:
            changes.append({"change": "renamed", "field": field.name, "from": old.name, "breaking": True})
        if old.type != field.type:
            changes.append({"change": "retyped", "field": field.name, "from": old.type, "to": field.type,
                            "breaking": True})
        if old.sensitivity != field.sensitivity:
            changes.append({"change": "sensitivity", "field": field.name, "from": old.sensitivity,
                            "to": field.sensitivity, "breaking": False})
        if old.is_key != field.is_key:
            changes.append({"change": "key", "field": field.name, "from": old.is_key, "to": field.is_key,
                            "breaking": True})
        if old.nullable != field.nullable:
            changes.append({"change": "nullable", "field": field.name, "from": old.nullable,
                            "to": field.nullable, "breaking": not field.nullable})
        if (old.description, old.unit) != (field.description, field.unit):
            changes.append({"change": "described", "field": field.name, "breaking": False})
    for name in before:
        if name not in matched:
            changes.append({"change": "removed", "field": name, "breaking": True})
    if [f.name for f in previous] != [f.name for f in fields] and not changes:
        changes.append({"change": "reordered", "breaking": False})
    if any(c["breaking"] for c in changes):
        return ChangeKind.BREAKING, changes
    return (ChangeKind.ADDITIVE if changes else ChangeKind.NONE), changes


def field_as_dict(field: Field) -> dict[str, Any]:
    return {
        "name": field.name, "type": field.type, "sensitivity": field.sensitivity,
        "description": field.description, "unit": field.unit, "nullable": field.nullable,
        "is_key": field.is_key, "renamed_from": field.renamed_from,
    }


# --- Search document ---------------------------------------------------------------------------

def _search_schema(dataset: Dataset) -> SchemaVersion | None:
    if dataset.current_schema_id:
        return dataset.current_schema
    return SchemaVersion.objects.filter(dataset=dataset).order_by("-number").first()


def _refresh_search(dataset: Dataset) -> None:
    """Rewrite the dataset's search columns from its metadata and its (current) schema."""
    schema = _search_schema(dataset)
    fields = list(schema.fields.all()) if schema is not None else []
    terms = " ".join([*dataset.keywords, *(f.name for f in fields), *(f.name.replace("_", " ") for f in fields)])
    text = "\n".join([dataset.description, *(f.description for f in fields if f.description)])
    Dataset.objects.filter(pk=dataset.pk).update(search_terms=terms, search_text=text)
    if connection.vendor == "postgresql":
        Dataset.objects.filter(pk=dataset.pk).update(search_vector=(
            SearchVector(Value(dataset.title), weight="A", config="english")
            + SearchVector(Value(terms), weight="B", config="english")
            + SearchVector(Value(text), weight="C", config="english")
        ))
    dataset.search_terms, dataset.search_text = terms, text


# --- Datasets ----------------------------------------------------------------------------------

@transaction.atomic
def dataset_create(
    *,
    actor: Actor,
    department: Department,
    title: str,
    slug: str,
    description: str,
    themes: list[str] | None = None,
    keywords: list[str] | None = None,
    licence: str = Licence.CITY_INTERNAL,
    update_frequency: str = UpdateFrequency.UNKNOWN,
    temporal_start: date | None = None,
    temporal_end: date | None = None,
    spatial: str = "",
    contact: User | None = None,
    visibility: str = Visibility.CITY,
) -> Dataset:
    user = _user(actor)
    if actor is not None and not (user is not None and principal_of(user).has_role(department.pk, Role.STEWARD)):
        raise PermissionDeniedError("Only stewards of a department may create its datasets.")
    values: dict[str, Any] = {
        "themes": themes or [], "keywords": keywords or [], "licence": licence,
        "update_frequency": update_frequency, "visibility": visibility,
    }
    dataset = Dataset(
        department=department, title=title, slug=slug, description=description, temporal_start=temporal_start,
        temporal_end=temporal_end, spatial=spatial, contact=contact if contact is not None else user,
        created_by=user, status=DatasetStatus.DRAFT, **values,
    )
    _clean_dataset(dataset, {**_metadata_errors(values), **_check_contact(department, dataset.contact)})
    dataset.save()
    assign_perm("catalog.change_dataset", department.group, dataset)
    assign_perm("catalog.view_dataset", department.group, dataset)
    _refresh_search(dataset)
    audit_record(
        actor=actor, action="dataset.create", obj=dataset, department_id=department.pk, dataset_id=dataset.pk,
        details={"title": title, "slug": slug, "visibility": visibility, "licence": licence},
    )
    return dataset


def _locked(dataset: Dataset) -> Dataset:
    return Dataset.objects.select_for_update(of=("self",)).select_related("department", "current_schema").get(
        pk=dataset.pk)


def _jsonable(value: Any) -> Any:
    if isinstance(value, User):
        return value.get_username()
    if isinstance(value, date):
        return value.isoformat()
    return value


@transaction.atomic
def dataset_update(*, actor: Actor, dataset: Dataset, **changes: Any) -> Dataset:
    unknown = set(changes) - set(EDITABLE_METADATA)
    if unknown:
        raise ApplicationError("These fields cannot be changed.",
                               fields={f: ["Not editable."] for f in sorted(unknown)})
    _require_steward(actor, dataset)
    dataset = _locked(dataset)
    if dataset.status not in METADATA_EDITABLE_IN:
        raise ConflictError(
            f"A dataset that is {dataset.get_status_display().lower()} cannot be edited.",
            extra={"allowed": allowed_transitions(dataset=dataset, pending=pending_schema_version(dataset))},
            code="not_editable",
        )
    errors = _metadata_errors(changes)
    if "slug" in changes and changes["slug"] != dataset.slug and dataset.published_at is not None:
        errors["slug"] = ["The slug of a published dataset is part of its stable URLs and cannot change."]
    if "contact" in changes:
        errors.update(_check_contact(dataset.department, changes["contact"]))
    before = {name: _jsonable(getattr(dataset, name)) for name in changes}
    for name, value in changes.items():
        setattr(dataset, name, value)
    _clean_dataset(dataset, errors)
    dataset.save()
    _refresh_search(dataset)
    audit_record(
        actor=actor, action="dataset.update", obj=dataset, department_id=dataset.department_id,
        dataset_id=dataset.pk,
        details={"before": before, "after": {k: _jsonable(v) for k, v in changes.items()}},
    )
    return dataset


@transaction.atomic
def dataset_delete(*, actor: Actor, dataset: Dataset) -> None:
    """Delete a dataset that was never published (a draft). Published ones are retired instead."""
    _require_steward(actor, dataset)
    dataset = _locked(dataset)
    if dataset.status != DatasetStatus.DRAFT or dataset.published_at is not None:
        raise ConflictError("Only a draft that was never published can be deleted; deprecate and retire instead.",
                            extra={"allowed": allowed_transitions(dataset=dataset,
                                                                  pending=pending_schema_version(dataset))},
                            code="not_deletable")
    audit_record(
        actor=actor, action="dataset.delete", obj=dataset, department_id=dataset.department_id,
        dataset_id=dataset.pk, details={"title": dataset.title, "slug": dataset.slug},
    )
    pk = str(dataset.pk)
    # guardian's generic object permissions have no foreign key to cascade through.
    UserObjectPermission.objects.filter(content_type__app_label="catalog", content_type__model="dataset",
                                        object_pk=pk).delete()
    GroupObjectPermission.objects.filter(content_type__app_label="catalog", content_type__model="dataset",
                                         object_pk=pk).delete()
    dataset.delete()


# --- Schema ------------------------------------------------------------------------------------

@transaction.atomic
def dataset_schema_set(
    *, actor: Actor, dataset: Dataset, fields: Sequence[dict[str, Any]], note: str = "",
    rules: Sequence[dict[str, Any]] | None = None,
) -> SchemaVersion:
    """Replace the fields (and with ``rules``, the quality rules) of the dataset's working schema.

    A draft dataset edits its first version in place. A published (or deprecated) dataset
    gets a new version, a draft that goes through review on its own; a draft version that
    already exists is edited in place. The change is classified against the current schema.
    Without ``rules`` the version keeps the rules it had (a new version, those of the current
    one), which must still fit its fields.
    """
    _require_steward(actor, dataset)
    dataset = _locked(dataset)
    pending = pending_schema_version(dataset)
    if dataset.status == DatasetStatus.DRAFT:
        version = SchemaVersion.objects.filter(dataset=dataset).order_by("-number").first()
        previous: list[Field] = []
    elif dataset.status in (DatasetStatus.PUBLISHED, DatasetStatus.DEPRECATED) and (
        pending is None or pending.status == SchemaStatus.DRAFT
    ):
        version = pending
        assert dataset.current_schema is not None
        previous = list(dataset.current_schema.fields.all())
    else:
        raise ConflictError(
            "The schema cannot be edited now: it is in review or changes were requested "
            "(revise first, or wait for the review).",
            extra={"allowed": allowed_transitions(dataset=dataset, pending=pending)},
            code="not_editable",
        )
    new_fields, errors = validate_fields(list(fields), previous=previous)
    if errors:
        raise ApplicationError("The schema is not valid.", fields=errors)
    if rules is None:
        kept = version if version is not None else dataset.current_schema
        rules = list(kept.rules) if kept is not None else []
    cleaned_rules, rule_errors = validate_rules(rules, new_fields,
                                                find_dataset=lambda slug: _referable(actor, dataset, slug))
    if rule_errors:
        raise ApplicationError("The quality rules are not valid.", fields=rule_errors)
    change_kind, changes = classify_changes(previous, new_fields)
    if version is None:
        number = (SchemaVersion.objects.filter(dataset=dataset).aggregate(n=Max("number"))["n"] or 0) + 1
        version = SchemaVersion.objects.create(
            dataset=dataset, number=number, status=SchemaStatus.DRAFT, created_by=_user(actor),
            change_kind=change_kind, changes=changes, note=note, rules=cleaned_rules,
        )
    else:
        version.fields.all().delete()
        version.change_kind, version.changes, version.rules = change_kind, changes, cleaned_rules
        version.note = note or version.note
        version.save(update_fields=["change_kind", "changes", "note", "rules"])
    for field in new_fields:
        field.schema = version
    Field.objects.bulk_create(new_fields)
    if dataset.status == DatasetStatus.DRAFT:
        _refresh_search(dataset)
    Dataset.objects.filter(pk=dataset.pk).update(modified_at=timezone.now())
    audit_record(
        actor=actor, action="dataset.schema_update", obj=version, department_id=dataset.department_id,
        dataset_id=dataset.pk,
        details={"version": version.number, "change_kind": change_kind, "changes": changes,
                 "fields": [f.name for f in new_fields], "rules": cleaned_rules},
    )
    return version


def _referable(actor: Actor, dataset: Dataset, slug: str) -> tuple[Dataset, list[Field]] | None:
    """A published dataset other than ``dataset`` that the actor may know, with its key fields:
    what a reference rule may point at (whether the owner may read it is checked at each run)."""
    user = _user(actor)
    if user is None:
        return None
    other = dataset_visible(user=user).filter(slug=slug, status__in=(DatasetStatus.PUBLISHED,
                                                                     DatasetStatus.DEPRECATED)).exclude(
        pk=dataset.pk).first()
    if other is None or other.current_schema_id is None:
        return None
    return other, list(Field.objects.filter(schema_id=other.current_schema_id, is_key=True).order_by("position"))


# --- The workflow ------------------------------------------------------------------------------

def _completeness_errors(dataset: Dataset, version: SchemaVersion | None) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if not dataset.description.strip():
        errors["description"] = ["Describe the dataset before submitting it."]
    if not dataset.themes:
        errors["themes"] = ["Choose at least one theme."]
    if dataset.contact_id is None:
        errors["contact"] = ["Name a contact person."]
    fields = list(version.fields.all()) if version is not None else []
    if not fields:
        errors["schema"] = ["Define the fields of the dataset before submitting it."]
    elif not any(f.is_key for f in fields):
        errors["schema"] = ["Mark the key field(s) before submitting."]
    return errors


def _reviewers() -> list[User]:
    return list(User.objects.filter(city_roles__role=CityRole.GOVERNANCE_REVIEWER, is_active=True).distinct())


def _stewards(dataset: Dataset) -> list[User]:
    return list(User.objects.filter(memberships__department_id=dataset.department_id,
                                    memberships__role=Role.STEWARD, is_active=True).distinct())


@transaction.atomic
def dataset_transition(*, actor: Actor, dataset: Dataset, action: str, comment: str = "") -> Dataset:
    """Take one step of the workflow: of the dataset itself, or of its pending schema version
    once the dataset is published. Illegal steps are 409 with the allowed ones listed; steps
    the actor may not take are 403; a reviewer never approves what they submitted."""
    dataset = _locked(dataset)
    pending = pending_schema_version(dataset)
    allowed = allowed_transitions(dataset=dataset, pending=pending)
    if action not in allowed:
        raise ConflictError(
            f"{action!r} is not possible while the dataset is {dataset.status}"
            + (f" and its schema version {pending.number} is {pending.status}" if pending else "") + ".",
            extra={"allowed": allowed}, code="illegal_transition",
        )
    spec = _transition_spec(dataset, pending, action)
    if spec.by == "steward":
        _require_steward(actor, dataset)
    else:
        if actor is None or not actor.is_authenticated or not principal_of(actor).is_reviewer:
            raise PermissionDeniedError("Only governance reviewers may approve or request changes.")
        if _last_submitter_id(dataset, pending) == actor.pk:
            raise PermissionDeniedError("Four eyes: you submitted this, so another reviewer must decide.",
                                        code="four_eyes")
    if spec.by == "reviewer" and action == "request_changes" and not comment.strip():
        raise ApplicationError("Say what must change.", fields={"comment": ["A comment is required."]})
    if action in DATASET_TRANSITIONS[dataset.status]:
        return _dataset_step(actor, dataset, spec, comment)
    assert pending is not None
    return _schema_step(actor, dataset, pending, spec, comment)


def _record(actor: Actor, dataset: Dataset, version: SchemaVersion | None, action: str, from_status: str,
            to_status: str, comment: str, audit_action: str, details: dict[str, Any] | None = None) -> None:
    DatasetTransition.objects.create(
        dataset=dataset, schema_version=version, schema_number=version.number if version else None, action=action,
        from_status=from_status, to_status=to_status, actor=_user(actor), comment=comment,
    )
    audit_record(
        actor=actor, action=audit_action, obj=version if audit_action.startswith("schema.") else dataset,
        department_id=dataset.department_id, dataset_id=dataset.pk,
        details={"from": from_status, "to": to_status, "comment": comment, **(details or {})},
    )


def _dataset_step(actor: Actor, dataset: Dataset, spec: Transition, comment: str) -> Dataset:
    version = SchemaVersion.objects.filter(dataset=dataset).order_by("-number").first()
    if spec.action == "submit":
        errors = _completeness_errors(dataset, version)
        if errors:
            raise ApplicationError("The dataset is not complete enough to be reviewed.", fields=errors,
                                   code="incomplete")
    from_status = dataset.status
    dataset.status = spec.to_status
    now = timezone.now()
    if version is not None and dataset.current_schema_id is None:
        # Before the first publication, version 1 moves in step with the dataset.
        in_step: dict[str, str] = {
            DatasetStatus.IN_REVIEW: SchemaStatus.IN_REVIEW, DatasetStatus.PUBLISHED: SchemaStatus.PUBLISHED,
            DatasetStatus.CHANGES_REQUESTED: SchemaStatus.CHANGES_REQUESTED,
        }
        version.status = in_step.get(spec.to_status, SchemaStatus.DRAFT)
        if spec.action == "approve":
            version.published_at = now
            dataset.current_schema = version
            dataset.published_at = now
        version.save(update_fields=["status", "published_at"])
    dataset.save(update_fields=["status", "current_schema", "published_at", "modified_at"])
    _record(actor, dataset, None, spec.action, from_status, spec.to_status, comment, f"dataset.{spec.action}")
    if spec.action == "approve":
        _refresh_search(dataset)
    if spec.action == "retire":
        # A retired dataset takes no new schema: a version still being prepared goes with it.
        for leftover in SchemaVersion.objects.filter(dataset=dataset, status__in=PENDING_SCHEMA_STATUSES):
            _record(actor, dataset, leftover, "discard", leftover.status, "discarded", "Dataset retired.",
                    "schema.discard", {"version": leftover.number})
            leftover.delete()
    _notify_step(actor, dataset, None, spec.action, comment)
    if spec.action == "approve" and version is not None:
        _send_published(dataset, version, None)
    return dataset


def _schema_step(actor: Actor, dataset: Dataset, version: SchemaVersion, spec: Transition, comment: str) -> Dataset:
    from_status = version.status
    if spec.action == "submit" and version.change_kind == ChangeKind.NONE:
        raise ApplicationError("This schema version changes nothing; edit it or discard it.",
                               fields={"schema": ["No change to the current schema."]}, code="incomplete")
    if spec.action == "discard":
        _record(actor, dataset, version, "discard", from_status, "discarded", comment, "schema.discard",
                {"version": version.number})
        version.delete()
        return dataset
    version.status = spec.to_status
    previous = dataset.current_schema
    if spec.action == "approve":
        now = timezone.now()
        version.published_at = now
        assert previous is not None
        SchemaVersion.objects.filter(pk=previous.pk).update(status=SchemaStatus.SUPERSEDED)
        dataset.current_schema = version
        dataset.save(update_fields=["current_schema", "modified_at"])
    version.save(update_fields=["status", "published_at"])
    _record(actor, dataset, version, spec.action, from_status, spec.to_status, comment, f"schema.{spec.action}",
            {"version": version.number, "change_kind": version.change_kind})
    _notify_step(actor, dataset, version, spec.action, comment)
    if spec.action == "approve":
        _refresh_search(dataset)
        _send_published(dataset, version, previous)
    return dataset


def _notify_step(actor: Actor, dataset: Dataset, version: SchemaVersion | None, action: str, comment: str) -> None:
    what = f"schema version {version.number} of “{dataset.title}”" if version else f"“{dataset.title}”"
    by = actor.get_username() if isinstance(actor, User) else "the system"
    body = f"{by}: {comment}" if comment else f"By {by}."
    kind_prefix = "schema" if version else "dataset"
    if action == "submit":
        notify(recipients=[u for u in _reviewers() if u.pk != getattr(actor, "pk", None)],
               kind=f"{kind_prefix}.submitted", subject=f"Review requested: {what}", body=body,
               link=_link(dataset, review=True), action_required=True, obj=dataset)
    elif action in ("approve", "request_changes"):
        submitter_id = _last_submitter_id(dataset, version)
        recipients = _stewards(dataset) + ([User.objects.get(pk=submitter_id)] if submitter_id else [])
        verb = "published" if action == "approve" else "needs changes"
        outcome = "approved" if action == "approve" else "changes_requested"
        notify(recipients=recipients, kind=f"{kind_prefix}.{outcome}",
               subject=f"{what[0].upper()}{what[1:]} {verb}", body=body, link=_link(dataset),
               action_required=action == "request_changes", obj=dataset)
        if action == "approve" and version is not None and version.change_kind == ChangeKind.BREAKING:
            notify(recipients=_stewards(dataset), kind="schema.breaking_change",
                   subject=f"Breaking schema change published: {what}",
                   body=_describe_changes(version.changes), link=_link(dataset), obj=dataset)


def _describe_changes(changes: Iterable[dict[str, Any]]) -> str:
    return "\n".join(
        f"- {c['change']}: {c.get('field', '')}" + (f" (from {c['from']})" if "from" in c else "")
        for c in changes if c.get("breaking")
    )


def _send_published(dataset: Dataset, version: SchemaVersion, previous: SchemaVersion | None) -> None:
    breaking = [c for c in version.changes if c.get("breaking")]

    def send() -> None:
        signals.schema_version_published.send(sender=Dataset, dataset=dataset, schema_version=version,
                                              previous=previous)
        if breaking:
            signals.breaking_change_published.send(sender=Dataset, dataset=dataset, schema_version=version,
                                                   previous=previous, changes=breaking)

    transaction.on_commit(send)
