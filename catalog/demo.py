"""The demo catalogue: realistic datasets of the six demo departments, taken through the real
workflow (a steward creates, describes and submits; a governance reviewer decides). Idempotent:
a dataset whose slug exists is left alone, so a second run creates nothing."""

from __future__ import annotations

from datetime import date
from typing import Any, TextIO

from django.contrib.auth.models import User
from django.db import transaction

from catalog import services
from catalog.models import Dataset
from departments.models import Department

STEWARDS = {"transport": "tina.steward", "health": "hana.steward", "planning": "paula.steward",
            "environment": "emil.steward", "finance": "fiona.steward", "social": "sofia.steward"}
REVIEWERS = ("rita.reviewer", "raj.reviewer")

F = tuple[str, str, str, str, str, bool]  # name, type, sensitivity, description, unit, key


def f(name: str, type_: str, sensitivity: str, description: str, unit: str = "", key: bool = False) -> F:
    return (name, type_, sensitivity, description, unit, key)


# Each: department, slug, title, description, themes, keywords, licence, frequency, spatial,
# (temporal start, end), visibility, final state, fields, quality rules. "schema_v2" adds a
# second version.
DATASETS: list[dict[str, Any]] = [
    {"dept": "planning", "slug": "building-permits", "title": "Building permits",
     "description": "Applications for building permits and the decisions taken on them, one row per permit.",
     "themes": ["REGI", "GOVE"], "keywords": ["permits", "construction", "buildings"], "licence": "CC-BY-4.0",
     "frequency": "WEEKLY", "spatial": "Whole city", "temporal": (date(2015, 1, 1), None), "state": "published",
     "fields": [f("permit_id", "text", "public", "Permit number, e.g. BP-2026-00412.", key=True),
                f("applicant_name", "text", "personal", "Name of the applicant (person or company)."),
                f("address", "text", "internal", "Street address of the site."),
                f("parcel_id", "text", "public", "Cadastral parcel identifier."),
                f("status", "text", "public", "submitted, under_review, approved, refused or withdrawn."),
                f("submitted_on", "date", "public", "Date the application was filed."),
                f("decided_on", "date", "public", "Date of the decision, empty while pending."),
                f("fee_eur", "decimal", "internal", "Permit fee charged.", "EUR")],
     "rules": [{"check": "pattern", "field": "permit_id", "pattern": "^[A-Z]{3}-[0-9]{6}$", "severity": "blocking"},
               {"check": "allowed", "field": "status", "severity": "warning",
                "values": ["submitted", "under_review", "approved", "refused", "withdrawn"]},
               {"check": "range", "field": "fee_eur", "min": 0, "max": 20000, "severity": "warning"},
               {"check": "not_null", "field": "applicant_name", "severity": "warning"},
               {"check": "row_count", "min": 100, "severity": "blocking"}]},
    {"dept": "planning", "slug": "zoning-plan-areas", "title": "Zoning plan areas",
     "description": "Areas of the binding land-use plan with their zoning category and permitted density.",
     "themes": ["REGI"], "keywords": ["zoning", "land use"], "licence": "CC0-1.0", "frequency": "IRREG",
     "spatial": "Whole city", "temporal": (None, None), "state": "published",
     "fields": [f("area_id", "text", "public", "Plan area code.", key=True),
                f("zoning_category", "text", "public", "Residential, mixed, commercial, industrial or green."),
                f("max_floor_area_ratio", "decimal", "public", "Permitted floor area ratio."),
                f("centroid", "geopoint", "public", "Centre of the area (WGS 84)."),
                f("adopted_on", "date", "public", "Date the plan for the area was adopted.")],
     "schema_v2": [f("area_id", "text", "public", "Plan area code.", key=True),
                   f("zoning_category", "text", "public", "Residential, mixed, commercial, industrial or green."),
                   f("max_floor_area_ratio", "decimal", "public", "Permitted floor area ratio."),
                   f("max_height_m", "decimal", "public", "Permitted building height.", "m"),
                   f("centroid", "geopoint", "public", "Centre of the area (WGS 84)."),
                   f("adopted_on", "date", "public", "Date the plan for the area was adopted.")]},
    {"dept": "planning", "slug": "address-register", "title": "Address register",
     "description": "Every official address in the city with its coordinates and district.",
     "themes": ["REGI"], "keywords": ["addresses", "geocoding"], "licence": "CC-BY-4.0", "frequency": "DAILY",
     "spatial": "Whole city", "temporal": (None, None), "state": "published",
     "fields": [f("address_id", "integer", "public", "Stable address identifier.", key=True),
                f("street", "text", "public", "Street name."),
                f("house_number", "text", "public", "House number with suffix."),
                f("postcode", "text", "public", "Postal code."),
                f("district", "text", "public", "City district."),
                f("location", "geopoint", "public", "Entrance coordinates (WGS 84).")]},
    {"dept": "transport", "slug": "bus-stops", "title": "Bus and tram stops",
     "description": "All public transport stops with shelters, accessibility and real-time displays.",
     "themes": ["TRAN"], "keywords": ["public transport", "stops", "accessibility"], "licence": "CC-BY-4.0",
     "frequency": "MONTHLY", "spatial": "Whole city", "temporal": (None, None), "state": "published",
     "fields": [f("stop_id", "text", "public", "GTFS stop identifier.", key=True),
                f("stop_name", "text", "public", "Name shown to passengers."),
                f("location", "geopoint", "public", "Position of the stop pole."),
                f("has_shelter", "boolean", "public", "Whether the stop has a shelter."),
                f("step_free", "boolean", "public", "Step-free boarding possible."),
                f("lines", "json", "public", "Lines serving the stop.")]},
    {"dept": "transport", "slug": "traffic-counts", "title": "Traffic counts",
     "description": "Hourly vehicle counts from induction loops at the main junctions.",
     "themes": ["TRAN"], "keywords": ["traffic", "counts", "mobility"], "licence": "CC0-1.0",
     "frequency": "HOURLY", "spatial": "Main road network", "temporal": (date(2019, 1, 1), None),
     "state": "published",
     "fields": [f("counter_id", "text", "public", "Induction loop identifier.", key=True),
                f("measured_at", "timestamp", "public", "Start of the hour counted.", key=True),
                f("vehicles", "integer", "public", "Vehicles counted in the hour.", "vehicles/h"),
                f("heavy_vehicles", "integer", "public", "Of which heavy goods vehicles.", "vehicles/h")]},
    {"dept": "transport", "slug": "parking-fines", "title": "Parking fines",
     "description": "Parking fines issued by the city's enforcement officers, with payment status.",
     "themes": ["TRAN", "JUST"], "keywords": ["parking", "fines", "enforcement"], "licence": "city-internal",
     "frequency": "DAILY", "spatial": "Whole city", "temporal": (date(2020, 1, 1), None), "state": "published",
     "visibility": "restricted",
     "fields": [f("fine_id", "text", "public", "Fine number.", key=True),
                f("licence_plate", "text", "personal", "Vehicle registration plate."),
                f("issued_at", "timestamp", "internal", "When the fine was issued."),
                f("street", "text", "internal", "Street where the offence was recorded."),
                f("offence_code", "text", "internal", "Offence from the city's tariff."),
                f("amount_eur", "decimal", "internal", "Amount of the fine.", "EUR"),
                f("paid", "boolean", "confidential", "Whether the fine has been paid.")]},
    {"dept": "transport", "slug": "bike-counters", "title": "Cycling counters",
     "description": "Daily bicycle counts from permanent counters on cycle routes.",
     "themes": ["TRAN", "ENVI"], "keywords": ["cycling", "counts"], "licence": "CC-BY-4.0",
     "frequency": "DAILY", "spatial": "Cycle route network", "temporal": (date(2017, 4, 1), None),
     "state": "in_review",
     "fields": [f("counter_id", "text", "public", "Counter identifier.", key=True),
                f("day", "date", "public", "Day counted.", key=True),
                f("bicycles", "integer", "public", "Bicycles counted.", "bicycles/day")]},
    {"dept": "transport", "slug": "road-works", "title": "Road works (until 2024)",
     "description": "Road works notices of the former works register, replaced by the new works portal.",
     "themes": ["TRAN"], "keywords": ["road works", "closures"], "licence": "CC-BY-4.0", "frequency": "NEVER",
     "spatial": "Whole city", "temporal": (date(2012, 1, 1), date(2024, 12, 31)), "state": "deprecated",
     "fields": [f("works_id", "text", "public", "Works notice number.", key=True),
                f("street", "text", "public", "Street affected."),
                f("starts_on", "date", "public", "First day of the works."),
                f("ends_on", "date", "public", "Planned last day."),
                f("contractor", "text", "internal", "Contractor carrying out the works.")]},
    {"dept": "health", "slug": "food-inspections", "title": "Food premises inspections",
     "description": "Hygiene inspections of restaurants, shops and canteens with their scores.",
     "themes": ["HEAL"], "keywords": ["food safety", "inspections", "restaurants"], "licence": "CC-BY-4.0",
     "frequency": "WEEKLY", "spatial": "Whole city", "temporal": (date(2018, 1, 1), None), "state": "published",
     "fields": [f("inspection_id", "text", "public", "Inspection number.", key=True),
                f("premises_name", "text", "public", "Trading name of the premises."),
                f("address", "text", "public", "Address of the premises."),
                f("inspected_on", "date", "public", "Date of the inspection."),
                f("hygiene_score", "integer", "public", "Score from 0 (urgent improvement) to 5 (very good)."),
                f("inspector_name", "text", "personal", "Inspector who carried out the visit."),
                f("follow_up_required", "boolean", "internal", "Whether a follow-up visit is due.")]},
    {"dept": "health", "slug": "vaccination-uptake", "title": "Vaccination uptake by district",
     "description": "Share of children vaccinated per district and vaccine, by school year.",
     "themes": ["HEAL", "SOCI"], "keywords": ["vaccination", "children"], "licence": "CC-BY-4.0",
     "frequency": "ANNUAL", "spatial": "City districts", "temporal": (date(2016, 9, 1), None), "state": "published",
     "fields": [f("district", "text", "public", "City district.", key=True),
                f("school_year", "text", "public", "School year, e.g. 2025/26.", key=True),
                f("vaccine", "text", "public", "Vaccine (MMR, DTaP, …).", key=True),
                f("children", "integer", "internal", "Children of the age group."),
                f("uptake_pct", "decimal", "public", "Share vaccinated.", "%")]},
    {"dept": "health", "slug": "notifiable-diseases", "title": "Notifiable disease cases",
     "description": "Cases of notifiable infectious diseases reported to the health department.",
     "themes": ["HEAL"], "keywords": ["surveillance", "infectious diseases"], "licence": "city-internal",
     "frequency": "DAILY", "spatial": "Whole city", "temporal": (date(2020, 1, 1), None),
     "state": "changes_requested",
     "fields": [f("case_id", "text", "confidential", "Case number.", key=True),
                f("disease", "text", "internal", "Disease (ICD-10 code)."),
                f("reported_on", "date", "internal", "Date of notification."),
                f("age_band", "text", "confidential", "Age band of the patient."),
                f("patient_postcode", "text", "personal", "Postcode of the patient's residence.")]},
    {"dept": "health", "slug": "pharmacies", "title": "Pharmacies and opening hours",
     "description": "Community pharmacies with their opening hours and night duty rota.",
     "themes": ["HEAL"], "keywords": ["pharmacies", "opening hours"], "licence": "CC0-1.0",
     "frequency": "WEEKLY", "spatial": "Whole city", "temporal": (None, None), "state": "published",
     "fields": [f("pharmacy_id", "text", "public", "Licence number of the pharmacy.", key=True),
                f("name", "text", "public", "Name of the pharmacy."),
                f("location", "geopoint", "public", "Position."),
                f("opening_hours", "json", "public", "Opening hours per weekday.")]},
    {"dept": "environment", "slug": "air-quality", "title": "Air quality measurements",
     "description": "Hourly NO2, PM10 and PM2.5 concentrations from the city's monitoring stations.",
     "themes": ["ENVI", "HEAL"], "keywords": ["air quality", "pollution", "NO2", "particulate matter"],
     "licence": "CC-BY-4.0", "frequency": "HOURLY", "spatial": "Whole city", "temporal": (date(2010, 1, 1), None),
     "state": "published",
     "fields": [f("station_id", "text", "public", "Monitoring station code.", key=True),
                f("measured_at", "timestamp", "public", "End of the hourly averaging period.", key=True),
                f("no2_ugm3", "decimal", "public", "Nitrogen dioxide.", "µg/m³"),
                f("pm10_ugm3", "decimal", "public", "Particulate matter < 10 µm.", "µg/m³"),
                f("pm25_ugm3", "decimal", "public", "Particulate matter < 2.5 µm.", "µg/m³"),
                f("validated", "boolean", "public", "Whether the value passed validation.")],
     "rules": [{"check": "range", "field": "no2_ugm3", "min": 0, "max": 400, "severity": "blocking"},
               {"check": "not_null", "field": "pm10_ugm3", "severity": "warning"},
               {"check": "freshness", "field": "measured_at", "max_age_hours": 24, "severity": "warning"}]},
    {"dept": "environment", "slug": "noise-complaints", "title": "Noise complaints",
     "description": "Complaints about noise received by the environment hotline and how they were handled.",
     "themes": ["ENVI", "JUST"], "keywords": ["noise", "complaints"], "licence": "city-internal",
     "frequency": "DAILY", "spatial": "Whole city", "temporal": (date(2021, 1, 1), None), "state": "published",
     "fields": [f("complaint_id", "text", "public", "Complaint number.", key=True),
                f("received_at", "timestamp", "internal", "When the complaint came in."),
                f("complainant_name", "text", "personal", "Who complained."),
                f("complainant_phone", "text", "personal", "Phone number for call-backs."),
                f("source_type", "text", "internal", "Construction, traffic, neighbours, venue, …"),
                f("address", "text", "confidential", "Address of the noise source."),
                f("closed_on", "date", "internal", "When the case was closed.")]},
    {"dept": "environment", "slug": "street-trees", "title": "Street trees",
     "description": "The city's tree register: species, planting year, trunk girth and condition.",
     "themes": ["ENVI"], "keywords": ["trees", "green spaces"], "licence": "CC0-1.0", "frequency": "MONTHLY",
     "spatial": "Whole city", "temporal": (None, None), "state": "published",
     "fields": [f("tree_id", "integer", "public", "Tree tag number.", key=True),
                f("species", "text", "public", "Botanical name."),
                f("planted_year", "integer", "public", "Year of planting."),
                f("girth_cm", "integer", "public", "Trunk girth at 1 m height.", "cm"),
                f("condition", "text", "public", "good, fair, poor or dead."),
                f("location", "geopoint", "public", "Position.")]},
    {"dept": "environment", "slug": "waste-collection", "title": "Waste collection rounds",
     "description": "Collected tonnage per round and waste stream.",
     "themes": ["ENVI"], "keywords": ["waste", "recycling"], "licence": "CC-BY-4.0", "frequency": "WEEKLY",
     "spatial": "Whole city", "temporal": (date(2022, 1, 1), None), "state": "in_review",
     "fields": [f("round_id", "text", "public", "Collection round.", key=True),
                f("collected_on", "date", "public", "Day of collection.", key=True),
                f("waste_stream", "text", "public", "residual, paper, glass, organic, packaging.", key=True),
                f("tonnes", "decimal", "public", "Weight collected.", "t")]},
    {"dept": "finance", "slug": "procurement-contracts", "title": "Procurement contracts",
     "description": "Contracts awarded by the city above the publication threshold.",
     "themes": ["ECON", "GOVE"], "keywords": ["procurement", "contracts", "spending"], "licence": "CC-BY-4.0",
     "frequency": "MONTHLY", "spatial": "Whole city", "temporal": (date(2016, 1, 1), None), "state": "published",
     "fields": [f("contract_id", "text", "public", "Contract reference.", key=True),
                f("supplier_name", "text", "public", "Company awarded the contract."),
                f("supplier_vat_id", "text", "public", "VAT identification number."),
                f("awarded_on", "date", "public", "Date of award."),
                f("value_eur", "decimal", "public", "Contract value excluding VAT.", "EUR"),
                f("procedure", "text", "public", "Open, restricted, negotiated, …"),
                f("evaluation_notes", "text", "confidential", "Internal evaluation notes.")]},
    {"dept": "finance", "slug": "budget-execution", "title": "Budget execution",
     "description": "Budgeted and actual spending per department and budget line, monthly.",
     "themes": ["ECON", "GOVE"], "keywords": ["budget", "spending"], "licence": "CC-BY-4.0",
     "frequency": "MONTHLY", "spatial": "Whole city", "temporal": (date(2018, 1, 1), None), "state": "published",
     "fields": [f("budget_line", "text", "public", "Budget line code.", key=True),
                f("month", "date", "public", "First day of the month.", key=True),
                f("department_code", "text", "public", "Spending department."),
                f("budgeted_eur", "decimal", "public", "Budgeted amount.", "EUR"),
                f("spent_eur", "decimal", "public", "Actual spending.", "EUR")]},
    {"dept": "finance", "slug": "business-tax-accounts", "title": "Business tax accounts",
     "description": "Local business tax assessments and payments per taxpayer.",
     "themes": ["ECON"], "keywords": ["tax", "businesses"], "licence": "city-internal", "frequency": "QUARTERLY",
     "spatial": "Whole city", "temporal": (date(2019, 1, 1), None), "state": "published",
     "fields": [f("taxpayer_id", "text", "confidential", "Tax account number.", key=True),
                f("tax_year", "integer", "internal", "Assessment year.", key=True),
                f("business_name", "text", "internal", "Registered business name."),
                f("owner_name", "text", "personal", "Sole trader's name, if any."),
                f("assessed_eur", "decimal", "confidential", "Tax assessed.", "EUR"),
                f("paid_eur", "decimal", "confidential", "Tax paid so far.", "EUR")]},
    {"dept": "social", "slug": "housing-benefit-claims", "title": "Housing benefit claims",
     "description": "Claims for housing benefit with decision and monthly amount.",
     "themes": ["SOCI"], "keywords": ["housing", "benefits"], "licence": "city-internal", "frequency": "DAILY",
     "spatial": "Whole city", "temporal": (date(2020, 1, 1), None), "state": "published",
     "fields": [f("claim_id", "text", "internal", "Claim number.", key=True),
                f("claimant_name", "text", "personal", "Name of the claimant."),
                f("date_of_birth", "date", "personal", "Claimant's date of birth."),
                f("household_size", "integer", "confidential", "People in the household."),
                f("district", "text", "internal", "District of residence."),
                f("decision", "text", "internal", "granted, refused or pending."),
                f("monthly_amount_eur", "decimal", "confidential", "Benefit per month.", "EUR")]},
    {"dept": "social", "slug": "elderly-care-places", "title": "Elderly care places",
     "description": "Care homes and day centres with their capacity and free places.",
     "themes": ["SOCI", "HEAL"], "keywords": ["elderly care", "care homes"], "licence": "CC-BY-4.0",
     "frequency": "WEEKLY", "spatial": "Whole city", "temporal": (None, None), "state": "published",
     "fields": [f("facility_id", "text", "public", "Facility identifier.", key=True),
                f("name", "text", "public", "Name of the facility."),
                f("kind", "text", "public", "care_home or day_centre."),
                f("places", "integer", "public", "Places in total."),
                f("free_places", "integer", "internal", "Places free this week."),
                f("location", "geopoint", "public", "Position.")]},
    {"dept": "social", "slug": "childcare-waiting-list", "title": "Childcare waiting list",
     "description": "Children waiting for a childcare place, by district and age group (aggregated).",
     "themes": ["SOCI", "EDUC"], "keywords": ["childcare", "waiting list"], "licence": "CC-BY-4.0",
     "frequency": "MONTHLY", "spatial": "City districts", "temporal": (date(2023, 1, 1), None), "state": "draft",
     "fields": [f("district", "text", "public", "City district.", key=True),
                f("month", "date", "public", "Month of the count.", key=True),
                f("age_group", "text", "public", "0-1, 1-3 or 3-6.", key=True),
                f("children_waiting", "integer", "public", "Children on the list.")]},
]

