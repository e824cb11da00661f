from django.db import migrations, models
from django.db.models import F


def backfill(apps, schema_editor):  # type: ignore[no-untyped-def]
    # The best the existing rows know: their secret was last set at most at their last change.
    apps.get_model("exchange", "Connection").objects.update(secret_changed_at=F("updated_at"))


class Migration(migrations.Migration):

    dependencies = [
        ("exchange", "0006_sync"),
    ]

    operations = [
        migrations.AddField(
            model_name="connection",
            name="secret_changed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
