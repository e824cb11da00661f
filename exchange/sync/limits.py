"""Limits on what a file or URL source may make a worker hold: the longest line of a CSV or
NDJSON source, and the most columns. A source beyond them fails its run with the reason,
before anything is merged (the run's staged rows are dropped with it)."""

from __future__ import annotations

import io
from typing import IO, Any

from django.conf import settings

from exchange.sync.errors import SourceError


class LineLimited(io.RawIOBase):
    """A byte stream that raises SourceError once a line grows longer than ``limit`` bytes,
    before a reader (``csv``, ``readline``) has gathered all of it in memory."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._line = 1
        self._length = 0  # bytes of the current line so far

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        # read1: what is there, so that rows flow as a download trickles in
        read1 = getattr(self._stream, "read1", None)
        data = read1(len(buffer)) if read1 is not None else self._stream.read(len(buffer))
        if not data:
            return 0
        start = 0
        while True:
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline
            self._length += end - start
            if self._length > self._limit:
                raise SourceError(
                    f"Line {self._line} of the file is longer than {self._limit} bytes (SYNC_MAX_LINE_BYTES); "
                    f"nothing was loaded. Is it a CSV or NDJSON file at all?")
            if newline < 0:
                break
            self._line += 1
            self._length = 0
            start = newline + 1
        buffer[: len(data)] = data
        return len(data)


def line_limited(stream: IO[bytes], *, file_format: str) -> IO[bytes]:
    """``stream`` with the line limit, for the line-based formats (a JSON document may well
    be one long line: its records are parsed one at a time anyway)."""
    if file_format not in ("csv", "ndjson"):
        return stream
    return io.BufferedReader(LineLimited(stream, settings.SYNC_MAX_LINE_BYTES))


def check_columns(columns: list[str]) -> None:
    if len(columns) > settings.SYNC_MAX_COLUMNS:
        raise SourceError(f"The source has {len(columns)} columns; at most {settings.SYNC_MAX_COLUMNS} are read "
                          f"(SYNC_MAX_COLUMNS). Nothing was loaded.")
