from __future__ import annotations

from typing import Any

import pytest

from exchange.objections import services
from tests.access_factories import make_cast
from tests.records_support import grant, load_rows, published_dataset

ROWS = [
    {"permit_id": 1, "applicant_name": "Ada Okafor", "phone": "+49 30 5550001", "district": "North",
     "fee_eur": "120.00", "approved": True, "submitted_on": "2026-01-05", "secret_note": "NOTE-SECRET-1"},
    {"permit_id": 2, "applicant_name": "Ben Ito", "phone": "+49 30 5550002", "district": "South",
     "fee_eur": "80.00", "approved": False, "submitted_on": "2026-01-06", "secret_note": "NOTE-SECRET-2"},
    {"permit_id": 3, "applicant_name": "Cleo Diaz", "phone": "+49 30 5550003", "district": "North",
     "fee_eur": "95.50", "approved": True, "submitted_on": "2026-01-07", "secret_note": "NOTE-SECRET-3"},
]


@pytest.fixture
def cast(people, department, other_department) -> dict[str, Any]:
    """Transport owns the permits; health reads them through a department grant (the key and
    district in clear, the phone masked, nothing else)."""
    return make_cast(people, department, other_department)


@pytest.fixture
def dataset(department, other_department, cast):
    dataset = published_dataset(department)
    load_rows(dataset, ROWS)
    grant(dataset, department=other_department, approved_by=cast["steward"],
          fields={"permit_id": "clear", "district": "clear", "phone": "masked"})
    return dataset


def raise_objection(actor: Any, dataset: Any, **overrides: Any) -> Any:
    kwargs: dict[str, Any] = {"kind": "wrong_value", "comment": "District looks wrong for permit 2.",
                              "fields": ["district"], "record_keys": ["2"], **overrides}
    return services.objection_create(actor=actor, dataset=dataset, **kwargs)
