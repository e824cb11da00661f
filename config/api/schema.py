from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema as BaseAutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework import permissions, serializers

# The one error shape of config/api/errors.py: `fields` only for input errors, and `extra`
# keys (e.g. the allowed transitions of a 409) beside the three that are always there.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "status": {"type": "integer"},
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": {},
                           "description": "Input errors by field name (a list of messages, or nested)."},
            },
            "required": ["status", "code", "message"],
            "additionalProperties": {},
        },
    },
    "required": ["error"],
}

ERRORS = {
    "400": "The input is not valid (`fields` says why).",
    "401": "No valid credentials: no, a malformed, an unknown or an expired token.",
    "403": "You may not do this to something you can see.",
    "404": "Nothing here that you may know of.",
    "409": "The object's state does not allow it.",
    "429": "Too many attempts; try again later.",
}


class AutoSchema(BaseAutoSchema):
    """Names nested serializers after the API class that holds them, so the house habit of
    one ``InputSerializer``/``OutputSerializer`` per API class gives unique component names
    (``MembershipListApi.InputSerializer`` becomes ``MembershipListInput``), and documents the
    error answers every operation can give, in the one error shape."""

    def get_serializer_name(self, serializer: serializers.Serializer, direction: str) -> str:  # type: ignore[override]
        qualname = serializer.__class__.__qualname__
        if "." not in qualname:
            return serializer.__class__.__name__
        outer, inner = qualname.rsplit(".", 1)
        return outer.replace(".", "").removesuffix("Api") + inner

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:  # type: ignore[override]
        responses: dict[str, Any] = super()._get_response_bodies(direction)  # type: ignore[arg-type]
        if direction != "response":
            return responses
        component = ResolvedComponent(name="Error", type=ResolvedComponent.SCHEMA, object="Error", schema=ERROR_SCHEMA)
        self.registry.register_on_missing(component)
        for code in self._error_codes():
            responses.setdefault(code, {"content": {"application/json": {"schema": component.ref}},
                                        "description": ERRORS[code]})
        return responses

    def _error_codes(self) -> list[str]:
        """What can go wrong, derived from the view: validation of any input, authentication
        and permission unless open to all, 404 for objects (and pages) one may not know of,
        409 for writes, 429 where a throttle applies."""
        codes = ["400"]
        open_to_all = all(isinstance(p, permissions.AllowAny) for p in self.view.get_permissions())
        if not open_to_all:
            codes += ["401", "403", "404"]
        elif "{" in self.path:
            codes.append("404")
        if self.method not in ("GET", "HEAD", "OPTIONS"):
            codes.append("409")
        if getattr(self.view, "throttle_scope", None):
            codes.append("429")
        return codes
