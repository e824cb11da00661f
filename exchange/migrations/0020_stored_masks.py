"""Stored masks (``exchange/records/store.py``) for the store tables that exist already: each
text or point field classed personal or confidential gets its ``_mask_<field>`` generated
column, which the projection reads from now on. PostgreSQL only; on SQLite masks are computed
when read."""

from django.db import migrations


def add_stored_masks(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from exchange.records.store import ident, mask_column, stored_mask_ddl, table_name

    dataset_model, field_model = apps.get_model("catalog", "Dataset"), apps.get_model("catalog", "Field")
    with schema_editor.connection.cursor() as cursor:
        for dataset in dataset_model.objects.exclude(current_schema=None).only("pk", "current_schema_id"):
            schema, name = table_name(dataset.pk)
            table = ident(schema or "", name)
            cursor.execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
                           "AND NOT attisdropped", [table])
            columns = {row[0] for row in cursor.fetchall()}  # none: the table does not exist
            fields = [f for f in field_model.objects.filter(schema_id=dataset.current_schema_id)
                      if f.name in columns and mask_column(f.name) not in columns]
            adds = stored_mask_ddl(fields)
            if adds:
                cursor.execute(f"ALTER TABLE {table} {', '.join(f'ADD COLUMN {ddl}' for ddl in adds)}")


class Migration(migrations.Migration):
    dependencies = [
        ("exchange", "0019_run_quality"),
        ("catalog", "0004_quality_rules"),
    ]

    operations = [migrations.RunPython(add_stored_masks, migrations.RunPython.noop)]
