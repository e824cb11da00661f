from typing import Any

from django.conf import settings
from django.core import paginator as django_paginator
from django.db.models import Count, QuerySet, Window
from django.db.models.query import ModelIterable
from rest_framework import pagination
from rest_framework.request import Request

from config.api.errors import ApplicationError


def page_size_from(request: Request, *, name: str, default: int, maximum: int) -> int:
    """The requested page size: ``default`` when none is asked for, a 400 (in the API's error
    shape, like the records pages') for anything but a whole number from 1 to ``maximum``;
    never silently clamped, so that a client never takes a short page for the last one."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        size = int(raw)
    except ValueError:
        raise ApplicationError(f"{name} must be a whole number.", fields={name: ["Not a number."]}) from None
    if not 1 <= size <= maximum:
        raise ApplicationError(f"{name} must be between 1 and {maximum}.", fields={name: [f"Between 1 and {maximum}."]})
    return size


class StrictPageSize:
    page_size: int | None
    page_size_query_param: str | None

    def get_page_size(self, request: Request) -> int:
        default = self.page_size or 50
        return page_size_from(request, name=self.page_size_query_param or "page_size", default=default,
                              maximum=settings.API_MAX_PAGE_SIZE)


class CountingPaginator(django_paginator.Paginator):
    """Django's paginator, with the total counted by the page's own statement
    (``count(*) OVER ()``) instead of a ``SELECT count(*)`` of its own: one statement per page
    instead of two, and the (often costly) visibility filter planned once. A page past the end
    finds no row to carry the total, and a query the window would count differently
    (``DISTINCT``) or a list that is not a query: Django's own path, with its own count."""

    def page(self, number: Any) -> django_paginator.Page:
        qs = self.object_list
        if (not isinstance(qs, QuerySet) or qs._iterable_class is not ModelIterable or qs.query.distinct
                or self.orphans):
            return super().page(number)
        try:
            plain = int(number)
        except (TypeError, ValueError):
            return super().page(number)  # Django's own message for a page that is not a number
        if plain < 1:
            return super().page(number)
        bottom = (plain - 1) * self.per_page
        rows = list(qs.annotate(_page_total=Window(Count("*")))[bottom:bottom + self.per_page])
        if not rows:
            return super().page(number)
        self.__dict__["count"] = rows[0]._page_total  # the cached property, answered
        return django_paginator.Page(rows, plain, self)


class PageNumberPagination(StrictPageSize, pagination.PageNumberPagination):
    page_size_query_param = "page_size"
    django_paginator_class = CountingPaginator

