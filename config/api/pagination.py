from django.conf import settings
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


class PageNumberPagination(StrictPageSize, pagination.PageNumberPagination):
    page_size_query_param = "page_size"
