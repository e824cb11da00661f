from __future__ import annotations

from typing import Any

from rest_framework import serializers

# The largest 64-bit signed integer: SQLite's INTEGER and PostgreSQL's bigint. A larger id
# from a client could never name a row, and would overflow the database driver (a 500).
MAX_ID = 2**63 - 1


class IdField(serializers.IntegerField):
    """The id of an object, given by a client: outside 1 … MAX_ID it is a 400."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ID)
        super().__init__(**kwargs)


def parse_id(text: str) -> int | None:
    """An id typed by a client, or None: ASCII digits only (``str.isdigit`` also accepts "²",
    which ``int`` refuses) and at most MAX_ID."""
    if not (text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if number <= MAX_ID else None
