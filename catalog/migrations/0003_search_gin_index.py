from django.db import migrations


def create_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "CREATE INDEX IF NOT EXISTS catalog_dataset_search_gin ON catalog_dataset USING GIN (search_vector)"
        )


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS catalog_dataset_search_gin")


class Migration(migrations.Migration):
    """The full-text index exists on PostgreSQL only; SQLite searches the plain text columns."""

    dependencies = [("catalog", "0002_timeline_and_search")]

    operations = [migrations.RunPython(create_index, drop_index)]