WALK = {
    "draft": [], "in_review": ["submit"], "changes_requested": ["submit", "request_changes"],
    "published": ["submit", "approve"], "deprecated": ["submit", "approve", "deprecate"],
}
COMMENTS = {
    "submit": "Ready for review.",
    "approve": "Schema and sensitivity classes checked; approved.",
    "request_changes": "Patient postcode is too precise for this purpose: use districts, and describe the "
                       "retention period.",
    "deprecate": "Replaced by the new works portal; kept for history.",
}


def _fields(specs: list[F]) -> list[dict[str, Any]]:
    return [{"name": n, "type": t, "sensitivity": s, "description": d, "unit": u, "is_key": k, "nullable": not k}
            for n, t, s, d, u, k in specs]


def seed(*, stdout: TextIO) -> int:
    users = {u.username: u for u in User.objects.filter(username__in=[*STEWARDS.values(), *REVIEWERS])}
    departments = {d.code: d for d in Department.objects.filter(code__in=STEWARDS)}
    existing = set(Dataset.objects.filter(slug__in=[d["slug"] for d in DATASETS]).values_list("slug", flat=True))
    created = 0
    for i, spec in enumerate(DATASETS):
        steward = users.get(STEWARDS[spec["dept"]])
        department = departments.get(spec["dept"])
        if spec["slug"] in existing or steward is None or department is None:
            continue
        reviewer = users.get(REVIEWERS[i % 2])
        created += _seed_one(spec, steward, reviewer, department)
    if created:
        stdout.write(f"Catalogue: {created} demo datasets published through the review workflow.\n")
    return created


