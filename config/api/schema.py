from __future__ import annotations

from drf_spectacular.openapi import AutoSchema as BaseAutoSchema
from rest_framework import serializers


class AutoSchema(BaseAutoSchema):
    """Names nested serializers after the API class that holds them, so the house habit of
    one ``InputSerializer``/``OutputSerializer`` per API class gives unique component names
    (``MembershipListApi.InputSerializer`` becomes ``MembershipListInput``)."""

    def get_serializer_name(self, serializer: serializers.Serializer, direction: str) -> str:  # type: ignore[override]
        qualname = serializer.__class__.__qualname__
        if "." not in qualname:
            return serializer.__class__.__name__
        outer, inner = qualname.rsplit(".", 1)
        return outer.replace(".", "").removesuffix("Api") + inner
