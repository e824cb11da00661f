"""Stored masks (``exchange/records/store.py``) for the store tables that exist already: each
text field classed personal or confidential gets its ``_mask_<field>`` generated column, which
the projection reads from now on. PostgreSQL only; on SQLite masks are computed when read."""

from django.db import migrations


def add_stored_masks(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from exchange.records.store import PG_SCHEMA, STORED_MASK_SENSITIVITIES, mask_column, mask_sql

    dataset_model, field_model = apps.get_model("catalog", "Dataset"), apps.get_model("catalog", "Field")
    quote = schema_editor.quote_name
    with schema_editor.connection.cursor() as cursor:
        for dataset in dataset_model.objects.exclude(current_schema=None).only("pk", "current_schema_id"):
            table = f"{quote(PG_SCHEMA)}.{quote(f'ds_{dataset.pk}')}"
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
            if not cursor.fetchone()[0]:
                continue
            cursor.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                           "AND NOT attisdropped", [table])
            columns = {row[0] for row in cursor.fetchall()}
            fields = field_model.objects.filter(schema_id=dataset.current_schema_id, type__in=["text", "geopoint"],
                                                sensitivity__in=sorted(STORED_MASK_SENSITIVITIES))
            adds = [f"ADD COLUMN {quote(mask_column(f.name))} text GENERATED ALWAYS AS "
                    f"({mask_sql(quote(f.name))}) STORED"
                    for f in fields if f.name in columns and mask_column(f.name) not in columns]
            if adds:
                cursor.execute(f"ALTER TABLE {table} {', '.join(adds)}")


class Migration(migrations.Migration):
    dependencies = [
        ("exchange", "0019_run_quality"),
        ("catalog", "0004_quality_rules"),
    ]

    operations = [migrations.RunPython(add_stored_masks, migrations.RunPython.noop)]
