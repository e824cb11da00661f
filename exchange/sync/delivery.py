"""Delivery: store → a subscribing department's target."""

from __future__ import annotations

from exchange.models import Run


class TargetError(Exception):
    """The target cannot be written as configured; retrying will not help."""


def delivery_execute(*, run: Run) -> None:
    raise TargetError("Delivery is not available yet.")
