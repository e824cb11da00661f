"""Reading record values, always through an :class:`~exchange.access.policy.EffectiveView`.

:func:`build_select` turns a view into SQL: each visible field becomes an expression that
applies the granted form (clear, masked, pseudonymised) on the rows each grant covers, hidden
fields are simply absent, and the WHERE clause keeps only rows some grant covers. Filters and
ordering are applied to those *projected* expressions, and only to visible fields, so nothing
about a hidden or masked value can be learnt by probing with a filter. Records pages, exports,
previews, CKAN ``datastore_search`` and deliveries all use it; there is no other reader.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import dataclasses
import datetime as dt
import decimal
import hashlib
import hmac
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.core import signing
from django.db import connection
from psycopg.abc import Buffer
from psycopg.adapt import Loader

from catalog.models import Dataset, DatasetStatus, FieldType
from config.api.errors import ApplicationError, PermissionDeniedError
from config.postgresql.base import prepared_cursor
from exchange.access.models import AccessForm
from exchange.access.policy import EffectiveView, FieldAccess, RowFilter, effective_view
from exchange.audit.models import AuditOutcome
from exchange.audit.services import (
    AuditEntry,
    append_call,
    audit_record,
    current_request_context,
    event_values,
    reset_request_context,
    set_request_context,
)
from exchange.audit.writer import append_read
from exchange.records.store import (
    StoreTable,
    has_stored_mask,
    ident,
    is_postgres,
    mask_column,
    mask_sql,
    store_exists,
    store_table,
)

EXPORT_CHUNK_BYTES = 256 * 1024
# Grantees read published and deprecated datasets; the owner reads whatever is in the store.
READABLE_STATUSES = (DatasetStatus.PUBLISHED, DatasetStatus.DEPRECATED)

# --- Pseudonymisation ------------------------------------------------------------------------

PSEUDONYM_HEX_CHARS = 32
# The system columns a ``with_system`` select adds after the view's own (deliveries use them):
# the change number, the tombstone and the ingest run that last changed the record.
SELECT_SYSTEM = ("_seq", "_deleted", "_last_run")


def _hmac_key() -> bytes:
    # HMAC hashes a key longer than the block (64 bytes) first; doing it here once lets the
    # SQL version below use the same key.
    key = settings.PSEUDONYM_KEY.encode()
    return hashlib.sha256(key).digest() if len(key) > 64 else key


def _hmac_pads() -> tuple[bytes, bytes]:
    key = _hmac_key().ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def pseudonymise(value: Any) -> str | None:
    """HMAC-SHA256 of the value's text form under the exchange's key (first 128 bits, hex).
    The SQL versions below compute exactly the same, so a pseudonym is the same whichever
    path produced it."""
    if value is None:
        return None
    text = value if isinstance(value, str) else _text_form(value)
    digest = hmac.new(_hmac_key(), text.encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:PSEUDONYM_HEX_CHARS]


def _text_form(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def mask(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else _text_form(value)
    return "*" * len(text) if len(text) <= 4 else "*" * (len(text) - 4) + text[-4:]


def register_sqlite_functions(sender: Any, connection: Any, **kwargs: Any) -> None:
    """SQLite has no SHA-256: give each new connection the same keyed hash as a function."""
    if connection.vendor == "sqlite":
        connection.connection.create_function("exchange_pseudonym", 1, pseudonymise, deterministic=True)


# --- SQL pieces -------------------------------------------------------------------------------

# Database type of a visible expression, to cast cursor and filter parameters.
def _sql_type(field_type: str) -> str:
    if not is_postgres():
        return ""
    return {
        FieldType.TEXT: "text", FieldType.INTEGER: "bigint", FieldType.DECIMAL: "numeric",
        FieldType.BOOLEAN: "boolean", FieldType.DATE: "date", FieldType.TIMESTAMP: "timestamptz",
        FieldType.GEOPOINT: "text", FieldType.JSON: "jsonb",
    }[FieldType(field_type)]


def _as_text(col: str, field_type: str) -> str:
    if is_postgres():
        return f"CAST({col} AS text)"
    if field_type == FieldType.BOOLEAN:
        return f"(CASE {col} WHEN 1 THEN 'true' WHEN 0 THEN 'false' END)"
    return f"CAST({col} AS TEXT)"


def _masked(col: str, field_type: str) -> str:
    t = _as_text(col, field_type)
    if is_postgres():
        return mask_sql(t)
    return (f"(CASE WHEN length({t}) <= 4 THEN replace(hex(zeroblob(length({t}))), '00', '*') "
            f"ELSE replace(hex(zeroblob(length({t}) - 4)), '00', '*') || substr({t}, -4) END)")


def _pseudonymised(col: str, field_type: str, params: list[Any]) -> str:
    t = _as_text(col, field_type)
    if is_postgres():
        ipad, opad = _hmac_pads()
        params.extend([opad, ipad])
        # HMAC-SHA256 = H(K^opad || H(K^ipad || m)), with the built-in sha256(): no extension.
        return (f"left(encode(sha256(%s::bytea || sha256(%s::bytea || convert_to({t}, 'UTF8'))), 'hex'), "
                f"{PSEUDONYM_HEX_CHARS})")
    return f"exchange_pseudonym({t})"


OPERATORS: dict[str, str] = {"eq": "=", "ne": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
TEXT_ONLY_OPERATORS = {"contains"}
ALL_OPERATORS = {*OPERATORS, "in", "contains", "is_null"}


def convert_value(value: Any, field_type: str) -> Any:
    """A filter value converted to the field's Python type, or ApplicationError."""
    try:
        if field_type == FieldType.INTEGER:
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if field_type == FieldType.DECIMAL:
            return decimal.Decimal(str(value))
        if field_type == FieldType.BOOLEAN:
            if isinstance(value, bool):
                return value
            lowered = str(value).lower()
            if lowered in {"true", "1", "yes"}:
                return True
            if lowered in {"false", "0", "no"}:
                return False
            raise ValueError
        if field_type == FieldType.DATE:
            return dt.date.fromisoformat(str(value))
        if field_type == FieldType.TIMESTAMP:
            parsed = dt.datetime.fromisoformat(str(value))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
        return str(value)
    except (ValueError, ArithmeticError) as exc:
        raise ApplicationError(f"{value!r} is not a valid {field_type} value.", code="invalid_value") from exc


