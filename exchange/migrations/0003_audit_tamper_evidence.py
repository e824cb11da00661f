"""Make the audit tables append-only with database triggers (see exchange/audit_guard.py)."""

from django.db import migrations


def install(apps, schema_editor):
    from exchange.audit import guard as audit_guard

    audit_guard.install(schema_editor.connection)


def uninstall(apps, schema_editor):
    from exchange.audit import guard as audit_guard

    audit_guard.uninstall(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [("exchange", "0002_audit_checkpoint")]

    operations = [migrations.RunPython(install, uninstall)]
