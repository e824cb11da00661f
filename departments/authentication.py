from __future__ import annotations

import functools
import re
import weakref
from hmac import compare_digest
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.db import connection, connections
from django.db.models.expressions import Col, RawSQL
from django.utils import timezone
from knox.auth import TokenAuthentication
from knox.crypto import hash_token
from knox.models import get_token_model
from knox.settings import CONSTANTS
from rest_framework import HTTP_HEADER_ENCODING, exceptions
from rest_framework.authentication import get_authorization_header

from config.postgresql.base import prepared_cursor
from departments.access_version import VERSION_ATTR, VERSION_SQL


class ExpiringTokenAuthentication(TokenAuthentication):
    """API tokens from django-rest-knox: stored only as SHA-512 digests, each with an expiry,
    revocable one by one. Unlike knox's own check, a malformed token is a clean 401 rather
    than a decoding error, and an expired token says so instead of "invalid". The statement
    that finds the token also reads the access version, for the records request's cached
    context (``exchange/records/read_cache.py``): one round trip fewer per request."""

    def authenticate_credentials(self, token: bytes) -> Any:
        try:
            text = token.decode("ascii")
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed("Malformed token.", code="malformed_token") from exc
        if not text.isalnum() or not CONSTANTS.TOKEN_KEY_LENGTH <= len(text) <= 128:
            raise exceptions.AuthenticationFailed("Malformed token.", code="malformed_token")
        digest = hash_token(text)
        for auth_token, version in _tokens_with_version(text[: CONSTANTS.TOKEN_KEY_LENGTH]):
            if not compare_digest(digest, auth_token.digest):
                continue
            if auth_token.expiry is not None and auth_token.expiry < timezone.now():
                raise exceptions.AuthenticationFailed(
                    "This token has expired; sign in again to get a new one.", code="token_expired"
                )
            setattr(auth_token.user, VERSION_ATTR, version)
            return self.validate_user(auth_token)
        raise exceptions.AuthenticationFailed("Invalid token.", code="invalid_token")


def _tokens_with_version(token_key: str) -> list[tuple[Any, int]]:
    """The tokens of that key prefix, each with its user, and the access version: one
    statement, written once per process rather than compiled by the ORM on every request
    (authentication runs before every API request, and compiling the query cost more than
    its round trip). The instances are made the way the ORM makes them: values through the
    fields' database converters (SQLite's timestamps, for one), then ``Model.from_db``."""
    token_model, user_model = get_token_model(), get_user_model()
    sql, token_columns, user_columns = _token_statement(connection.vendor, token_model, user_model)
    # PostgreSQL: prepared once per connection (config/postgresql); its result's types are
    # fixed by the statement (see _token_statement), so a migration that retypes a column only
    # has the server plan it again.
    with prepared_cursor(connection) as cursor:
        cursor.execute(sql, [token_key])
        rows = cursor.fetchall()
    found = []
    converters = _token_converters(token_columns + user_columns)
    for row in rows:
        values = list(row[:-1])
        for i, column, convert in converters:
            values[i] = convert(values[i], column, connection)
        auth_token = token_model.from_db(connection.alias, [c.target.attname for c in token_columns],
                                         values[: len(token_columns)])
        auth_token.user = user_model.from_db(connection.alias, [c.target.attname for c in user_columns],
                                             values[len(token_columns): len(token_columns) + len(user_columns)])
        found.append((auth_token, int(row[-1])))
    return found


_converters_of: weakref.WeakKeyDictionary[Any, list[tuple[int, Col, Any]]] = weakref.WeakKeyDictionary()


def _token_converters(columns: list[Col]) -> list[tuple[int, Col, Any]]:
    """The database converters of the token statement's columns, in order (position, column,
    converter), as the ORM applies them; found once per connection, not per value."""
    wrapper = connections[connection.alias]
    found = _converters_of.get(wrapper)
    if found is None:
        found = _converters_of[wrapper] = [
            (i, column, convert) for i, column in enumerate(columns)
            for convert in [*wrapper.ops.get_db_converters(column), *column.target.get_db_converters(wrapper)]
        ]
    return found


_BARE_TYPE = re.compile(r"\s*\([^)]*\)")  # a type's modifier: varchar(150) -> varchar


@functools.cache
def _token_statement(vendor: str, token_model: Any, user_model: Any) -> tuple[str, list[Col], list[Col]]:
    """The statement (per database vendor, for its quoting) and its columns, token's then user's.

    On PostgreSQL every value is cast to its column's type without its modifier (``varchar``
    for ``varchar(150)``) and the version to ``numeric``: the server will not run a prepared
    statement whose result's types changed, and a migration that widens a column (or a new
    Django that does) must not stop every token on every connection that prepared it."""
    qn = connection.ops.quote_name
    token_columns = [Col("t", f) for f in token_model._meta.concrete_fields]
    user_columns = [Col("u", f) for f in user_model._meta.concrete_fields]
    columns = [f"{c.alias}.{qn(str(c.target.column))}" for c in token_columns + user_columns]
    version = f"({VERSION_SQL})"
    if vendor == "postgresql":
        columns = [f"CAST({sql_column} AS {_BARE_TYPE.sub('', str(c.target.db_type(connection)))})"
                   for sql_column, c in zip(columns, token_columns + user_columns, strict=True)]
        version = f"CAST({version} AS numeric)"
    token_table, user_table = qn(token_model._meta.db_table), qn(user_model._meta.db_table)
    user_fk, key = token_model._meta.get_field("user"), token_model._meta.get_field("token_key")
    sql = (f"SELECT {', '.join(columns)}, {version} FROM {token_table} t "  # noqa: S608 - names from the models
           f"JOIN {user_table} u ON u.{qn(str(user_fk.target_field.column))} = t.{qn(user_fk.column)} "
           f"WHERE t.{qn(key.column)} = %s")
    return sql, token_columns, user_columns


class CkanTokenAuthentication(ExpiringTokenAuthentication):
    """The same tokens, presented the ways CKAN clients present them (CKAN endpoints only):
    bare in ``X-CKAN-API-Key`` or in ``Authorization`` (ckanapi sends both), or as
    ``Authorization: Token …``. ``X-CKAN-API-Key`` wins, as in CKAN. An ``Authorization``
    header of another scheme (``Basic …``) is not a token and is left to other backends."""

    def authenticate(self, request: Any) -> Any:
        api_key = request.headers.get("X-CKAN-API-Key", "")
        if api_key:
            return self.authenticate_credentials(api_key.encode(HTTP_HEADER_ENCODING))
        words = get_authorization_header(request).split()
        if len(words) == 1:
            return self.authenticate_credentials(words[0])
        return super().authenticate(request)


class SessionUserBackend(ModelBackend):
    """Django's model backend, whose session lookup (``get_user``, once per signed-in page)
    reads the access version in the statement that loads the user, as token authentication
    does: the principal (``departments.selectors.principal_of``) is then taken from the
    per-process cache when no membership, department or city role changed since."""

    def get_user(self, user_id: Any) -> Any:
        model = get_user_model()
        user = (model._default_manager.filter(pk=user_id)
                .annotate(_version=RawSQL(VERSION_SQL, ()))  # noqa: S611 - a fixed statement without input
                .first())
        if user is None:
            return None
        setattr(user, VERSION_ATTR, user.__dict__.pop("_version"))
        return user if self.user_can_authenticate(user) else None
