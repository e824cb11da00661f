"""The stack's floor for ``python -m bench http``: what Django, Django REST Framework, the
project's middleware and its token authentication cost around the reference's own statement.

Served by gunicorn like the project, with the project's settings except the URLs
(``bench.floor_settings``): one DRF view, the project's default authentication and
permission classes, no rate limits, no policy, no masking, no cursor and no audit. It answers
``GET /floor/?columns=a,b&after=K&size=N`` exactly as ``bench/reference_server.py`` does, with
the same ``json_agg`` statement over the table named by ``BENCH_FLOOR_TABLE``
(``schema.table``) and key ``BENCH_FLOOR_KEY``, through Django's connection.

The records API cannot be faster than this on the same machine; the distance from the
reference to the floor is the framework's, from the floor to the API the governance's.
Never part of the project's own URLs.
"""

from __future__ import annotations

import functools
import os

from django.db import connection
from django.http import Http404, HttpResponse
from django.urls import path
from rest_framework.request import Request
from rest_framework.views import APIView


@functools.cache
def _columns() -> frozenset[str]:
    schema, table = os.environ["BENCH_FLOOR_TABLE"].split(".")
    with connection.cursor() as cursor:
        cursor.execute("SELECT column_name FROM information_schema.columns "
                       "WHERE table_schema = %s AND table_name = %s", [schema, table])
        return frozenset(row[0] for row in cursor.fetchall())


@functools.cache
def _statement(columns: tuple[str, ...]) -> str:
    quote = connection.ops.quote_name
    table = ".".join(quote(part) for part in os.environ["BENCH_FLOOR_TABLE"].split("."))
    key = quote(os.environ["BENCH_FLOOR_KEY"])
    return (f"SELECT COALESCE(json_agg(t), '[]')::text FROM (SELECT {', '.join(map(quote, columns))} "  # noqa: S608
            f"FROM {table} WHERE _deleted = false AND {key} > %s ORDER BY {key} LIMIT %s) AS t")


class FloorApi(APIView):
    throttle_classes = []  # noqa: RUF012 - DRF's own attribute

    def get(self, request: Request) -> HttpResponse:
        columns = tuple(request.query_params.get("columns", "").split(","))
        if not set(columns) <= _columns():
            raise Http404
        after, size = int(request.query_params.get("after", 0)), int(request.query_params.get("size", 1000))
        with connection.cursor() as cursor:
            cursor.execute(_statement(columns), [after, size])
            row = cursor.fetchone()
        return HttpResponse(b'{"results":' + row[0].encode() + b"}", content_type="application/json")


urlpatterns = [path("floor/", FloorApi.as_view())]