@transaction.atomic
def _seed_one(spec: dict[str, Any], steward: User, reviewer: User | None, department: Department) -> int:
    start, end = spec["temporal"]
    dataset = services.dataset_create(
        actor=steward, department=department, title=spec["title"], slug=spec["slug"],
        description=spec["description"], themes=spec["themes"], keywords=spec["keywords"],
        licence=spec["licence"], update_frequency=spec["frequency"], temporal_start=start, temporal_end=end,
        spatial=spec["spatial"], visibility=spec.get("visibility", "city"),
    )
    services.dataset_schema_set(actor=steward, dataset=dataset, fields=_fields(spec["fields"]),
                                rules=spec.get("rules", []))
    for action in WALK[spec["state"]]:
        actor = reviewer if action in ("approve", "request_changes") else steward
        dataset = services.dataset_transition(actor=actor, dataset=dataset, action=action,
                                              comment=COMMENTS.get(action, ""))
    if "schema_v2" in spec:
        services.dataset_schema_set(actor=steward, dataset=dataset, fields=_fields(spec["schema_v2"]),
                                    note="Adds the permitted building height from the 2026 plan amendment.")
        services.dataset_transition(actor=steward, dataset=dataset, action="submit",
                                    comment="Additive change: new column max_height_m.")
    return 1