def _param_for_db(value: Any, field_type: str) -> Any:
    if is_postgres():
        return value
    # SQLite stores dates, timestamps and booleans in their text/integer forms.
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, dt.date | decimal.Decimal):
        return str(value) if isinstance(value, dt.date) else value
    return value


def _condition(expr: str, op: str, value: Any, field_type: str, params: list[Any]) -> str:
    """One structured condition on an SQL expression; ``field_type`` is the type of ``expr``."""
    cast = _sql_type(field_type)
    placeholder = f"CAST(%s AS {cast})" if cast else "%s"
    if op == "is_null":
        return f"({expr} IS NULL)" if convert_value(value, FieldType.BOOLEAN) else f"({expr} IS NOT NULL)"
    if op == "contains":
        params.append(str(value))
        return f"(strpos({expr}, %s) > 0)" if is_postgres() else f"(instr({expr}, %s) > 0)"
    if op == "in":
        values = value if isinstance(value, list) else str(value).split(",")
        if not values:
            return "(1 = 0)"
        params.extend(_param_for_db(convert_value(v, field_type), field_type) for v in values)
        return f"({expr} IN ({', '.join([placeholder] * len(values))}))"
    params.append(_param_for_db(convert_value(value, field_type), field_type))
    return f"({expr} {OPERATORS[op]} {placeholder})"


def row_filter_sql(row_filter: RowFilter, view: EffectiveView, params: list[Any]) -> str:
    """A grant's row filter (conditions ANDed) on the *stored* values. The steward chose it,
    so it may use fields the grantee does not see; it only ever removes rows."""
    if not row_filter:
        return "(1 = 1)"
    parts = []
    for cond in row_filter:
        schema_field = view.schema_fields.get(cond["field"])
        if schema_field is None:
            # The field left the schema: the condition can no longer be evaluated, so the
            # grant covers no row rather than every row.
            return "(1 = 0)"
        parts.append(_condition(ident(cond["field"]), cond["op"], cond.get("value"), schema_field.type, params))
    return "(" + " AND ".join(parts) + ")"


@dataclass(frozen=True)
class Column:
    name: str
    field_type: str  # the type of the *projected* value (text when masked or pseudonymised)
    form: str
    sql: str
    params: tuple[Any, ...]


def project(access: FieldAccess, view: EffectiveView) -> Column:
    """The SQL expression that yields what this principal may see of one field: the most
    revealing granted form on the rows its grant covers, then the next, and NULL elsewhere."""
    by_form: dict[str, list[RowFilter]] = {}
    for rule in access.rules:
        by_form.setdefault(rule.form, []).append(rule.row_filter)
    forms = list(access.effective_forms)
    mixed = len(forms) > 1
    col = ident(access.name)
    params: list[Any] = []

    def transform(form: str) -> str:
        if form == AccessForm.CLEAR:
            return _as_text(col, access.type) if mixed else col
        if form == AccessForm.MASKED:
            schema_field = view.schema_fields.get(access.name)
            if schema_field is not None and has_stored_mask(schema_field.type, schema_field.sensitivity):
                return ident(mask_column(access.name))  # computed when the row was written
            return _masked(col, access.type)
        return _pseudonymised(col, access.type, params)

    parts: list[str] = []
    for form in forms:
        if any(not f for f in by_form[form]):
            parts.append(f"ELSE {transform(form)}")
            break
        # Placeholders are appended left to right: the condition's, then the value's.
        cond = " OR ".join(row_filter_sql(f, view, params) for f in by_form[form])
        parts.append(f"WHEN {cond} THEN {transform(form)}")
    if len(parts) == 1 and parts[0].startswith("ELSE "):
        sql = parts[0][len("ELSE "):]
    else:
        if not parts[-1].startswith("ELSE "):
            parts.append("ELSE NULL")
        sql = "(CASE " + " ".join(parts) + " END)"
    return Column(access.name, access.output_type, forms[0], sql, tuple(params))


def projections(view: EffectiveView) -> dict[str, Column]:
    """:func:`project` of every field of the view, worked out once per view (and pseudonym
    key): a cached view serves many requests, and none of this depends on the moment."""
    key = ("records.projections", settings.PSEUDONYM_KEY)
    columns = view.derived.get(key)
    if columns is None:
        columns = view.derived[key] = {name: project(view.fields[name], view) for name in view.fields}
    return columns


# --- Queries ---------------------------------------------------------------------------------

RESERVED_PARAMS = {"fields", "order", "cursor", "page_size", "format", "q"}

OPERATORS_BY_TYPE: dict[str, set[str]] = {
    FieldType.TEXT: {"eq", "ne", "lt", "lte", "gt", "gte", "in", "contains", "is_null"},
    FieldType.INTEGER: {"eq", "ne", "lt", "lte", "gt", "gte", "in", "is_null"},
    FieldType.DECIMAL: {"eq", "ne", "lt", "lte", "gt", "gte", "in", "is_null"},
    FieldType.DATE: {"eq", "ne", "lt", "lte", "gt", "gte", "in", "is_null"},
    FieldType.TIMESTAMP: {"eq", "ne", "lt", "lte", "gt", "gte", "is_null"},
    FieldType.BOOLEAN: {"eq", "ne", "is_null"},
    FieldType.GEOPOINT: {"eq", "ne", "in", "is_null"},
    FieldType.JSON: {"is_null"},
}


