"""Timestamp parsing and plausibility bounds shared by every contract.

Producers may send either ISO-8601 with a UTC offset (``2026-11-01T09:30:00+01:00`` or
``...Z``) or epoch milliseconds (an integer). Everything is stored as UTC epoch milliseconds.

Parsing (:func:`parse_ts_ms`) only checks the form. Plausibility is a separate check
(:meth:`TsBounds.check`) against settings: a floor (default 1970-01-01) and a skew past the
wall clock (default 1 day), so a purchase log from the 1990s loads and a unit mistake
(seconds, microseconds) is caught with a reason code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

from pydantic_core import PydanticCustomError

from schemas.errors import Reason

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _err(reason: Reason, message: str) -> PydanticCustomError:
    # a ValueError whose type pydantic reports as the reason code
    return PydanticCustomError(reason.value, message)


def parse_until_ms(text: str) -> int:
    """An end of period: a date (``2024-03-31``: the whole day counts, so its last
    millisecond, UTC), an ISO-8601 timestamp with offset, or epoch milliseconds."""
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        return parse_ts_ms(text)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
    return int(end.timestamp() * 1000) - 1


def parse_ts_ms(value: object) -> int:
    """Return epoch milliseconds (UTC) for an ISO-8601-with-offset string or epoch-ms number.

    Raises ValueError (a pydantic custom error whose type is a :class:`Reason` code) with a
    message that says what was wrong. Range is checked separately (:class:`TsBounds`).
    """
    if isinstance(value, bool):
        raise _err(
            Reason.TS_INVALID, "timestamp must be ISO-8601 with offset or epoch milliseconds, not a boolean"
        )
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise _err(Reason.TS_INVALID, "timestamp must be a finite number")
        ms = int(value)
        if ms != value:
            raise _err(Reason.TS_INVALID, "epoch timestamp must be whole milliseconds")
        return ms
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and text.isascii():
            return int(text)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise _err(Reason.TS_INVALID, f"not an ISO-8601 timestamp: {value[:80]!r}") from None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise _err(
                Reason.TS_NO_OFFSET, f"timestamp {value[:80]!r} has no UTC offset (add 'Z' or '+hh:mm')"
            )
        try:
            return int(parsed.timestamp() * 1000)
        except (OverflowError, ValueError, OSError):
            raise _err(Reason.TS_OUT_OF_RANGE, f"timestamp {value[:80]!r} is out of range") from None
    raise _err(Reason.TS_INVALID, "timestamp must be ISO-8601 with offset or epoch milliseconds")


# Epoch values below this (1973-03-03 as milliseconds, year 5138 as seconds) are almost
# always seconds sent where milliseconds belong; the default of PATRONAGE_TS_SECONDS_BELOW_MS.
SECONDS_GUARD_BELOW_MS = 100_000_000_000


@dataclass(frozen=True, slots=True)
class TsBounds:
    """What counts as a plausible event time, as of one wall-clock reading.

    ``floor_ms`` <= ts <= ``ceiling_ms``, and ts >= ``seconds_below_ms`` (a time before it,
    read as milliseconds, is early 1973 or before: almost surely epoch *seconds*; 0 turns
    the guard off).
    """

    floor_ms: int
    ceiling_ms: int
    seconds_below_ms: int = SECONDS_GUARD_BELOW_MS

    def check(self, ts_ms: int) -> Reason | None:
        """None when plausible, else the reason code."""
        if self.floor_ms <= ts_ms <= self.ceiling_ms:
            return Reason.TS_IN_SECONDS if ts_ms < self.seconds_below_ms else None
        return Reason.TS_OUT_OF_RANGE

    def explain(self, ts_ms: int, reason: Reason) -> str:
        if reason is Reason.TS_IN_SECONDS:
            return (
                f"timestamp {ts_ms} reads as {iso_utc_safe(ts_ms)} in milliseconds; it looks like epoch "
                f"seconds ({iso_utc_safe(ts_ms * 1000)}): send milliseconds (times before "
                f"{iso_utc_safe(self.seconds_below_ms)} need PATRONAGE_TS_SECONDS_BELOW_MS=0)"
            )
        hint = ""
        plausible_ms = max(self.floor_ms, self.seconds_below_ms)
        if ts_ms < plausible_ms and plausible_ms <= ts_ms * 1000 <= self.ceiling_ms:
            hint = " (looks like epoch seconds; send milliseconds)"
        elif ts_ms > self.ceiling_ms and plausible_ms <= ts_ms // 1000 <= self.ceiling_ms:
            hint = " (looks like epoch microseconds; send milliseconds)"
        return (
            f"timestamp {ts_ms} ({iso_utc_safe(ts_ms)}) is outside {iso_utc_safe(self.floor_ms)} .. "
            f"{iso_utc_safe(self.ceiling_ms)} (PATRONAGE_TS_FLOOR, PATRONAGE_TS_MAX_FUTURE_S){hint}"
        )


def iso_utc(ms: int | None) -> str | None:
    """Format epoch milliseconds as ISO-8601 UTC (``2026-11-01T08:30:00.000Z``)."""
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)
    day, second = divmod(seconds, 86_400)
    hour, second = divmod(second, 3600)
    minute, second = divmod(second, 60)
    two = _TWO
    return f"{_day(day)}T{two[hour]}:{two[minute]}:{two[second]}.{_THREE[millis]}Z"


# zero-padded numbers, looked up instead of formatted (iso_utc runs ~15 times per customer
# in the Redis projection: 2.4x faster this way)
_TWO = tuple(f"{i:02d}" for i in range(60))
_THREE = tuple(f"{i:03d}" for i in range(1000))


@lru_cache(maxsize=8192)
def _day(day: int) -> str:
    return f"{_EPOCH + timedelta(days=day):%Y-%m-%d}"


def iso_utc_safe(ms: int) -> str:
    """:func:`iso_utc`, or the bare number for a value no calendar can show."""
    try:
        return iso_utc(ms) or str(ms)
    except (OverflowError, ValueError, OSError):
        return f"{ms} ms"
