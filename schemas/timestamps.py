"""Timestamp parsing shared by every contract.

Producers may send either ISO-8601 with a UTC offset (``2026-11-01T09:30:00+01:00`` or
``...Z``) or epoch milliseconds (an integer). Everything is stored as UTC epoch milliseconds.
"""

from __future__ import annotations

import time
from datetime import datetime

DAY_MS = 86_400_000
# Plausibility bounds: 2000-01-01 .. 2100-01-01. Anything outside is almost certainly a
# unit mistake (seconds instead of milliseconds, microseconds, ...).
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000


def parse_ts_ms(value: object) -> int:
    """Return epoch milliseconds (UTC) for an ISO-8601-with-offset string or epoch-ms number.

    Raises ValueError with a message that says what was wrong.
    """
    if isinstance(value, bool):
        raise ValueError("timestamp must be ISO-8601 with offset or epoch milliseconds, not a boolean")
    if isinstance(value, int | float):
        ms = int(value)
        if ms != value:
            raise ValueError("epoch timestamp must be whole milliseconds")
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            ms = int(text)
        else:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from None
            if parsed.tzinfo is None or parsed.utcoffset() is None:
                raise ValueError(f"timestamp {value!r} has no UTC offset (add 'Z' or '+hh:mm')")
            ms = int(parsed.timestamp() * 1000)
    else:
        raise ValueError("timestamp must be ISO-8601 with offset or epoch milliseconds")
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        if MIN_TS_MS // 1000 <= ms < MAX_TS_MS // 1000:
            raise ValueError(f"timestamp {ms} looks like epoch seconds; send milliseconds")
        raise ValueError(f"timestamp {ms} is outside 2000-01-01..2100-01-01")
    return ms


def iso_utc(ms: int | None) -> str | None:
    """Format epoch milliseconds as ISO-8601 UTC (``2026-11-01T08:30:00.000Z``)."""
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
