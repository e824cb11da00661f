from __future__ import annotations

from typing import Any

from django.db import connection
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from exchange.ops import selectors


class HealthApi(APIView):
    """Liveness for load balancers and operators: the database answers, and when a Celery
    worker last proved it is consuming tasks. Reveals no names or counts."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        auth=[],
        responses=inline_serializer(
            "Health",
            fields={
                "status": serializers.CharField(),
                "database": serializers.CharField(),
                "workers": serializers.CharField(),
                "worker_last_seen": serializers.DateTimeField(allow_null=True),
            },
        ),
    )
    def get(self, request: Request) -> Response:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            database = "ok"
        except Exception:  # noqa: BLE001 - any failure here means "database down"
            database = "unavailable"
            return Response({"status": "unavailable", "database": database, "workers": "unknown",
                             "worker_last_seen": None}, status=503)
        return Response({
            "status": "ok",
            "database": database,
            "workers": "ok" if selectors.workers_alive() else "stale",
            "worker_last_seen": selectors.worker_last_seen(),
        })
