"""Forms of the data-flow pages: connections, a dataset's source, schedules, subscriptions.

They only shape input. The sync services (exchange/sync/services.py, the same the API calls)
decide what is allowed; their ApplicationError field messages are put next to the input
that caused them (:func:`config.web.add_service_errors`)."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from catalog.models import Field
from exchange.sync.models import Connection, ConnectionKind, FileFormat

TARGET_TABLE = r"^[a-z_][a-z0-9_]{0,62}$"
SCHEDULE_HELP = "Cron: minute hour day month weekday, e.g. “0 2 * * *” for every night at 02:00. Empty: on demand."


def _text(**attrs: str) -> forms.TextInput:
    return forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false", **attrs})


def set_choices(form: forms.Form, name: str, choices: list[tuple[Any, str]]) -> None:
    field = form.fields[name]
    assert isinstance(field, forms.ChoiceField)
    field.choices = choices


# --- Connections ----------------------------------------------------------------------------

class ConnectionForm(forms.Form):
    department = forms.TypedChoiceField(coerce=int, label="Department")
    name = forms.CharField(max_length=120, widget=_text())
    kind = forms.ChoiceField(choices=ConnectionKind.choices, label="Kind")
    secret = forms.CharField(
        max_length=2000, label="DSN, file or URL", widget=_text(),
        help_text="postgresql://user:password@host/db, a SQLite file path in an allowed directory, or an "
                  "http(s):// URL. Stored encrypted and never shown again.")

    def __init__(self, *args: Any, departments: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        set_choices(self, "department", departments)
        if len(departments) == 1:
            self.fields["department"].initial = departments[0][0]


class ConnectionEditForm(forms.Form):
    name = forms.CharField(max_length=120, widget=_text())
    secret = forms.CharField(
        max_length=2000, required=False, label="New DSN, file or URL", widget=_text(),
        help_text="Leave empty to keep the current one. Stored encrypted and never shown again.")


# --- Sources --------------------------------------------------------------------------------

class SourceKind:
    TABLE = "table"
    QUERY = "query"
    FILE = "file"
    choices = [(TABLE, "A table of a database connection"), (QUERY, "A read-only query on a database connection"),
               (FILE, "A file: uploaded here, or served by a URL connection")]


MAP_PREFIX = "map__"


def _column_list(raw: str) -> list[str]:
    """The columns carried in the hidden input (JSON); anything else is ignored: they only
    decide which inputs are offered, never what is saved."""
    try:
        value = json.loads(raw)
    except ValueError:
        return []
    return [c for c in value if isinstance(c, str) and c] if isinstance(value, list) else []


class SourceForm(forms.Form):
    """The dataset's source, with one mapping input per field of the published schema: a
    choice of the source's columns when they could be read, a text input otherwise."""

    kind = forms.ChoiceField(choices=SourceKind.choices, widget=forms.RadioSelect, initial=SourceKind.TABLE)
    connection = forms.TypedChoiceField(coerce=int, required=False, empty_value=None)
    table = forms.CharField(max_length=200, required=False, widget=_text(), help_text="Optionally schema.table.")
    query = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
                            help_text="One SELECT (or WITH … SELECT) statement.")
    file_format = forms.ChoiceField(choices=FileFormat.choices, initial=FileFormat.CSV, label="File format")
    encoding = forms.CharField(max_length=32, initial="utf-8", widget=_text())
    watermark_column = forms.CharField(max_length=200, required=False, label="Watermark column (optional)",
                                       widget=_text(),
                                       help_text="A column that grows on every change (e.g. updated_at), "
                                                 "for incremental runs.")
    # The columns read from the source, carried between the "load columns" step and saving.
    columns = forms.CharField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args: Any, connections: list[Connection], schema: list[Field],
                 columns: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections = {c.pk: c for c in connections}
        self.schema = schema
        if columns is None and self.is_bound:
            columns = _column_list(self.data.get("columns") or "")
        self.source_columns = columns or []
        set_choices(self, "connection", [("", "— none: an uploaded file —"),
                                         *[(c.pk, f"{c.name} ({c.get_kind_display()})") for c in connections]])
        column_choices = [("", "— not mapped —"), *[(c, c) for c in self.source_columns]]
        if self.source_columns:
            self.fields["columns"].initial = json.dumps(self.source_columns)
            self.fields["watermark_column"] = forms.ChoiceField(
                choices=[("", "— none —"), *[(c, c) for c in self.source_columns]], required=False,
                label="Watermark column (optional)", help_text=self.fields["watermark_column"].help_text)
        for f in schema:
            label = f"{f.name} ({f.type}{', key' if f.is_key else ''})"
            if self.source_columns:
                self.fields[MAP_PREFIX + f.name] = forms.ChoiceField(choices=column_choices, required=f.is_key,
                                                                     label=label)
                if f.name in self.source_columns:
                    self.fields[MAP_PREFIX + f.name].initial = f.name
            else:
                self.fields[MAP_PREFIX + f.name] = forms.CharField(max_length=200, required=f.is_key, label=label,
                                                                   widget=_text(placeholder="source column"))
            self.fields[MAP_PREFIX + f.name].error_messages["required"] = "The key field must be mapped."

    def mapping_fields(self) -> list[forms.BoundField]:
        return [self[MAP_PREFIX + f.name] for f in self.schema]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("kind")
        connection = self.connections.get(data["connection"]) if data.get("connection") else None
        data["connection_obj"] = connection
        database = (ConnectionKind.POSTGRESQL, ConnectionKind.SQLITE)
        if kind in (SourceKind.TABLE, SourceKind.QUERY):
            if connection is None or connection.kind not in database:
                self.add_error("connection", "Choose a PostgreSQL or SQLite connection.")
            if kind == SourceKind.TABLE and not data.get("table"):
                self.add_error("table", "Name the table to read.")
            if kind == SourceKind.QUERY and not data.get("query"):
                self.add_error("query", "Write the query to read.")
        elif kind == SourceKind.FILE and connection is not None and connection.kind in database:
            self.add_error("connection", "A file comes from an upload (no connection) or a URL connection.")
        return data

    def mapping(self) -> dict[str, str]:
        """Source column → field, as the service takes it; a column mapped twice is an error
        next to the second field."""
        mapping: dict[str, str] = {}
        for f in self.schema:
            column = (self.cleaned_data.get(MAP_PREFIX + f.name) or "").strip()
            if not column:
                continue
            if column in mapping:
                self.add_error(MAP_PREFIX + f.name, f"Column {column} is already mapped to {mapping[column]}.")
                continue
            mapping[column] = f.name
        return mapping

    def service_arguments(self) -> dict[str, Any]:
        kind = self.cleaned_data["kind"]
        return {
            "connection": self.cleaned_data["connection_obj"],
            "table": self.cleaned_data.get("table", "").strip() if kind == SourceKind.TABLE else "",
            "query": self.cleaned_data.get("query", "").strip() if kind == SourceKind.QUERY else "",
            "file_format": self.cleaned_data.get("file_format") or FileFormat.CSV,
            "encoding": self.cleaned_data.get("encoding") or "utf-8",
            "watermark_column": self.cleaned_data.get("watermark_column") or "",
        }