def operators_for(field_type: str) -> set[str]:
    return OPERATORS_BY_TYPE[FieldType(field_type)]


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class RecordQuery:
    fields: tuple[str, ...]  # visible fields to return, in schema order unless asked otherwise
    conditions: tuple[Condition, ...] = ()
    order: tuple[tuple[str, bool], ...] = ()  # (field, descending)
    search: str = ""
    cursor: str = ""
    page_size: int = 100

    def describe(self) -> dict[str, Any]:
        """What an audit event records of the query (no values of the page itself)."""
        return {
            "conditions": [{"field": c.field, "op": c.op, "value": c.value} for c in self.conditions],
            "order": [("-" if d else "") + f for f, d in self.order],
            "q": self.search,
        }


def _not_visible(names: Sequence[str], param: str) -> ApplicationError:
    # The same answer for a field that does not exist and one that is hidden: a caller learns
    # nothing about fields outside their view from the error either.
    return ApplicationError(
        "These fields are not in your view of this dataset: " + ", ".join(sorted(set(names))) + ".",
        fields={param: [f"{n}: not in your view of this dataset." for n in sorted(set(names))]},
        code="field_not_visible",
    )


def parse_query(view: EffectiveView, params: dict[str, Any], *, default_page_size: int | None = None,
                max_page_size: int | None = None) -> RecordQuery:
    """Validate record query parameters against the view. Filters look like ``district=North``
    or ``fee_eur__gte=100`` (operators: eq, ne, lt, lte, gt, gte, in (comma-separated),
    contains, is_null)."""
    visible = view.fields

    requested = [f for f in str(params.get("fields", "") or "").split(",") if f]
    if requested:
        hidden = [f for f in requested if f not in visible]
        if hidden:
            raise _not_visible(hidden, "fields")
        fields = tuple(dict.fromkeys(requested))
    else:
        fields = tuple(visible)

    conditions = []
    for key, value in params.items():
        if key in RESERVED_PARAMS:
            continue
        name, _, op = key.partition("__")
        op = op or "eq"
        if name not in visible:
            raise _not_visible([name], key)
        allowed = operators_for(visible[name].output_type)
        if op not in allowed:
            raise ApplicationError(
                f"Operator {op!r} does not apply to field {name!r}.",
                fields={key: [f"Use one of: {', '.join(sorted(allowed))}."]}, code="invalid_operator",
            )
        if op not in {"in", "contains", "is_null"}:
            convert_value(value, visible[name].output_type)  # 400 now rather than at query time
        conditions.append(Condition(name, op, value))

    order = []
    for item in [o for o in str(params.get("order", "") or "").split(",") if o]:
        name = item.lstrip("-")
        if name not in visible:
            raise _not_visible([name], "order")
        order.append((name, item.startswith("-")))

    max_size = max_page_size or settings.RECORDS_MAX_PAGE_SIZE
    try:
        page_size = int(params.get("page_size") or default_page_size or settings.RECORDS_PAGE_SIZE)
    except ValueError as exc:
        raise ApplicationError("page_size must be a number.", fields={"page_size": ["Not a number."]}) from exc
    if not 1 <= page_size <= max_size:
        raise ApplicationError(f"page_size must be between 1 and {max_size}.",
                               fields={"page_size": [f"Between 1 and {max_size}."]})
    return RecordQuery(fields=fields, conditions=tuple(conditions), order=tuple(order),
                       search=str(params.get("q", "") or "")[:200], cursor=str(params.get("cursor", "") or ""),
                       page_size=page_size)


@dataclass(frozen=True)
class OrderItem:
    alias: str
    sql: str
    params: tuple[Any, ...]
    descending: bool
    field_type: str
    nullable: bool


@dataclass(frozen=True)
class Select:
    sql: str
    params: list[Any]
    columns: tuple[Column, ...]
    order: tuple[OrderItem, ...]
    with_system: bool
    plan: _Plan = field(compare=False, repr=False)  # what it was built from, with what is derived from that


@dataclass(frozen=True)
class _Plan:
    """A :func:`build_select` but for the cursor's condition: the SELECT up to where that goes,
    its parameters, and what follows it (``ORDER BY`` … ``LIMIT`` …)."""

    sql: str
    params: tuple[Any, ...]
    columns: tuple[Column, ...]
    order: tuple[OrderItem, ...]
    tail: str
    with_system: bool
    # What the readers built on it work out from it alone (fetch_page_json's wrapping).
    derived: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


# Plans of pages remembered per view, at most this many (then forgotten all at once): a view
# from the read cache answers many pages of a few queries, which differ only in their cursor.
# Few, since a plan holds its SQL (some kilobytes) and the read cache holds up to
# read_cache.MAX_ENTRIES views.
PLANS_PER_VIEW = 8


def _order_items(view: EffectiveView, table: StoreTable, query: RecordQuery,
                 columns: dict[str, Column]) -> list[OrderItem]:
    """The requested order plus a unique tiebreaker: the key when the principal sees every key
    field in clear on every row, else the internal change number ``_seq`` (unique per row), so
    a cursor never carries a value the principal may not see."""
    items = [
        OrderItem(f"_o{i}", columns[name].sql, columns[name].params, desc, columns[name].field_type, True)
        for i, (name, desc) in enumerate(query.order)
    ]
    keys_clear = all(
        k in view.fields and [(r.form, r.row_filter) for r in view.fields[k].rules][:1] == [(AccessForm.CLEAR, ())]
        for k in table.key_columns
    )
    tiebreak = [(k, table.column(k).type) for k in table.key_columns] if keys_clear else [("_seq", FieldType.INTEGER)]
    for name, field_type in tiebreak:
        items.append(OrderItem(f"_o{len(items)}", ident(name), (), False, field_type, False))
    return items


