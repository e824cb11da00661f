"""What a PostgreSQL source may make the source database do: read, nothing else.

A steward's query (or the table or view a source names) runs with the rights of the
connection's role, which is often far more than reading one table: a superuser can read the
server's files (``pg_read_file``), write them (``lo_export``), stop other sessions
(``pg_terminate_backend``) or change settings (``set_config``). A ``READ ONLY`` transaction
stops none of these. So before a query is saved, and again before every run (a function or a
view can be redefined in between), PostgreSQL itself analyses the query, not a parser of ours:

* the query becomes a temporary view, in a transaction that is always rolled back (PostgreSQL
  refuses ``CREATE`` in a read-only one; creating a view parses and resolves the query but
  runs nothing). The view is refused when it writes (``SELECT … INTO``, a data-modifying
  ``WITH``), and its stored query tree is refused when it locks rows (``FOR UPDATE``);
* every function and operator the tree calls (PostgreSQL records no dependency on built-in
  objects, so the tree itself is read: its function and operator ids), every relation it
  reads, and every view below those, down to the bottom, must pass :func:`_function_refusal`:
  a built-in of ``pg_catalog`` that is immutable or stable and not on :data:`DENIED`, or one
  of the harmless volatile ones in :data:`ALLOWED_VOLATILE`. Functions, operators, aggregates
  and types of the source database's own (``dblink`` included) are refused, as are foreign
  tables and the system catalogs (``pg_authid`` holds password hashes).

The run then still happens in a ``READ ONLY`` transaction with a statement timeout
(:func:`session_options`), in case anything slipped past the check.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings

from exchange.sync.errors import SourceError, TransientSourceError

# Objects created by initdb have lower oids; everything of an extension or a user is above.
FIRST_NORMAL_OID = 16384

# Stable or immutable built-ins that still must not run on a source: the ones that run a
# query given as text or dump whole tables (``query_to_xml('select pg_read_file(…)')``), read
# server settings (which may hold secrets) or the query texts of other sessions, or reveal
# where the server keeps its files.
DENIED = frozenset({
    "current_setting", "pg_show_all_settings", "pg_settings_get_flags", "pg_config", "pg_cursor",
    "pg_get_replication_slots", "pg_relation_filepath", "pg_relation_filenode", "pg_filenode_relation",
    "txid_current", "txid_current_if_assigned", "txid_current_snapshot", "pg_current_xact_id",
    "pg_current_xact_id_if_assigned", "pg_current_snapshot", "inet_server_addr", "inet_server_port",
    "ts_stat", "ts_rewrite",
})
DENIED_PATTERN = re.compile(r"_to_xml|^pg_stat_get_|^pg_ls_|^pg_read_|^lo_|^dblink")
# Volatile built-ins with no effect beyond their own result.
ALLOWED_VOLATILE = frozenset({"random", "random_normal", "gen_random_uuid", "clock_timestamp", "timeofday"})
# Schemas whose relations a source may not read: catalogs and what they hold (password
# hashes, user mappings with their passwords, other sessions' queries, large objects).
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})

# Fields of PostgreSQL's stored query trees that hold the oid of a function or an operator
# (FuncExpr, OpExpr and its kin, Aggref, WindowFunc, RowCompareExpr, SortGroupClause,
# WindowClause, TableSampleClause), and of a relation read (RangeTblEntry).
_CALL = re.compile(r":(funcid|opfuncid|hashfuncid|negfuncid|aggfnoid|winfnoid|opno|opnos|sortop|eqop|"
                   r"startInRangeFunc|endInRangeFunc|tsmhandler) (\d+|\(o[ \d]*\))")
_RELATION = re.compile(r":relid (\d+)")
_COMMAND = re.compile(r":commandType (\d+)")
_ROW_MARKS = re.compile(r":rowMarks \(")
_VIEW_NAME = "exchange_source_check"
MAX_RELATIONS = 200


class QueryRefused(SourceError):
    """The source would make the source database do more than read."""


def session_options(*, statement_timeout: int) -> str:
    """libpq ``options`` for a connection that reads a source: every transaction read-only
    unless it says otherwise, and no statement, lock wait or idle transaction lasting for
    ever."""
    seconds = max(1, int(statement_timeout))
    return (f"-c default_transaction_read_only=on -c statement_timeout={seconds}s "
            f"-c lock_timeout={min(seconds, 60)}s -c idle_in_transaction_session_timeout={seconds + 60}s")


def check_table_name(table: str) -> list[str]:
    """``table`` or ``schema.table``, as identifier parts; each is quoted wherever it is used."""
    parts = table.split(".", 1)
    for part in parts:
        if not part or len(part.encode()) > 63 or any(ord(ch) < 32 or ord(ch) == 127 for ch in part):
            raise QueryRefused(f"{table!r} is not a table name: give name or schema.name, each part 1 to 63 "
                               f"bytes, without control characters.")
    return parts


def check_source(conn: Any, *, query: str = "", table: str = "") -> None:
    """Raise QueryRefused unless reading the query or table on ``conn`` (an open psycopg
    connection, idle) only reads. Leaves ``conn`` idle, with its read-only setting as found."""
    import psycopg
    from psycopg import sql

    read_only = conn.read_only
    conn.read_only = False  # CREATE is refused in a read-only transaction; this one is rolled back
    try:
        with conn.transaction(force_rollback=True), conn.cursor() as cur:
            cur.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(
                sql.Literal(f"{max(1, settings.SYNC_SOURCE_CHECK_TIMEOUT_SECONDS)}s")))
            cur.execute("SET LOCAL lock_timeout = '5s'")
            if query:
                try:
                    # binary=True: the extended protocol, which takes exactly one statement.
                    cur.execute(sql.SQL("CREATE TEMP VIEW {} AS\n").format(sql.Identifier(_VIEW_NAME))
                                + sql.SQL(query), binary=True)  # type: ignore[arg-type]
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise QueryRefused(
                        f"The query cannot be checked: {_first_line(exc)}. The connection's role needs the "
                        f"TEMPORARY privilege on the database (the check builds a temporary view and drops it)."
                    ) from exc
                except psycopg.errors.QueryCanceled as exc:
                    raise QueryRefused("Checking the query took too long.") from exc
                except psycopg.OperationalError as exc:
                    raise TransientSourceError(f"The source database went away: {_first_line(exc)}") from exc
                except psycopg.Error as exc:
                    raise QueryRefused(f"The query is refused: {_first_line(exc)}") from exc
                cur.execute("SELECT %s::regclass::oid", [f"pg_temp.{_VIEW_NAME}"])
                start = cur.fetchone()[0]
            else:
                cur.execute("SELECT to_regclass(%s)::oid", [sql.Identifier(*check_table_name(table)).as_string(conn)])
                start = cur.fetchone()[0]
                if start is None:
                    return  # the reader says that the table does not exist
            _check_relations(cur, [start], top=start if query else None)
    except psycopg.OperationalError as exc:
        if isinstance(exc, psycopg.errors.QueryCanceled):
            raise QueryRefused("Checking the query took too long.") from exc
        raise TransientSourceError(f"The source database went away: {_first_line(exc)}") from exc
    finally:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            conn.read_only = read_only


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _check_relations(cur: Any, pending: list[int], *, top: int | None) -> None:
    """Walk the relations read, from ``pending`` down through every view; ``top`` is the
    temporary view of a query (named "the query" in messages, allowed in pg_temp)."""
    seen: set[int] = set()
    while pending:
        oid = pending.pop()
        if oid in seen:
            continue
        seen.add(oid)
        if len(seen) > MAX_RELATIONS:
            raise QueryRefused(f"The source reads more than {MAX_RELATIONS} tables and views.")
        cur.execute("SELECT c.relkind, n.nspname, c.oid::regclass::text FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s", [oid])
        relkind, schema, name = cur.fetchone()
        where = "The query" if oid == top else f"The view {name}"
        if oid != top:
            if schema in SYSTEM_SCHEMAS:
                raise QueryRefused(f"The source reads {name}, a system catalog of PostgreSQL; a source reads "
                                   f"the department's own tables and views.")
            if relkind == "f":
                raise QueryRefused(f"The source reads {name}, a foreign table (it reads another server or a "
                                   f"file); only tables and views of the source database can be read.")
        if relkind != "v":
            continue
        cur.execute("SELECT r.oid, r.ev_action::text FROM pg_rewrite r WHERE r.ev_class = %s "
                    "AND r.rulename = '_RETURN'", [oid])
        rule, tree = cur.fetchone()
        pending.extend(_check_tree(cur, tree, where=where, rule=rule))


def _check_tree(cur: Any, tree: str, *, where: str, rule: int) -> list[int]:
    """Check the calls in one stored query tree; return the relations it reads."""
    if any(command != "1" for command in _COMMAND.findall(tree)):
        raise QueryRefused(f"{where} writes; a source may only read.")
    if _ROW_MARKS.search(tree):
        raise QueryRefused(f"{where} locks rows (FOR UPDATE / FOR SHARE); a source may only read.")
    ids: set[int] = set()
    for _key, value in _CALL.findall(tree):
        ids.update(int(v) for v in re.findall(r"\d+", value))
    relations = {int(r) for r in _RELATION.findall(tree)}
    # Objects of the source database's own are also in pg_depend (built-in ones are not).
    cur.execute("SELECT refclassid::regclass::text, refobjid FROM pg_depend "
                "WHERE classid = 'pg_rewrite'::regclass AND objid = %s", [rule])
    for catalog, oid in cur.fetchall():
        if catalog == "pg_class":
            relations.add(oid)
        elif catalog in ("pg_proc", "pg_operator"):
            ids.add(oid)
        elif catalog == "pg_type":
            _check_type(cur, oid, where=where)
    if ids:
        _check_calls(cur, sorted(ids), where=where)
    return sorted(relations)


def _check_type(cur: Any, oid: int, *, where: str) -> None:
    cur.execute("SELECT t.typtype, t.oid::regtype::text FROM pg_type t WHERE t.oid = %s", [oid])
    typtype, name = cur.fetchone()
    # Enums, composites and ranges call no code of their own when read; a domain's checks
    # and a base type's input and output functions would.
    if oid >= FIRST_NORMAL_OID and typtype in ("b", "d", "p"):
        raise QueryRefused(f"{where} uses the type {name}, defined in the source database; only PostgreSQL's "
                           f"built-in types, enums and composite types can be used.")


def _check_calls(cur: Any, ids: list[int], *, where: str) -> None:
    cur.execute("SELECT o.oid, o.oid::regoperator::text, o.oprcode::oid FROM pg_operator o WHERE o.oid = ANY(%s)",
                [ids])
    functions: dict[int, str] = {}
    for oid, name, code in cur.fetchall():
        if oid >= FIRST_NORMAL_OID:
            raise QueryRefused(f"{where} uses the operator {name}, defined in the source database; only "
                               f"PostgreSQL's built-in operators and functions can be used.")
        functions.setdefault(code, f"the operator {name} (function %s)")
    for oid in ids:
        functions.setdefault(oid, "%s")
    cur.execute("SELECT p.oid, p.oid::regprocedure::text, n.nspname, p.proname, p.provolatile FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = ANY(%s)", [sorted(functions)])
    for oid, signature, schema, name, volatility in cur.fetchall():
        why = _function_refusal(oid=oid, schema=schema, name=name, volatility=volatility)
        if why:
            raise QueryRefused(f"{where} calls {functions[oid] % signature}, {why}. A source query may only "
                               f"use PostgreSQL's built-in functions that just compute a value.")


def _function_refusal(*, oid: int, schema: str, name: str, volatility: str) -> str:
    """Why the function may not run on a source, or '' if it may."""
    if oid >= FIRST_NORMAL_OID or schema != "pg_catalog":
        return "a function defined in the source database (or by an extension)"
    if name in DENIED or DENIED_PATTERN.search(name):
        return "which can run other queries or read files, settings or other sessions"
    if volatility == "v" and name not in ALLOWED_VOLATILE:
        return "which can have side effects (it is volatile)"
    return ""