def source_initial(source: Any) -> dict[str, Any]:
    """The form's starting values for an existing source (the mapping turned round: field → column)."""
    kind = SourceKind.QUERY if source.query else SourceKind.TABLE if source.table else SourceKind.FILE
    initial = {"kind": kind, "connection": source.connection_id, "table": source.table, "query": source.query,
               "file_format": source.file_format, "encoding": source.encoding,
               "watermark_column": source.watermark_column}
    initial.update({MAP_PREFIX + field: column for column, field in source.mapping.items()})
    return initial


# --- Schedules and subscriptions ------------------------------------------------------------

class ScheduleForm(forms.Form):
    schedule = forms.CharField(max_length=120, required=False, label="Schedule", help_text=SCHEDULE_HELP,
                               widget=_text(placeholder="0 2 * * *"))


ON_CHANGE_LABEL = "Also deliver as soon as new changes are ingested"


class SourceScheduleForm(ScheduleForm):
    freshness_minutes = forms.IntegerField(
        required=False, min_value=1, max_value=60 * 24 * 31, widget=_text(),
        label="Freshness target: subscribers at most … minutes behind (optional)",
        help_text="When a subscriber's oldest undelivered change is older, the stewards of both departments are told.")
    watch_seconds = forms.IntegerField(
        required=False, min_value=1, label="Also watch for changes every … seconds (optional)", widget=_text(),
        help_text="A quick check (the watermark column's maximum; without one, a PostgreSQL table's change "
                  "counters or a query's row checksum, the SQLite file; a URL's ETag / Last-Modified) starts a "
                  "run as soon as the source changed.")


class SubscriptionScheduleForm(ScheduleForm):
    deliver_on_change = forms.BooleanField(required=False, label=ON_CHANGE_LABEL)


class SubscriptionForm(forms.Form):
    dataset = forms.TypedChoiceField(coerce=int, label="Dataset")
    connection = forms.TypedChoiceField(coerce=int, label="Target connection")
    target_table = forms.RegexField(TARGET_TABLE, max_length=63, label="Target table", widget=_text(),
                                    error_messages={"invalid": "Lower-case letters, digits and _; "
                                                               "not starting with a digit."})
    schedule = forms.CharField(max_length=120, required=False, help_text=SCHEDULE_HELP,
                               widget=_text(placeholder="0 2 * * *"))
    deliver_on_change = forms.BooleanField(required=False, label=ON_CHANGE_LABEL)
    purge_on_end = forms.BooleanField(required=False, label="Drop the delivered copy when the grant ends")

    def __init__(self, *args: Any, datasets: list[tuple[int, str]], connections: list[tuple[int, str]],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        set_choices(self, "dataset", [("", "Choose a dataset"), *datasets])
        set_choices(self, "connection", [("", "Choose a connection"), *connections])


class SubscriptionEndForm(forms.Form):
    purge = forms.BooleanField(required=False, label="Also drop the delivered table from the target")