def build_select(
    view: EffectiveView,
    table: StoreTable,
    query: RecordQuery | None = None,
    *,
    since_seq: int | None = None,
    include_deleted: bool = False,
    with_system: bool = False,
    paginate: bool = True,
    ordered: bool = True,
) -> Select:
    """The SELECT that returns exactly this view of the table (see the module docstring).

    With ``paginate``, it returns one page after ``query.cursor`` plus one row (to tell whether
    there is a next page) and the order columns ``_o0…`` after the selected ones; exports and
    deliveries pass ``paginate=False`` (and ``ordered=False`` when order does not matter).

    A page's plan (everything but the cursor's condition) is remembered with the view, for
    the next page of the same query: it depends on nothing but the view, the table and the
    query, and a view lives no longer than the access it describes.
    """
    query = query or RecordQuery(fields=tuple(view.fields))

    def build() -> _Plan:
        return _plan(view, table, query, since_seq=since_seq, include_deleted=include_deleted,
                     with_system=with_system, paginate=paginate, ordered=ordered)

    if paginate and since_seq is None:
        key = (table, dataclasses.replace(query, cursor=""), include_deleted, with_system, ordered,
               settings.PSEUDONYM_KEY)
        plan = view.remembered("records.plans", key, PLANS_PER_VIEW, build)
    else:
        plan = build()
    sql = plan.sql
    params = list(plan.params)
    if paginate and query.cursor:
        sql += " WHERE " + _after_cursor(plan.order, decode_cursor(query.cursor, view, len(plan.order)), params)
    return Select(sql + plan.tail, params, plan.columns, plan.order, with_system, plan)


def _plan(view: EffectiveView, table: StoreTable, query: RecordQuery, *, since_seq: int | None,
          include_deleted: bool, with_system: bool, paginate: bool, ordered: bool) -> _Plan:
    columns = projections(view)
    selected = tuple(columns[name] for name in query.fields)
    order = _order_items(view, table, query, columns) if ordered or paginate else []
    params: list[Any] = []

    inner = []
    for column in selected:
        inner.append(f"{column.sql} AS {ident(column.name)}")
        params.extend(column.params)
    for item in order:
        inner.append(f"{item.sql} AS {ident(item.alias)}")
        params.extend(item.params)
    if with_system:
        inner += [f"{ident(c)} AS {ident(c)}" for c in SELECT_SYSTEM]

    where: list[str] = []
    if not include_deleted:
        where.append(f"{ident('_deleted')} = {'false' if is_postgres() else '0'}")
    if since_seq is not None:
        where.append(f"{ident('_seq')} > %s")
        params.append(since_seq)
    if not view.all_rows:
        scopes = [row_filter_sql(scope, view, params) for scope in view.row_scopes]
        where.append("(" + " OR ".join(scopes) + ")" if scopes else "(1 = 0)")
    for cond in query.conditions:
        column = columns[cond.field]
        params.extend(column.params)
        where.append(_condition(column.sql, cond.op, cond.value, column.field_type, params))
    if query.search:
        text_columns = [columns[n] for n in query.fields if columns[n].field_type == FieldType.TEXT]
        ors = []
        for column in text_columns:
            params.extend(column.params)
            params.append(query.search.lower())
            ors.append(f"({'strpos' if is_postgres() else 'instr'}(lower({column.sql}), %s) > 0)")
        where.append("(" + " OR ".join(ors) + ")" if ors else "(1 = 0)")

    sql = f"SELECT {', '.join(inner)} FROM {table.qualified}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    outer_names = [ident(c.name) for c in selected] + [ident(i.alias) for i in order if paginate]
    if with_system:
        outer_names += [ident(c) for c in SELECT_SYSTEM]
    sql = f"SELECT {', '.join(outer_names)} FROM ({sql}) AS {ident('_v')}"
    tail = ""
    if order:
        tail += " ORDER BY " + _order_by(order)
    if paginate:
        tail += f" LIMIT {int(query.page_size) + 1}"
    return _Plan(sql, tuple(params), selected, tuple(order), tail, with_system)


def _order_by(order: Sequence[OrderItem]) -> str:
    parts = []
    for item in order:
        if item.nullable:  # nulls last in both directions, to keep the cursor simple
            parts.append(f"(CASE WHEN {ident(item.alias)} IS NULL THEN 1 ELSE 0 END)")
        parts.append(f"{ident(item.alias)} {'DESC' if item.descending else 'ASC'}")
    return ", ".join(parts)


def _after_cursor(order: Sequence[OrderItem], values: list[Any], params: list[Any]) -> str:
    """Keyset condition "the row comes after ``values`` in ``order``", nulls last."""
    disjuncts = []
    for i, item in enumerate(order):
        conj = []
        for prev, value in zip(order[:i], values[:i], strict=True):
            conj.append(_equal(prev, value, params))
        after = _greater(item, values[i], params)
        if after is None:
            continue
        conj.append(after)
        disjuncts.append("(" + " AND ".join(conj) + ")")
    return "(" + " OR ".join(disjuncts) + ")" if disjuncts else "(1 = 0)"


def _placeholder(item: OrderItem) -> str:
    cast = _sql_type(item.field_type)
    return f"CAST(%s AS {cast})" if cast else "%s"


def _equal(item: OrderItem, value: Any, params: list[Any]) -> str:
    if value is None:
        return f"({ident(item.alias)} IS NULL)"
    params.append(_param_for_db(convert_value(value, item.field_type), item.field_type))
    return f"({ident(item.alias)} = {_placeholder(item)})"


def _greater(item: OrderItem, value: Any, params: list[Any]) -> str | None:
    col = ident(item.alias)
    if value is None:
        return None  # nulls come last: nothing non-null comes after a null
    params.append(_param_for_db(convert_value(value, item.field_type), item.field_type))
    op = "<" if item.descending else ">"
    later = f"{col} {op} {_placeholder(item)}"
    return f"({later} OR {col} IS NULL)" if item.nullable else f"({later})"


# --- Cursors ---------------------------------------------------------------------------------

def _cursor_salt(view: EffectiveView) -> str:
    return f"exchange.records.cursor:{view.dataset_id}:{view.principal}"


