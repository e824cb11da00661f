"""Reads of the catalogue, scoped to what the asking user may see."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Q, QuerySet
from guardian.shortcuts import get_objects_for_user

from catalog.models import Dataset, DatasetStatus, Visibility
from config.api.errors import NotFoundError, PermissionDeniedError
from departments.models import Role
from departments.selectors import principal_of

LISTED = (DatasetStatus.PUBLISHED, DatasetStatus.DEPRECATED)


def dataset_visible_q(user: User | AnonymousUser) -> Q:
    p = principal_of(user)
    if p.is_staff or p.is_city_auditor:
        return Q()
    q = Q(department_id__in=p.department_ids) | Q(status__in=LISTED, visibility=Visibility.CITY)
    if isinstance(user, User):
        granted = get_objects_for_user(user, "catalog.view_dataset", klass=Dataset, accept_global_perms=False)
        q |= Q(status__in=LISTED, pk__in=granted.values("pk"))
    if p.is_reviewer or p.is_dpo:
        q |= Q(status=DatasetStatus.IN_REVIEW)
    return q


def dataset_list(*, user: User | AnonymousUser) -> QuerySet[Dataset]:
    return Dataset.objects.filter(dataset_visible_q(user)).select_related("department", "current_schema")


def dataset_get_for_user(*, user: User | AnonymousUser, dataset_id: int, write: bool = False) -> Dataset:
    """Fetch a dataset the user may know of: 404 otherwise; with ``write``, 403 unless the user
    is a steward of the owning department."""
    dataset = dataset_list(user=user).filter(pk=dataset_id).first()
    if dataset is None:
        raise NotFoundError("No such dataset.")
    if write and not principal_of(user).has_role(dataset.department_id, Role.STEWARD):
        raise PermissionDeniedError("Only stewards of the owning department may change this dataset.")
    return dataset
