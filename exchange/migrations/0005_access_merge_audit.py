# Joins the access workflow's migration with the audit trail's (both branched from 0002_access).

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("exchange", "0003_access_workflow"),
        ("exchange", "0004_merge_0002_access_0003_audit_tamper_evidence"),
    ]

    operations = []