def encode_cursor(view: EffectiveView, values: Sequence[Any]) -> str:
    payload = json.dumps([_jsonable(v) for v in values], separators=(",", ":"))
    signed = signing.Signer(salt=_cursor_salt(view)).sign(payload)
    return base64.urlsafe_b64encode(signed.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, view: EffectiveView, expected: int) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        signed = base64.urlsafe_b64decode(padded.encode()).decode()
        values = json.loads(signing.Signer(salt=_cursor_salt(view)).unsign(signed))
    except (ValueError, signing.BadSignature, UnicodeDecodeError) as exc:
        raise ApplicationError("The cursor is not valid for this query.", fields={"cursor": ["Invalid cursor."]},
                               code="invalid_cursor") from exc
    if not isinstance(values, list) or len(values) != expected:
        raise ApplicationError("The cursor is not valid for this query.", fields={"cursor": ["Invalid cursor."]},
                               code="invalid_cursor")
    return values


# --- Running queries -------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def _python_value(value: Any, field_type: str) -> Any:
    """Normalise what the database returned to the field's type (SQLite keeps booleans,
    decimals and JSON in other forms; PostgreSQL returns them typed already)."""
    if value is None:
        return None
    if field_type == FieldType.BOOLEAN and not isinstance(value, bool):
        return bool(value)
    if field_type == FieldType.JSON and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if field_type == FieldType.DECIMAL and not isinstance(value, decimal.Decimal):
        return decimal.Decimal(str(value))
    return value


_NEEDS_CONVERSION_ON_SQLITE = {FieldType.BOOLEAN, FieldType.JSON, FieldType.DECIMAL}


def _converters(columns: Sequence[Column]) -> list[tuple[int, str]]:
    """(position, type) of the columns whose values need normalising on this database."""
    if is_postgres():
        return []
    return [(i, c.field_type) for i, c in enumerate(columns) if c.field_type in _NEEDS_CONVERSION_ON_SQLITE]


def _normalise(rows: list[tuple[Any, ...]], columns: Sequence[Column]) -> list[list[Any]]:
    converters = _converters(columns)
    out = [list(r) for r in rows]
    if converters:
        for row in out:
            for i, field_type in converters:
                row[i] = _python_value(row[i], field_type)
    return out


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next_cursor: str | None
    # PostgreSQL, when asked for JSON: the rows as one JSON array (UTF-8), written by the
    # database (``rows`` is then empty) and the number of rows in it.
    json: bytes | None = None
    json_rows: int = 0

    @property
    def row_count(self) -> int:
        return self.json_rows if self.json is not None else len(self.rows)


def fetch_page(view: EffectiveView, table: StoreTable, query: RecordQuery) -> Page:
    select = build_select(view, table, query)
    width = len(select.columns)
    with connection.cursor() as cursor:
        cursor.execute(select.sql, select.params)
        raw = cursor.fetchall()
    has_next = len(raw) > query.page_size
    raw = raw[: query.page_size]
    names = [c.name for c in select.columns]
    # Values stay Python objects (Decimal, date, datetime); the API's JSON renderer and the
    # templates format them.
    rows = [dict(zip(names, r[:width], strict=True)) for r in _normalise(raw, select.columns)]
    next_cursor = encode_cursor(view, list(raw[-1][width:])) if has_next and raw else None
    return Page(rows, next_cursor)


def _iso_timestamp(expr: str, utc_suffix: str) -> str:
    """A timestamptz as Python's ``isoformat()`` of it in UTC writes it (microseconds only when
    there are any), with ``utc_suffix`` for the offset: one ``to_char`` whose format the
    fraction decides (PostgreSQL's own JSON would trim the fraction's trailing zeros)."""
    utc = f"({expr} AT TIME ZONE 'UTC')"
    whole, fraction = (f"'YYYY-MM-DD\"T\"HH24:MI:SS{part}\"{utc_suffix}\"'" for part in ("", ".US"))
    return f"to_char({utc}, CASE WHEN date_trunc('second', {utc}) = {utc} THEN {whole} ELSE {fraction} END)"


def _json_value(expr: str, field_type: str) -> str:
    """A projected value as the API's JSON renderer would write it (DRF's encoder: numbers for
    decimals, ISO 8601 with ``Z`` for UTC timestamps)."""
    if field_type == FieldType.TIMESTAMP:
        return _iso_timestamp(expr, "Z")
    return expr


def _ndjson_value(expr: str, field_type: str) -> str:
    """A projected value as the NDJSON export writes it (decimals as text, timestamps as their
    ``isoformat()``)."""
    if field_type == FieldType.TIMESTAMP:
        return _iso_timestamp(expr, "+00:00")
    if field_type == FieldType.DECIMAL:
        return f"CAST({expr} AS text)"
    return expr


def _cursor_value(expr: str, field_type: str) -> str:
    """An order value as :func:`encode_cursor` keeps it (decimals as their text)."""
    return f"CAST({expr} AS text)" if field_type == FieldType.DECIMAL else expr


# Between two rows of a page's JSON as the database sends it. No JSON PostgreSQL writes can hold
# it: ``row_to_json`` escapes every control character inside strings, ``json`` values are
# checked on the way in (a raw control character is refused there) and ``jsonb`` is written
# anew. It is checked anyway: the separators must be one fewer than the rows.
_ROW_SEPARATOR = b"\x01"


class _TextAsBytes(Loader):
    """The page's text columns as the bytes that arrived: the JSON goes out as UTF-8 as it
    came, never decoded into a string and encoded again."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


def _json_wrap(select: Select, size: int) -> tuple[str, str]:
    """What :func:`fetch_page_json` writes before and after a page's SELECT."""
    values = ", ".join(f"{_json_value(f'_p.{ident(c.name)}', c.field_type)} AS {ident(c.name)}"
                       for c in select.columns)
    keys = ", ".join(_cursor_value(f"(array_agg(_p.{ident(i.alias)}))[{size}]", i.field_type)
                     for i in select.order)
    return (f"SELECT string_agg(row_to_json(_r)::text, E'\\x01') AS _j, count(*) AS _n, "
            f"json_build_array({keys})::text AS _k FROM (",
            f") AS _p CROSS JOIN LATERAL (SELECT {values}) AS _r")


