"""Server-side functions for appending to the audit chain in one round trip (see
exchange/audit.py, ``_chain_head`` and ``audit_record``). PostgreSQL only: on SQLite the write
lock taken at BEGIN already serialises appends."""

from django.db import migrations

# VOLATILE (the default) on purpose: under READ COMMITTED a volatile function takes a fresh
# snapshot for each statement it runs, so the SELECT sees every append committed before the
# lock was granted. Read by the *same* statement as the lock, the end of the chain could be
# stale and two appends would link to the same event.
CREATE = """
CREATE OR REPLACE FUNCTION exchange_audit_chain_head(lock_key bigint) RETURNS varchar
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    last_hash varchar;
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    SELECT hash INTO last_hash FROM exchange_auditevent ORDER BY id DESC LIMIT 1;
    RETURN coalesce(last_hash, repeat('0', 64));
END;
$$
"""
# One append: lock, read the end of the chain (in its own statement, as above), hash and
# insert. The caller sends the canonical serialisation of the event in two parts, before and
# after the previous hash, so the hash is the very SHA-256 that exchange.audit.event_hash
# computes in Python, without a round trip to learn the previous hash first.
CREATE_APPEND = """
CREATE OR REPLACE FUNCTION exchange_audit_append(
    lock_key bigint, canonical_head bytea, canonical_tail bytea,
    p_occurred_at timestamptz, p_actor_kind varchar, p_actor_id bigint, p_actor_label varchar,
    p_action varchar, p_object_type varchar, p_object_id varchar, p_object_label varchar,
    p_department_id bigint, p_dataset_id bigint, p_fields jsonb, p_row_count bigint, p_filters jsonb,
    p_purpose text, p_outcome varchar, p_client_ip inet, p_request_id varchar, p_details jsonb,
    OUT event_id bigint, OUT event_prev_hash varchar, OUT event_hash varchar
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    SELECT hash INTO event_prev_hash FROM exchange_auditevent ORDER BY id DESC LIMIT 1;
    event_prev_hash := coalesce(event_prev_hash, repeat('0', 64));
    event_hash := encode(sha256(canonical_head || convert_to(event_prev_hash, 'UTF8') || canonical_tail), 'hex');
    INSERT INTO exchange_auditevent (
        occurred_at, actor_kind, actor_id, actor_label, action, object_type, object_id, object_label,
        department_id, dataset_id, fields, row_count, filters, purpose, outcome, client_ip, request_id,
        details, prev_hash, hash
    ) VALUES (
        p_occurred_at, p_actor_kind, p_actor_id, p_actor_label, p_action, p_object_type, p_object_id,
        p_object_label, p_department_id, p_dataset_id, p_fields, p_row_count, p_filters, p_purpose,
        p_outcome, p_client_ip, p_request_id, p_details, event_prev_hash, event_hash
    ) RETURNING id INTO event_id;
END;
$$
"""
DROP = "DROP FUNCTION IF EXISTS exchange_audit_chain_head(bigint)"
DROP_APPEND = (
    "DROP FUNCTION IF EXISTS exchange_audit_append(bigint, bytea, bytea, timestamptz, varchar, bigint, varchar, "
    "varchar, varchar, varchar, varchar, bigint, bigint, jsonb, bigint, jsonb, text, varchar, inet, varchar, jsonb)"
)


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)
        schema_editor.execute(CREATE_APPEND)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_APPEND)
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("exchange", "0006_sync")]

    operations = [migrations.RunPython(install, uninstall)]
