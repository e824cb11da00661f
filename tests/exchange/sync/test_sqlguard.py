"""A PostgreSQL source only reads, whatever the rights of the connection's role: the tests
connect as the local superuser (postgres), who could do everything refused here.
Skipped on the SQLite run."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from django.db import connection as django_connection

from exchange.sync import readers, sqlguard
from exchange.sync.models import RunStatus, Source
from tests.exchange.sync.helpers import extra_pg_database, pg_execute, run_ingest, store_rows
from tests.sync_factories import connection, identity_mapping, permit_rows, published_dataset

pytestmark = pytest.mark.django_db

CREATE = ("CREATE TABLE permits (permit_id bigint PRIMARY KEY, address text, applicant text, fee numeric, "
          "approved boolean, issued_on date, updated_at timestamptz)")
INSERT = "INSERT INTO permits VALUES (%s, %s, %s, %s, %s, %s, %s)"
COLUMNS = "permit_id, address, applicant, fee, approved, issued_on, updated_at"
# On the database server (the same machine in tests): what a refused statement would create.
MARKER = "/tmp/exchange-guard-test"  # noqa: S108


@pytest.fixture
def source_db():
    if django_connection.vendor != "postgresql":
        pytest.skip("PostgreSQL sources are tested on the PostgreSQL run")
    with extra_pg_database("guard") as dsn:
        pg_execute(dsn, CREATE)
        pg_execute(dsn, INSERT, many=permit_rows(20))
        pg_execute(dsn, "CREATE SEQUENCE counter")
        pg_execute(dsn, "CREATE FUNCTION plain_one() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1'")
        pg_execute(dsn, "CREATE FUNCTION wipe() RETURNS int LANGUAGE plpgsql VOLATILE AS "
                        "$$ BEGIN DELETE FROM permits; RETURN 0; END $$")
        pg_execute(dsn, "CREATE OPERATOR === (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = int8eq)")
        pg_execute(dsn, "CREATE DOMAIN checked_int AS int CHECK (VALUE > plain_one())")
        pg_execute(dsn, f"CREATE VIEW recent AS SELECT {COLUMNS} FROM permits WHERE permit_id > 10")
        yield dsn


@pytest.fixture
def dataset(department):
    return published_dataset(department=department)


@pytest.fixture
def pg(department, source_db):
    return connection(department=department, kind="postgresql", secret=source_db)


def _still_intact(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM permits").fetchone() == (20,)
        assert conn.execute("SELECT last_value, is_called FROM counter").fetchone() == (1, False)
        assert conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone() == (0,)
        assert conn.execute("SELECT to_regclass('stolen')").fetchone() == (None,)


REFUSED = [
    # Reading and writing the server's files, large objects, other sessions, settings.
    (f"SELECT {COLUMNS}, pg_read_file('/etc/passwd') AS f FROM permits", "pg_read_file(text)"),
    (f"SELECT {COLUMNS} FROM permits WHERE pg_read_binary_file('/etc/passwd') IS NOT NULL", "pg_read_binary_file"),
    (f"SELECT {COLUMNS}, lo_import('/etc/passwd') AS o FROM permits", "lo_import(text)"),
    (f"SELECT {COLUMNS}, lo_export(0, '{MARKER}') AS o FROM permits", "lo_export(oid,text)"),
    (f"SELECT {COLUMNS} FROM permits WHERE pg_sleep(600) IS NOT NULL", "pg_sleep(double precision)"),
    (f"SELECT {COLUMNS}, set_config('statement_timeout', '0', false) AS s FROM permits", "set_config"),
    (f"SELECT {COLUMNS}, current_setting('data_directory') AS s FROM permits", "current_setting(text)"),
    (f"SELECT {COLUMNS}, pg_terminate_backend(pg_backend_pid()) AS t FROM permits", "pg_terminate_backend"),
    (f"SELECT {COLUMNS}, pg_cancel_backend(1) AS t FROM permits", "pg_cancel_backend"),
    (f"SELECT {COLUMNS}, nextval('counter') AS n FROM permits", "nextval(regclass)"),
    (f"SELECT {COLUMNS} FROM permits WHERE pg_try_advisory_lock(1)", "pg_try_advisory_lock(bigint)"),
    # Queries given as text run by a function, and whole tables dumped.
    (f"SELECT {COLUMNS}, query_to_xml('select pg_read_file(''/etc/passwd'')', true, true, '') AS x FROM permits",
     "query_to_xml"),
    (f"SELECT {COLUMNS}, table_to_xml('pg_authid', true, true, '') AS x FROM permits", "table_to_xml"),
    (f"SELECT {COLUMNS}, cursor_to_xml('c', 1, true, true, '') AS x FROM permits", "cursor_to_xml"),
    # Functions, operators and types of the source database's own, however harmless they look.
    (f"SELECT {COLUMNS}, plain_one() AS one FROM permits", "plain_one(), a function defined in the source database"),
    (f"SELECT {COLUMNS}, wipe() AS w FROM permits", "wipe(), a function defined in the source database"),
    (f"SELECT {COLUMNS} FROM permits WHERE permit_id === 1", "the operator ===(bigint,bigint)"),
    (f"SELECT {COLUMNS}, 5::checked_int AS c FROM permits", "the type checked_int"),
    # Writes and locks.
    (f"WITH gone AS (DELETE FROM permits RETURNING *) SELECT {COLUMNS} FROM gone", "data-modifying"),
    (f"SELECT {COLUMNS} FROM permits FOR UPDATE", "locks rows"),
    (f"SELECT {COLUMNS} FROM permits WHERE permit_id IN (SELECT permit_id FROM permits FOR SHARE)", "locks rows"),
    (f"SELECT {COLUMNS} INTO stolen FROM permits", "SELECT INTO"),
    # Catalogs that hold secrets.
    ("SELECT rolname AS permit_id, rolpassword AS address FROM pg_authid", "pg_authid, a system catalog"),
    ("SELECT pid AS permit_id, query AS address FROM pg_stat_activity", "pg_stat_activity, a system catalog"),
    ("SELECT umuser AS permit_id FROM pg_user_mapping", "pg_user_mapping, a system catalog"),
]


@pytest.mark.parametrize(("query", "named"), REFUSED)
def test_side_effects_are_refused_when_the_steward_saves(as_user, people, dataset, pg, source_db, query, named):
    response = as_user(people["steward"]).put(f"/api/v1/datasets/{dataset.pk}/source/", {
        "connection": pg.pk, "query": query, "mapping": identity_mapping()}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert named in error["message"] and error["fields"]["query"] == [error["message"]]
    assert not Source.objects.filter(dataset=dataset).exists()
    _still_intact(source_db)


def test_dblink_from_an_extension_is_refused(as_user, people, dataset, pg, source_db):
    try:
        pg_execute(source_db, "CREATE EXTENSION dblink")
    except psycopg.Error:
        pytest.skip("the dblink extension is not installed on this server")
    query = (f"SELECT {COLUMNS} FROM dblink('dbname=postgres', 'select {COLUMNS} from permits') "
             f"AS t(permit_id bigint, address text, applicant text, fee numeric, approved boolean, issued_on date, "
             f"updated_at timestamptz)")
    response = as_user(people["steward"]).put(f"/api/v1/datasets/{dataset.pk}/source/", {
        "connection": pg.pk, "query": query, "mapping": identity_mapping()}, format="json")
    assert response.status_code == 400
    assert "dblink(text,text), a function defined in the source database (or by an extension)" in (
        response.json()["error"]["message"])


@pytest.mark.parametrize("query", [
    f"COPY (SELECT 1) TO PROGRAM 'touch {MARKER}'",
    f"SELECT {COLUMNS} FROM permits; DROP TABLE permits",
    f"SELECT {COLUMNS} FROM permits) AS q; DROP TABLE permits; SELECT * FROM (SELECT 1",
])
def test_other_statements_never_reach_the_database(as_user, people, dataset, pg, source_db, query):
    response = as_user(people["steward"]).put(f"/api/v1/datasets/{dataset.pk}/source/", {
        "connection": pg.pk, "query": query, "mapping": identity_mapping()}, format="json")
    assert response.status_code == 400
    assert not Path(MARKER).exists()
    _still_intact(source_db)


def test_every_statement_is_checked_by_postgresql_not_only_by_the_parser(pg, source_db):
    # One statement for the parser (the semicolon is inside a string for it, not for the
    # server, or the other way round): the server's extended protocol takes exactly one.
    conn = readers.pg_connect(source_db, read_only=True)
    try:
        with pytest.raises(sqlguard.QueryRefused, match="multiple commands"):
            sqlguard.check_source(conn, query=f"SELECT {COLUMNS} FROM permits; DELETE FROM permits")
        assert conn.read_only is True  # the check leaves the connection as it found it
    finally:
        conn.close()
    _still_intact(source_db)


def test_an_ordinary_query_is_saved_and_runs(as_user, people, dataset, pg, source_db):
    query = ("SELECT permit_id, upper(address) AS address, applicant || '' AS applicant, round(fee, 1) AS fee, "
             "approved, issued_on, updated_at FROM permits WHERE updated_at < now() + interval '1 day' "
             "AND permit_id = ANY(ARRAY[1, 2, 3, 15]) AND random() < 2 ORDER BY permit_id")
    response = as_user(people["steward"]).put(f"/api/v1/datasets/{dataset.pk}/source/", {
        "connection": pg.pk, "query": query, "mapping": identity_mapping()}, format="json")
    assert response.status_code == 200, response.content
    run = run_ingest(Source.objects.get(dataset=dataset))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert [r["address"] for r in store_rows(dataset)] == ["1 MAIN STREET", "2 MAIN STREET", "3 MAIN STREET",
                                                           "15 MAIN STREET"]
    response = as_user(people["steward"]).put(f"/api/v1/datasets/{dataset.pk}/source/", {
        "connection": pg.pk, "query": "SELECT * FROM recent", "mapping": identity_mapping()}, format="json")
    assert response.status_code == 200, response.content


def test_the_check_runs_again_before_every_run(dataset, pg, source_db):
    """A view the query reads, harmless when the source was saved, is redefined afterwards."""
    source = Source.objects.create(dataset=dataset, connection=pg, query="SELECT * FROM recent",
                                   mapping=identity_mapping())
    assert run_ingest(source).status == RunStatus.SUCCEEDED
    pg_execute(source_db, f"CREATE OR REPLACE VIEW recent AS SELECT {COLUMNS}, "
                          f"pg_read_file('/etc/hostname') AS secret FROM permits")
    pg_execute(source_db, "UPDATE permits SET fee = 0")
    run = run_ingest(source)
    assert run.status == RunStatus.FAILED and run.attempts == 1
    assert "The view recent calls pg_read_file(text)" in run.error
    assert {r["fee"] for r in store_rows(dataset)} != {0}  # nothing of the refused run was written


def test_table_sources_are_checked_too(dataset, pg, source_db):
    pg_execute(source_db, f"CREATE VIEW leaky AS SELECT {COLUMNS}, wipe() AS w FROM permits")
    for table, why in (("leaky", "The view leaky calls wipe()"),
                       ("pg_catalog.pg_authid", "a system catalog"),
                       ("information_schema.tables", "a system catalog")):
        source = Source.objects.create(dataset=dataset, connection=pg, table=table, mapping=identity_mapping())
        run = run_ingest(source)
        assert run.status == RunStatus.FAILED and why in run.error, run.error
        source.delete()
    _still_intact(source_db)
    source = Source.objects.create(dataset=dataset, connection=pg, table="public.recent", mapping=identity_mapping())
    assert run_ingest(source).status == RunStatus.SUCCEEDED


def test_a_foreign_table_is_refused(dataset, pg, source_db):
    try:
        pg_execute(source_db, "CREATE EXTENSION file_fdw")
    except psycopg.Error:
        pytest.skip("the file_fdw extension is not installed on this server")
    pg_execute(source_db, "CREATE SERVER files FOREIGN DATA WRAPPER file_fdw")
    pg_execute(source_db, "CREATE FOREIGN TABLE passwd (line text) SERVER files "
                          "OPTIONS (filename '/etc/passwd', format 'text')")
    source = Source.objects.create(dataset=dataset, connection=pg, table="passwd", mapping={"line": "permit_id"})
    run = run_ingest(source)
    assert run.status == RunStatus.FAILED and "passwd, a foreign table" in run.error


@pytest.mark.parametrize("table", ['permits"; DROP TABLE permits; --', "permits; DROP TABLE permits",
                                   f"public.permits\") TO PROGRAM 'touch {MARKER}' --"])
def test_a_table_path_is_only_ever_an_identifier(as_user, people, dataset, pg, source_db, table):
    response = as_user(people["steward"]).put(f"/api/v1/datasets/{dataset.pk}/source/", {
        "connection": pg.pk, "table": table, "mapping": identity_mapping()}, format="json")
    assert response.status_code == 200, response.content  # a name that may exist, quoted wherever it is used
    run = run_ingest(Source.objects.get(dataset=dataset))
    assert run.status == RunStatus.FAILED and "does not exist" in run.error
    assert not Path(MARKER).exists()
    _still_intact(source_db)


@pytest.mark.parametrize("table", ["", ".permits", "public.", "perm\x00its", "perm\nits", "x" * 64])
def test_a_table_name_that_cannot_be_one_is_refused_on_save(as_user, people, dataset, pg, table):
    response = as_user(people["steward"]).put(f"/api/v1/datasets/{dataset.pk}/source/", {
        "connection": pg.pk, "table": table, "mapping": identity_mapping()}, format="json")
    assert response.status_code == 400
    assert "table" in response.json()["error"].get("fields", {})


def test_reads_run_read_only_with_a_statement_timeout(settings, source_db):
    """Defence in depth: what the check would let through still cannot write or run long."""
    settings.SYNC_SOURCE_STATEMENT_TIMEOUT_SECONDS = 1
    conn = readers.pg_connect(source_db, read_only=True)
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM permits")
        conn.rollback()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")
        conn.rollback()
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("61s",)
    finally:
        conn.close()
    _still_intact(source_db)


def test_a_slow_query_fails_the_run_once_without_retries(settings, dataset, pg, source_db):
    settings.SYNC_SOURCE_STATEMENT_TIMEOUT_SECONDS = 1
    slow = (f"SELECT {COLUMNS} FROM permits WHERE (SELECT count(*) FROM (SELECT generate_series(1, 2000000000)) g) "
            f"> 0")
    source = Source.objects.create(dataset=dataset, connection=pg, query=slow, mapping=identity_mapping())
    run = run_ingest(source)
    assert run.status == RunStatus.FAILED and run.attempts == 1
    assert "took longer than SYNC_SOURCE_STATEMENT_TIMEOUT_SECONDS (1 s)" in run.error
    assert store_rows(dataset) == []


def test_a_role_without_temporary_tables_gets_a_clear_message(dataset, pg, source_db):
    import uuid

    role = f"exchange_sources_guard_{uuid.uuid4().hex[:8]}"
    database = source_db.rsplit("/", 1)[1]
    pg_execute(source_db, f'CREATE ROLE "{role}" LOGIN')
    try:
        pg_execute(source_db, f'REVOKE TEMPORARY ON DATABASE "{database}" FROM PUBLIC')
        pg_execute(source_db, f'GRANT SELECT ON permits TO "{role}"')
        conn = psycopg.connect(source_db.replace("postgres@", f"{role}@", 1))
        try:
            with pytest.raises(sqlguard.QueryRefused, match="needs the TEMPORARY privilege"):
                sqlguard.check_source(conn, query=f"SELECT {COLUMNS} FROM permits")
        finally:
            conn.close()
    finally:
        pg_execute(source_db, f'REVOKE ALL ON permits FROM "{role}"')
        pg_execute(source_db, f'DROP ROLE "{role}"')