class GuardFailed(Exception):
    """The page's statement read nothing: its guard found that what the request was taken on
    trust for has changed (see ``departments.authentication.Unconfirmed``)."""


def fetch_page_json(view: EffectiveView, table: StoreTable, query: RecordQuery,
                    audit: dict[str, Any] | None = None,
                    guard: tuple[str, list[Any]] | None = None) -> Page:
    """PostgreSQL: the page as JSON text written by the database from the projected SELECT
    (the same :func:`build_select` as :func:`fetch_page`, so the same values, rows and order),
    passed on to the client without being parsed. One statement returns the rows' objects
    joined in the page's order, how many rows there were (one more than a page: there is a
    next page) and the order values of the page's last row, for the cursor.

    The objects come joined by a separator rather than as one ``json_agg`` array so that the
    row past the page can be cut off here: numbering the rows to leave it out of the array
    cost the statement a window and about a fifth of its time.

    With ``audit`` (the arguments of :func:`exchange.audit.services.audit_record` but the row
    count), the same statement appends the record of its read, with the number of rows the
    page holds (:func:`exchange.audit.services.append_call`).

    With ``guard`` (a query and its parameters, and ``audit``), the statement reads the page
    and appends its record only if the guard returns a row; else it returns nothing, and
    :class:`GuardFailed` is raised."""
    if guard is not None and audit is None:
        raise ValueError("a guarded page appends the record of its read")
    select = build_select(view, table, query)
    size = int(query.page_size)
    wrap = select.plan.derived.get(("json", size))
    if wrap is None:
        wrap = select.plan.derived[("json", size)] = _json_wrap(select, size)
    head, tail = wrap
    # Field names start with a letter, so the aliases _p, _r and the order's _o<n> never meet
    # one. The aggregates take the rows in the order the subquery gives them: a plain
    # aggregate straight over an ordered, limited subquery (the lateral SELECT only computes
    # expressions, and is folded into the scan) reads its input in that order, as the
    # reference server's json_agg does. Naming the order in each aggregate again made PostgreSQL
    # sort the page's JSON once more, about a tenth of the statement. tests/exchange/records/
    # test_json.py walks pages under orders, filters, searches and row filters either way.
    sql = head + select.sql + tail
    params = select.params
    if audit is not None:
        call, call_params = append_call(event_values(AuditEntry(**audit)), f"least(_page._n, {size})")
        sql = f"SELECT _page._j, _page._n, _page._k, _a.event_id FROM ({sql}) AS _page CROSS JOIN LATERAL {call} AS _a"
        params += call_params
    if guard is not None:
        # The guard's row set comes first and the page and its append laterally after it: with
        # no row there, PostgreSQL runs neither (a one-time filter above them; tested).
        guard_sql, guard_params = guard
        sql = (f"SELECT _page._j, _page._n, _page._k, _page.event_id FROM ({guard_sql}) AS _g "
               f"CROSS JOIN LATERAL ({sql}) AS _page")
        params = [*guard_params, *params]
    # Bound on the server and prepared (config/postgresql): the text is the same for every page
    # of one view and query, the cursor's values being parameters.
    with prepared_cursor(connection) as cursor:
        cursor.cursor.adapters.register_loader("text", _TextAsBytes)  # this cursor's only
        cursor.execute(sql, params)
        answer = cursor.fetchone()
    if answer is None:
        raise GuardFailed()
    joined, count, last_keys = answer[:3]
    rows = min(count, size)
    if not rows:
        return Page([], None, json=b"[]", json_rows=0)
    if count > size:
        joined = joined[:joined.rindex(_ROW_SEPARATOR)]
    if joined.count(_ROW_SEPARATOR) != rows - 1:
        raise RuntimeError("A records page's JSON held a row separator inside a row.")
    next_cursor = encode_cursor(view, json.loads(last_keys)) if count > size else None
    return Page([], next_cursor, json=b"[" + joined.replace(_ROW_SEPARATOR, b",") + b"]", json_rows=rows)


def iterate_rows(view: EffectiveView, table: StoreTable, query: RecordQuery, *,
                 batch_size: int = 5000) -> Iterator[tuple[Any, ...]]:
    """Every row of the view in batches through a server-side cursor (PostgreSQL) so memory
    stays flat whatever the size. Values are normalised to the fields' types."""
    select = build_select(view, table, query, paginate=False, ordered=bool(query.order))
    converters = _converters(select.columns)
    with connection.chunked_cursor() as cursor:
        cursor.execute(select.sql, select.params)
        while True:
            batch = cursor.fetchmany(batch_size)
            if not batch:
                return
            if not converters:
                yield from batch
                continue
            for row in _normalise(batch, select.columns):
                yield tuple(row)


# --- Entry points for people (API, UI, CKAN): view, validate, read, audit -------------------

def view_table(view: EffectiveView, dataset: Dataset) -> StoreTable:
    """The dataset's store table as the view's schema describes it, worked out once per view."""
    table = view.derived.get("records.table")
    if table is None or table.dataset_id != dataset.pk:
        table = view.derived["records.table"] = store_table(dataset, fields=list(view.schema_fields.values()))
    return table


def is_readable(view: EffectiveView, dataset: Dataset) -> bool:
    """Whether the view shows a field of the dataset in its current status (else a 403)."""
    return view.can_read and (view.is_owner or dataset.status in READABLE_STATUSES)


def readable_view(*, user: User | AnonymousUser, dataset: Dataset, action: str,
                  view: EffectiveView | None = None) -> EffectiveView:
    """The user's effective view (``view`` when the caller has it already, from
    ``exchange.records.read_cache``), or a 403 (audited) when it shows no field at all. The caller has
    already checked that the user may know the dataset (404 otherwise)."""
    view = view if view is not None else effective_view(dataset=dataset, user=user)
    if not is_readable(view, dataset):
        audit_record(actor=user, action=action, outcome=AuditOutcome.DENIED, obj=dataset,
                     dataset_id=dataset.pk, department_id=dataset.department_id,
                     details={"reason": "no active grant"})
        raise PermissionDeniedError(
            "You have no active grant on this dataset. Request access from its catalogue page.",
            code="no_grant",
        )
    return view


