"""The access version: a number that changes in the same transaction as anything a records
request's cached context depends on (grants and their fields, memberships, departments, city
roles, object permissions, datasets and their schemas). See ``exchange/records/read_cache.py``.

A trigger on each of those tables moves it, so a change made by a service, the admin site or a
bare ``UPDATE`` moves it alike. It moves by a random step rather than by one: a transaction that
rolls back leaves the number where it was, and the next change must not bring back a number
that a cache may still hold (with a context built inside the rolled-back transaction).

On PostgreSQL the number is the sum of 64 slots; a statement that changes a watched table moves
a slot no other transaction holds (preferably the one its transaction id picks; a row lock held
to the end of the transaction): governance transactions do not wait for each other here, and no
read ever waits. On SQLite, whose single writer serialises
transactions anyway, one row moves on every changed row.
"""

from django.db import migrations

WATCHED = (
    "exchange_grant", "exchange_grantfield",
    "departments_membership", "departments_department", "departments_cityroleassignment",
    "catalog_dataset", "catalog_field", "catalog_schemaversion",
    "guardian_userobjectpermission", "guardian_groupobjectpermission", "auth_user_groups",
)
SLOTS = 64

PG_FUNCTION = f"""
CREATE FUNCTION exchange_access_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    own integer := pg_current_xact_id()::text::bigint % {SLOTS};
    picked integer;
BEGIN
    -- Every statement moves it, not only a transaction's first: the transaction's own later
    -- reads must see its later changes too. The slot its transaction id picks if no other
    -- transaction holds it, else any slot nobody else holds: a governance write never waits
    -- for another's slot, so it cannot deadlock with a transaction that holds the audit
    -- chain's lock and writes next. Only when every slot is held does it wait, for its own.
    SELECT slot INTO picked FROM exchange_access_version
     ORDER BY slot = own DESC, slot LIMIT 1 FOR UPDATE SKIP LOCKED;
    UPDATE exchange_access_version SET value = value + 1 + floor(random() * 1000000000)::bigint
     WHERE slot = COALESCE(picked, own);
    RETURN NULL;
END
$$;
"""


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor

    def execute(sql: str) -> None:
        schema_editor.execute(sql, None)  # no parameters: "%" is the modulo operator here
    if vendor == "postgresql":
        execute("CREATE TABLE exchange_access_version (slot integer PRIMARY KEY, value bigint NOT NULL)")
        execute(f"INSERT INTO exchange_access_version SELECT s, 0 FROM generate_series(0, {SLOTS - 1}) AS s")
        execute(PG_FUNCTION)
        for table in WATCHED:
            execute(f"CREATE TRIGGER exchange_access_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
                    f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION exchange_access_changed()")
        return
    execute("CREATE TABLE exchange_access_version (slot integer PRIMARY KEY, value integer NOT NULL)")
    execute("INSERT INTO exchange_access_version (slot, value) VALUES (0, 0)")
    for table in WATCHED:
        for event in ("INSERT", "UPDATE", "DELETE"):
            execute(f"CREATE TRIGGER exchange_access_changed_{table}_{event.lower()} AFTER {event} ON {table} "
                    f"BEGIN UPDATE exchange_access_version SET value = value + 1 + abs(random() % 1000000000) "
                    f"WHERE slot = 0; END")


def backwards(apps, schema_editor):
    def execute(sql: str) -> None:
        schema_editor.execute(sql, None)
    if schema_editor.connection.vendor == "postgresql":
        for table in WATCHED:
            execute(f"DROP TRIGGER IF EXISTS exchange_access_changed ON {table}")
        execute("DROP FUNCTION IF EXISTS exchange_access_changed()")
    else:
        for table in WATCHED:
            for event in ("insert", "update", "delete"):
                execute(f"DROP TRIGGER IF EXISTS exchange_access_changed_{table}_{event}")
    execute("DROP TABLE IF EXISTS exchange_access_version")


class Migration(migrations.Migration):

    dependencies = [
        ("exchange", "0010_subscription_ended_reason"),
        ("catalog", "0003_search_gin_index"),
        ("departments", "0002_notification"),
        ("guardian", "0003_remove_groupobjectpermission_guardian_gr_content_ae6aec_idx_and_more"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
