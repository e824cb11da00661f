"""The catalogue: datasets, their versioned field schemas and the publication history.

A dataset's *fields* live in a :class:`SchemaVersion`. Version 1 is written while the dataset
is a draft and is published with it; editing the schema of a published dataset creates the
next version, which goes through review on its own and, once approved, becomes the dataset's
``current_schema``. Everything that reads record values (store, policy, delivery) works from
the current schema only; grants name fields by their ``name``.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.search import SearchVectorField
from django.core.validators import RegexValidator
from django.db import models

from departments.models import Department


class Sensitivity(models.TextChoices):
    PUBLIC = "public", "Public"
    INTERNAL = "internal", "Internal"
    CONFIDENTIAL = "confidential", "Confidential"
    PERSONAL = "personal", "Personal data"


# Order of protection, for "the most sensitive field of…" and for defaults of forms.
SENSITIVITY_RANK = {Sensitivity.PUBLIC: 0, Sensitivity.INTERNAL: 1, Sensitivity.CONFIDENTIAL: 2,
                    Sensitivity.PERSONAL: 3}


class FieldType(models.TextChoices):
    TEXT = "text", "Text"
    INTEGER = "integer", "Integer"
    DECIMAL = "decimal", "Decimal"
    BOOLEAN = "boolean", "Boolean"
    DATE = "date", "Date"
    TIMESTAMP = "timestamp", "Timestamp (with time zone)"
    GEOPOINT = "geopoint", "Geographic point (WGS 84 lat/lon)"
    JSON = "json", "JSON document"


class DatasetStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    IN_REVIEW = "in_review", "In review"
    CHANGES_REQUESTED = "changes_requested", "Changes requested"
    PUBLISHED = "published", "Published"
    DEPRECATED = "deprecated", "Deprecated"
    RETIRED = "retired", "Retired"


class Visibility(models.TextChoices):
    CITY = "city", "Metadata visible to every department"
    RESTRICTED = "restricted", "Metadata visible only to the owner and grantees"


class UpdateFrequency(models.TextChoices):
    # The EU Publications Office "frequency" authority table.
    CONTINUOUS = "CONT", "Continuously"
    HOURLY = "HOURLY", "Hourly"
    DAILY = "DAILY", "Daily"
    WEEKLY = "WEEKLY", "Weekly"
    MONTHLY = "MONTHLY", "Monthly"
    QUARTERLY = "QUARTERLY", "Quarterly"
    ANNUAL = "ANNUAL", "Annually"
    IRREGULAR = "IRREG", "Irregularly"
    NEVER = "NEVER", "Never"
    UNKNOWN = "UNKNOWN", "Unknown"


class Theme(models.TextChoices):
    # The EU "data theme" authority table, used by DCAT-AP.
    AGRI = "AGRI", "Agriculture, fisheries, forestry and food"
    ECON = "ECON", "Economy and finance"
    EDUC = "EDUC", "Education, culture and sport"
    ENER = "ENER", "Energy"
    ENVI = "ENVI", "Environment"
    GOVE = "GOVE", "Government and public sector"
    HEAL = "HEAL", "Health"
    INTR = "INTR", "International issues"
    JUST = "JUST", "Justice, legal system and public safety"
    REGI = "REGI", "Regions and cities"
    SOCI = "SOCI", "Population and society"
    TECH = "TECH", "Science and technology"
    TRAN = "TRAN", "Transport"


class Licence(models.TextChoices):
    CC0 = "CC0-1.0", "Creative Commons Zero 1.0"
    CC_BY = "CC-BY-4.0", "Creative Commons Attribution 4.0"
    CC_BY_SA = "CC-BY-SA-4.0", "Creative Commons Attribution-ShareAlike 4.0"
    ODBL = "ODbL-1.0", "Open Data Commons Open Database License 1.0"
    CITY_INTERNAL = "city-internal", "City internal use only"


slug_validator = RegexValidator(r"^[a-z0-9]+(?:-[a-z0-9]+)*$", "Use lowercase letters, digits and single hyphens.")


class Dataset(models.Model):
    department = models.ForeignKey(Department, on_delete=models.PROTECT, related_name="datasets")
    title = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True, validators=[slug_validator])
    description = models.TextField()
    themes = models.JSONField(default=list, blank=True, help_text="EU data theme codes, e.g. TRAN.")
    keywords = models.JSONField(default=list, blank=True)
    licence = models.CharField(max_length=32, choices=Licence.choices, default=Licence.CITY_INTERNAL)
    update_frequency = models.CharField(max_length=16, choices=UpdateFrequency.choices,
                                        default=UpdateFrequency.UNKNOWN)
    temporal_start = models.DateField(null=True, blank=True)
    temporal_end = models.DateField(null=True, blank=True)
    spatial = models.CharField(max_length=200, blank=True, help_text="Area covered, e.g. a district or 'whole city'.")
    contact = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="contact_for_datasets")
    visibility = models.CharField(max_length=16, choices=Visibility.choices, default=Visibility.CITY)
    status = models.CharField(max_length=20, choices=DatasetStatus.choices, default=DatasetStatus.DRAFT,
                              db_index=True)
    # The published schema that the store, the policy and deliveries work from.
    current_schema = models.OneToOneField("SchemaVersion", on_delete=models.PROTECT, null=True, blank=True,
                                          related_name="+")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    modified_at = models.DateTimeField(auto_now=True)
    published_at = models.DateTimeField(null=True, blank=True)
    # Denormalised search text, rewritten by the services on every metadata or schema change:
    # keywords and field names (rank B), description and field descriptions (rank C). The title
    # (rank A) is read from its own column. ``search_vector`` is the weighted tsvector of the
    # three, filled and GIN-indexed on PostgreSQL only (a plain, always-null column on SQLite).
    search_terms = models.TextField(blank=True, editable=False)
    search_text = models.TextField(blank=True, editable=False)
    search_vector = SearchVectorField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["title"]
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=DatasetStatus.values), name="dataset_status_known"),
            models.CheckConstraint(
                condition=models.Q(temporal_start__isnull=True) | models.Q(temporal_end__isnull=True)
                | models.Q(temporal_start__lte=models.F("temporal_end")),
                name="dataset_temporal_ordered",
            ),
        ]

    def __str__(self) -> str:
        return self.title

    @property
    def version(self) -> int:
        """The number of the published schema version (0 before first publication)."""
        return self.current_schema.number if self.current_schema_id and self.current_schema else 0


class SchemaStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    IN_REVIEW = "in_review", "In review"
    CHANGES_REQUESTED = "changes_requested", "Changes requested"
    PUBLISHED = "published", "Published"
    SUPERSEDED = "superseded", "Superseded"


class ChangeKind(models.TextChoices):
    INITIAL = "initial", "Initial schema"
    NONE = "none", "No change to fields"
    ADDITIVE = "additive", "Additive"
    BREAKING = "breaking", "Breaking"


class SchemaVersion(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="schema_versions")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=SchemaStatus.choices, default=SchemaStatus.DRAFT)
    change_kind = models.CharField(max_length=16, choices=ChangeKind.choices, default=ChangeKind.INITIAL)
    # [{"change": "added|removed|renamed|retyped|sensitivity|…", "field": "…", …}]
    changes = models.JSONField(default=list, blank=True)
    # Quality rules of this version, reviewed with it (catalog/quality.py says their shape).
    rules = models.JSONField(default=list, blank=True)
    note = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["dataset", "number"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "number"], name="schema_version_number_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.dataset.slug} v{self.number} ({self.status})"


field_name_validator = RegexValidator(
    r"^[a-z][a-z0-9_]{0,62}$",
    "A field name is 1-63 characters: lowercase letters, digits and underscores, starting with a letter.",
    code="unsafe_name",
)


class Field(models.Model):
    schema = models.ForeignKey(SchemaVersion, on_delete=models.CASCADE, related_name="fields")
    position = models.PositiveIntegerField()
    name = models.CharField(max_length=63, validators=[field_name_validator])
    # Set on a field of a new version that renames a field of the version before it.
    renamed_from = models.CharField(max_length=63, blank=True)
    type = models.CharField(max_length=16, choices=FieldType.choices)
    description = models.TextField(blank=True)
    unit = models.CharField(max_length=40, blank=True)
    nullable = models.BooleanField(default=True)
    is_key = models.BooleanField(default=False)
    sensitivity = models.CharField(max_length=16, choices=Sensitivity.choices)

    class Meta:
        ordering = ["schema", "position"]
        constraints = [
            models.UniqueConstraint(fields=["schema", "name"], name="field_name_unique_in_schema"),
            models.UniqueConstraint(fields=["schema", "position"], name="field_position_unique_in_schema"),
            models.CheckConstraint(condition=models.Q(type__in=FieldType.values), name="field_type_known"),
            models.CheckConstraint(condition=models.Q(sensitivity__in=Sensitivity.values),
                                   name="field_sensitivity_known"),
            models.CheckConstraint(condition=models.Q(is_key=False) | models.Q(nullable=False),
                                   name="field_key_not_nullable"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.type}, {self.sensitivity})"


class DatasetTransition(models.Model):
    """One step of the publication workflow, of the dataset or of one of its schema versions:
    the timeline shown to stewards and reviewers. Append-only, written by the services."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="transitions")
    # Set when the step moved a schema version of an already published dataset. The number is
    # kept as well so that the timeline still names a draft version after it was discarded.
    schema_version = models.ForeignKey(SchemaVersion, on_delete=models.SET_NULL, null=True, blank=True,
                                       related_name="transitions")
    schema_number = models.PositiveIntegerField(null=True, blank=True)
    action = models.CharField(max_length=32)
    from_status = models.CharField(max_length=20, blank=True)
    to_status = models.CharField(max_length=20)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                              related_name="+")
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["dataset", "created_at", "id"]
        get_latest_by = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.dataset_id} {self.action}: {self.from_status} -> {self.to_status}"


class DatasetQuality(models.Model):
    """The dataset's quality as its ingest runs last measured it (``exchange.sync.quality``):
    the score of the last run that evaluated rules, and the scores before it. Kept apart from
    the dataset so that recording a run does not count as a change of the dataset."""

    dataset = models.OneToOneField(Dataset, on_delete=models.CASCADE, related_name="quality")
    score = models.FloatField(null=True, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    run_id = models.BigIntegerField(null=True, blank=True)
    # The rules' results of that run: [{"rule", "check", "field", "severity", "checked", "failed", …}]
    results = models.JSONField(default=list, blank=True)
    # The last scores, oldest first: [{"at": iso, "score": n, "run": id}]
    trend = models.JSONField(default=list, blank=True)

    def __str__(self) -> str:
        return f"quality of {self.dataset_id}: {self.score}"