def _read_event(*, user: User | AnonymousUser, action: str, dataset: Dataset, view: EffectiveView,
                query: RecordQuery, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The audit event of a read, but its row count."""
    return {
        "actor": user, "action": action, "obj": dataset, "dataset_id": dataset.pk,
        "department_id": dataset.department_id, "fields": list(query.fields), "filters": query.describe(),
        "purpose": "; ".join(sorted({g.purpose for g in view.grants})) if not view.is_owner else "owner",
        "details": {"grants": [g.id for g in view.grants], "owner": view.is_owner,
                    "forms": {f: view.fields[f].form for f in query.fields}, **(details or {})},
    }


def _audit_read(*, user: User | AnonymousUser, action: str, dataset: Dataset, view: EffectiveView,
                query: RecordQuery, row_count: int | None, details: dict[str, Any] | None = None) -> None:
    append_read(**_read_event(user=user, action=action, dataset=dataset, view=view, query=query, details=details),
                row_count=row_count)


def _parse_or_audit(*, user: User | AnonymousUser, dataset: Dataset, view: EffectiveView, action: str,
                    params: dict[str, Any], default_page_size: int | None = None) -> RecordQuery:
    """Parse the query; a refused one (a hidden field, a bad operator) is recorded as a denied
    read, with the parameter names only, so probing shows up in the audit trail."""
    try:
        return parse_query(view, params, default_page_size=default_page_size)
    except ApplicationError as exc:
        audit_record(actor=user, action=action, outcome=AuditOutcome.DENIED, obj=dataset, dataset_id=dataset.pk,
                     department_id=dataset.department_id,
                     details={"reason": exc.code, "parameters": sorted(params)})
        raise


def read_page(*, user: User | AnonymousUser, dataset: Dataset, params: dict[str, Any],
              action: str = "records.read", page_size: int | None = None, view: EffectiveView | None = None,
              exists: bool | None = None, as_json: bool = False,
              guard: tuple[str, list[Any]] | None = None) -> tuple[EffectiveView, RecordQuery, Page]:
    """One page of the user's view. ``view`` and ``exists`` (whether the store table exists)
    may come from ``exchange.records.read_cache``; they are computed here otherwise. With
    ``as_json`` on PostgreSQL the page comes as JSON text (:func:`fetch_page_json`), read only
    if ``guard`` returns a row when one is given (:class:`GuardFailed` otherwise)."""
    if guard is not None and not (as_json and is_postgres() and exists):
        # The caller says the store table exists (from its cached context): no statement
        # may come before the guarded one.
        raise ValueError("only a JSON page read from the store on PostgreSQL can be guarded")
    view = readable_view(user=user, dataset=dataset, action=action, view=view)
    query = _parse_or_audit(user=user, dataset=dataset, view=view, action=action, params=params,
                            default_page_size=page_size)
    table = view_table(view, dataset)
    if not (store_exists(dataset) if exists is None else exists):
        page = Page([], None)
    elif as_json and is_postgres():
        # The page's statement appends the record of its read itself: one round trip, and
        # nothing to wait for once the page is in hand.
        event = _read_event(user=user, action=action, dataset=dataset, view=view, query=query)
        return view, query, fetch_page_json(view, table, query, audit=event, guard=guard)
    else:
        page = fetch_page(view, table, query)
    _audit_read(user=user, action=action, dataset=dataset, view=view, query=query, row_count=page.row_count)
    return view, query, page


def export_rows(*, user: User | AnonymousUser, dataset: Dataset, params: dict[str, Any],
                fmt: str, view: EffectiveView | None = None, exists: bool | None = None) -> Iterator[bytes]:
    """Stream everything visible as CSV or NDJSON. Validation and the access check happen
    before the first byte. Two audit events: ``records.export_started`` (fields, filter,
    purpose) before it, so that an export cut short by a crash is on the record too, and
    ``records.export`` with the row count when the stream ends (also when the client goes
    away mid-way)."""
    if fmt not in {"csv", "ndjson"}:
        raise ApplicationError("format must be csv or ndjson.", fields={"format": ["Use csv or ndjson."]})
    view = readable_view(user=user, dataset=dataset, action="records.export", view=view)
    query = _parse_or_audit(user=user, dataset=dataset, view=view, action="records.export",
                            params={k: v for k, v in params.items() if k not in {"page_size", "cursor"}})
    table = view_table(view, dataset)
    exists = store_exists(dataset) if exists is None else exists
    # Inside a request, committed before the response (and so the first row) leaves.
    _audit_read(user=user, action="records.export_started", dataset=dataset, view=view, query=query,
                row_count=None, details={"format": fmt})
    # The stream runs after the request's middleware has returned; its event still names the
    # request's client address and id.
    request_context = current_request_context()

    def generate() -> Iterator[bytes]:
        count = 0
        try:
            if not exists:
                if fmt == "csv":
                    yield (",".join(query.fields) + "\r\n").encode()
                return
            if is_postgres():
                copied = [0]
                try:
                    yield from _copy_out(view, table, query, copied, fmt)
                finally:
                    count = copied[0]
                return
            buffer = io.StringIO()
            writer = csv.writer(buffer) if fmt == "csv" else None
            if writer is not None:
                writer.writerow(query.fields)
            for row in iterate_rows(view, table, query):
                count += 1
                if writer is not None:
                    writer.writerow([_csv_text(v) for v in row])
                else:
                    buffer.write(json.dumps(dict(zip(query.fields, row, strict=True)), default=_json_default,
                                            ensure_ascii=False))
                    buffer.write("\n")
                if buffer.tell() >= EXPORT_CHUNK_BYTES:
                    yield buffer.getvalue().encode()
                    buffer.seek(0)
                    buffer.truncate()
            if buffer.tell():
                yield buffer.getvalue().encode()
        finally:
            token = set_request_context(request_context)
            try:
                _audit_read(user=user, action="records.export", dataset=dataset, view=view, query=query,
                            row_count=count, details={"format": fmt})
            finally:
                reset_request_context(token)

    return generate()


def _csv_text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


def _json_default(value: Any) -> Any:
    return _jsonable(value) if not isinstance(value, decimal.Decimal) else str(value)


def export_query(view: EffectiveView, table: StoreTable, query: RecordQuery, fmt: str) -> tuple[str, list[Any]]:
    """PostgreSQL: the SELECT whose ``COPY … TO STDOUT`` is an export (see :func:`_copy_out`),
    and its parameters. The projection (masking, pseudonymisation, row filters) is already in
    it, from the same :func:`build_select` as the pages.

    NDJSON is one JSON object per row (``row_to_json`` of the row's visible values). CSV is
    the visible values, booleans and dates written as the Python path writes them."""
    select = build_select(view, table, query, paginate=False, ordered=bool(query.order))
    if fmt == "ndjson":
        values = ", ".join(f"{_ndjson_value(f'_x.{ident(c.name)}', c.field_type)} AS {ident(c.name)}"
                           for c in select.columns)
        return (f"SELECT row_to_json(_r) FROM ({select.sql}) AS _x CROSS JOIN LATERAL (SELECT {values}) AS _r",
                select.params)
    outer = []
    for column in select.columns:
        name = ident(column.name)
        if column.field_type == FieldType.BOOLEAN:
            outer.append(f"CASE WHEN {name} THEN 'true' WHEN NOT {name} THEN 'false' END AS {name}")
        elif column.field_type in (FieldType.TIMESTAMP, FieldType.DATE):
            outer.append(f"to_json({name}) #>> '{{}}' AS {name}")
        else:
            outer.append(name)
    return f"SELECT {', '.join(outer)} FROM ({select.sql}) AS {ident('_x')}", select.params


def _copy_out(view: EffectiveView, table: StoreTable, query: RecordQuery, copied: list[int],
              fmt: str) -> Iterator[bytes]:
    """PostgreSQL: the database writes the CSV or the NDJSON itself (COPY … TO STDOUT), at COPY
    speed.

    NDJSON is copied as a single-column CSV whose delimiter and quote character are control
    characters that JSON text never contains raw (PostgreSQL writes them as ``\u0001``): no
    value is ever quoted, so each line is exactly the object. COPY's text format would double
    every backslash."""
    sql, params = export_query(view, table, query, fmt)
    options = "FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02'" if fmt == "ndjson" else "FORMAT csv, HEADER"
    connection.ensure_connection()
    raw = connection.connection
    with export_settings(raw, fmt), raw.cursor() as cursor:
        with cursor.copy(f"COPY ({sql}) TO STDOUT WITH ({options})", params) as copy:
            # COPY hands over about one row per block; send the client fewer, larger chunks.
            buffer = bytearray()
            for block in copy:
                buffer += block
                if len(buffer) >= EXPORT_CHUNK_BYTES:
                    yield bytes(buffer)
                    buffer.clear()
            if buffer:
                yield bytes(buffer)
        copied[0] = max(cursor.rowcount, 0)


@contextlib.contextmanager
def export_settings(raw: Any, fmt: str) -> Iterator[None]:
    """PostgreSQL: the planner settings an export runs under. An NDJSON export lets parallel
    workers write its rows' JSON.

    Writing a row as JSON costs the database about two and a half times what writing it as
    CSV does, and the planner does not know it: it prices every row that crosses from a
    worker to the leader (``parallel_tuple_cost``) above what a serial scan spends on it, so a
    whole-table export never went parallel. Priced at zero for this one statement, in a
    transaction of its own so that the setting ends with it (also when the client goes away
    mid-way; inside a transaction already open, as in the tests, a savepoint, and the setting
    lasts until that transaction ends), a table big enough for parallel workers
    (``min_parallel_table_scan_size``) has them build the JSON while the leader sends it.

    Without ``order`` an export promises no order, and a parallel one interleaves the workers'
    rows; with it, the workers' sorted streams are merged (Gather Merge). The CSV export stays
    serial: COPY writes CSV about as fast as the leader could collect rows from workers."""
    if fmt != "ndjson":
        yield
        return
    with raw.transaction():
        raw.execute("SELECT set_config('parallel_tuple_cost', '0', true)")
        yield


def preview(*, user: User | AnonymousUser, dataset: Dataset, rows: int = 20, view: EffectiveView | None = None,
            exists: bool | None = None) -> tuple[EffectiveView, Page]:
    view, _query, page = read_page(user=user, dataset=dataset, params={"page_size": str(rows)},
                                   action="records.preview", view=view, exists=exists)
    return view, page


def read_offset(*, user: User | AnonymousUser, dataset: Dataset, params: dict[str, Any], limit: int, offset: int,
                action: str) -> tuple[EffectiveView, RecordQuery, list[dict[str, Any]], int]:
    """Offset paging for clients that only know offsets (CKAN ``datastore_search``): one page
    and the total number of rows of the view, through the same projection and audit."""
    view = readable_view(user=user, dataset=dataset, action=action)
    query = _parse_or_audit(user=user, dataset=dataset, view=view, action=action, params=params)
    table = view_table(view, dataset)
    rows: list[dict[str, Any]] = []
    total = 0
    if store_exists(dataset):
        select = build_select(view, table, query, paginate=False, ordered=True)
        names = [c.name for c in select.columns]
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM ({select.sql}) AS {ident('_n')}", select.params)
            total = cursor.fetchone()[0]
            cursor.execute(f"{select.sql} LIMIT {int(limit)} OFFSET {int(offset)}", select.params)
            raw = cursor.fetchall()
        rows = [dict(zip(names, r, strict=True)) for r in _normalise(raw, select.columns)]
    _audit_read(user=user, action=action, dataset=dataset, view=view, query=query, row_count=len(rows),
                details={"offset": offset, "limit": limit})
    return view, query, rows, total
