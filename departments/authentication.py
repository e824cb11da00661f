from __future__ import annotations

import copy
import functools
import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
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
    context (``exchange/records/read_cache.py``): one round trip fewer per request. On
    PostgreSQL a token that authenticates is remembered, for the records list to take on
    trust (see below)."""

    def __init__(self, *, on_trust: bool = True) -> None:
        self._may_trust = on_trust
        self._on_trust = False

    def authenticate(self, request: Any) -> Any:
        # A view that checks a remembered token in the statement that reads for it (the
        # records list) takes one on trust; see "Tokens taken on trust" below.
        view = (getattr(request, "parser_context", None) or {}).get("view")
        self._on_trust = (self._may_trust and bool(getattr(view, "takes_remembered_tokens", False))
                          and connection.vendor == "postgresql")
        return super().authenticate(request)

    def authenticate_credentials(self, token: bytes) -> Any:
        text = _token_text(token)
        digest = hash_token(text)
        if getattr(self, "_on_trust", False):
            remembered = _taken_on_trust(digest)
            if remembered is not None:
                return remembered
        for auth_token, version in _tokens_with_version(text[: CONSTANTS.TOKEN_KEY_LENGTH]):
            if not compare_digest(digest, auth_token.digest):
                continue
            if auth_token.expiry is not None and auth_token.expiry < timezone.now():
                raise exceptions.AuthenticationFailed(
                    "This token has expired; sign in again to get a new one.", code="token_expired"
                )
            setattr(auth_token.user, VERSION_ATTR, version)
            user, auth = self.validate_user(auth_token)
            _remember(digest, auth_token, user, int(version))
            return user, auth
        _forget(digest)
        raise exceptions.AuthenticationFailed("Invalid token.", code="invalid_token")


def _token_text(token: bytes) -> str:
    try:
        text = token.decode("ascii")
    except UnicodeDecodeError as exc:
        raise exceptions.AuthenticationFailed("Malformed token.", code="malformed_token") from exc
    if not text.isalnum() or not CONSTANTS.TOKEN_KEY_LENGTH <= len(text) <= 128:
        raise exceptions.AuthenticationFailed("Malformed token.", code="malformed_token")
    return text


# --- Tokens taken on trust until the page's own statement checks them -----------------------
#
# On PostgreSQL, a token that authenticated in this process is remembered with its user and
# the access version read with it. A view that says ``takes_remembered_tokens`` (the records
# list, which alone runs the guard) takes such a token without a statement of its own: the
# statement that reads the page checks, before it reads a row or appends its audit event, that
# the version is still the one remembered and that the token still exists, has not expired,
# and belongs to the same active user with the same username and staff and superuser flags
# (``Unconfirmed.guard``). If anything changed, that statement reads and appends nothing, and
# the request is authenticated the usual way (a 401 for a revoked, expired or disowned token)
# and served afresh.

TOKENS_KEPT = 4096


@dataclass(frozen=True)
class _Known:
    expiry: datetime | None  # the token's
    user: Any  # a copy of its user when it last authenticated, never handed out itself
    version: int


_known: OrderedDict[str, _Known] = OrderedDict()
_known_lock = threading.Lock()


def _remember(digest: str, auth_token: Any, user: Any, version: int) -> None:
    if connection.vendor != "postgresql":
        return
    snapshot = copy.copy(user)
    for attr in list(snapshot.__dict__):
        if attr.startswith("_exchange_"):  # what requests cache on their user: never shared
            del snapshot.__dict__[attr]
    with _known_lock:
        _known[digest] = _Known(auth_token.expiry, snapshot, version)
        _known.move_to_end(digest)
        while len(_known) > TOKENS_KEPT:
            _known.popitem(last=False)


def _forget(digest: str) -> None:
    with _known_lock:
        _known.pop(digest, None)


@dataclass(frozen=True)
class Unconfirmed:
    """``request.auth`` of a remembered token, until the page's statement has checked it."""

    digest: str
    user_id: int
    username: str
    is_staff: bool
    is_superuser: bool
    version: int

    def guard(self) -> tuple[str, list[Any]]:
        """A query that returns one row if, and only if, nothing this request was taken on
        trust for has changed."""
        token_model, user_model = get_token_model(), get_user_model()
        qn = connection.ops.quote_name
        user_fk = token_model._meta.get_field("user")
        expiry = qn(token_model._meta.get_field("expiry").column)
        sql = (
            f"SELECT 1 WHERE ({VERSION_SQL}) = CAST(%s AS numeric) AND EXISTS ("  # noqa: S608 - names from the models
            f"SELECT 1 FROM {qn(token_model._meta.db_table)} t JOIN {qn(user_model._meta.db_table)} u "
            f"ON u.{qn(str(user_fk.target_field.column))} = t.{qn(user_fk.column)} "
            f"WHERE t.{qn(token_model._meta.get_field('digest').column)} = CAST(%s AS text) "
            f"AND u.{qn(str(user_fk.target_field.column))} = CAST(%s AS bigint) "
            f"AND (t.{expiry} IS NULL OR t.{expiry} > statement_timestamp()) AND u.{qn('is_active')} "
            f"AND u.{qn('is_staff')} = CAST(%s AS boolean) AND u.{qn('is_superuser')} = CAST(%s AS boolean) "
            f"AND u.{qn(user_model.USERNAME_FIELD)} = CAST(%s AS text))"
        )
        return sql, [self.version, self.digest, self.user_id, self.is_staff, self.is_superuser, self.username]


def _taken_on_trust(digest: str) -> tuple[Any, Unconfirmed] | None:
    """The remembered user of the token of ``digest`` (a copy of it, for this request alone)
    and the :class:`Unconfirmed` that the page's statement checks; None for a token not
    remembered or past its expiry."""
    with _known_lock:
        known = _known.get(digest)
    if known is None or (known.expiry is not None and known.expiry < timezone.now()):
        return None
    user = copy.copy(known.user)
    setattr(user, VERSION_ATTR, known.version)
    return user, Unconfirmed(digest, user.pk, user.get_username(), bool(user.is_staff), bool(user.is_superuser),
                             known.version)


def is_unconfirmed(auth: Any) -> bool:
    return isinstance(auth, Unconfirmed)


def confirm(request: Any) -> None:
    """Authenticate the request's token the usual way, in place of the remembered one: a 401
    (``AuthenticationFailed``) if it was revoked, has expired or its user may no longer sign
    in; else the request's user and token are the database's current ones."""
    auth = request.auth
    if not isinstance(auth, Unconfirmed):
        return
    _forget(auth.digest)
    authenticated = ExpiringTokenAuthentication(on_trust=False).authenticate(request)
    if authenticated is None:  # the header that carried the token cannot have gone
        raise exceptions.NotAuthenticated()
    request.user, request.auth = authenticated


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
