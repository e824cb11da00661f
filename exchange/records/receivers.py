"""How the record store reacts to a published schema version, connected in
ExchangeConfig.ready() (catalog.signals.schema_version_published, sent after commit)."""

from __future__ import annotations

from typing import Any

from catalog.models import Dataset
from exchange.records.store import store_ensure_table


def on_schema_version_published_store(sender: Any, *, dataset: Dataset, **kwargs: Any) -> None:
    """Create or evolve the dataset's store table for its newly published schema."""
    store_ensure_table(Dataset.objects.get(pk=dataset.pk))
