"""Walking every URL pattern of ``config.urls`` with real object ids of the sweep world."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from tests.sweep_world import World

ROLES = ("anonymous", "outsider", "analyst_nogrant", "analyst_partial", "steward_other", "dept_auditor",
         "city_auditor", "subscriber_steward", "owner_steward")
WRITE_METHODS = ("post", "put", "patch", "delete")
_PARAM = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>")


@dataclass(frozen=True)
class Route:
    name: str
    template: str  # "/api/v1/datasets/<int:dataset_id>/" (the CKAN route: "/api/3/action/<action>")
    callback: Any

    @property
    def is_api(self) -> bool:
        return self.template.startswith("/api/")

    @property
    def params(self) -> list[str]:
        return [m["name"] for m in _PARAM.finditer(self.template)]

    def methods(self) -> tuple[str, ...]:
        """GET, and the writes a class-based view implements (function views: POST)."""
        view_class = getattr(self.callback, "view_class", None)
        if view_class is None:
            return ("get", "post")
        return ("get", *(m for m in WRITE_METHODS if hasattr(view_class, m)))

    def fill(self, values: dict[str, Any]) -> str:
        return _PARAM.sub(lambda m: str(values[m["name"]]), self.template)


def routes() -> Iterator[Route]:
    """Every URL pattern of the project, the admin site's excepted (checked on its own)."""
    yield from _walk(get_resolver().url_patterns, "/")


def _walk(patterns: list[URLPattern | URLResolver], prefix: str) -> Iterator[Route]:
    for p in patterns:
        if isinstance(p, URLResolver):
            if p.app_name == "admin":
                continue
            yield from _walk(p.url_patterns, prefix + str(p.pattern))
        else:
            route = str(p.pattern)
            if route.startswith("^"):  # a regex route: the CKAN action catch-all
                route = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"<\1>", route).lstrip("^").removesuffix("\\Z")
                route = route.removesuffix("$")
            yield Route(name=p.name or "", template=prefix + route, callback=p.callback)


def path_values(world: World) -> dict[str, Any]:
    return {
        "dataset_id": world.dataset.pk, "run_id": world.ingest_run.pk, "connection_id": world.connection.pk,
        "subscription_id": world.subscription.pk, "request_id": world.request.pk, "grant_id": world.grant.pk,
        "membership_id": world.membership.pk, "assignment_id": world.city_role.pk,
        "token_key": world.token_key, "username": world.people["owner_steward"].username, "slug": "transport",
        "action": "revoke", "fmt": "jsonld", "data_request_id": world.data_request.pk, "step": "join",
        "objection_id": world.objection.pk,
    }


def login(client: Client, world: World, role: str) -> None:
    client.logout()
    if role != "anonymous":
        client.force_login(world.people[role])


def body_of(response: Any) -> str:
    if getattr(response, "streaming", False):
        content = b"".join(response.streaming_content)
    else:
        content = response.content
    headers = "\n".join(f"{k}: {v}" for k, v in response.items())
    return headers + "\n" + content.decode(errors="replace")


def call(client: Client, method: str, url: str, *, api: bool) -> Any:
    if method == "get":
        return client.get(url)
    if api:
        return getattr(client, method)(url, data=json.dumps({}), content_type="application/json")
    return getattr(client, method)(url, data={})
