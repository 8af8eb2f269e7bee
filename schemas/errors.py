"""Why a record was rejected: stable reason codes beside the human detail.

Dead letters carry ``reason`` (one of :class:`Reason`, stable across releases, safe as a
metric label) and ``error`` (the detail in words, naming the field and the value).
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # decode
    EMPTY_VALUE = "empty_value"  # a tombstone (null value) on an input topic
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    # validate
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"  # wrong type, bad format, out of the field's range
    TS_INVALID = "ts_invalid"  # not a timestamp at all
    TS_NO_OFFSET = "ts_no_offset"  # ISO-8601 without a UTC offset
    TS_OUT_OF_RANGE = "ts_out_of_range"  # before the floor or too far past the wall clock
    TS_IN_SECONDS = "ts_in_seconds"  # an epoch value that reads as seconds, not milliseconds
    AMOUNT_OUT_OF_RANGE = "amount_out_of_range"  # above PATRONAGE_MAX_AMOUNT
    CURRENCY_MISMATCH = "currency_mismatch"
    # process
    UNKNOWN_TOPIC = "unknown_topic"
    IDENTITY_CONFLICT = "identity_conflict"  # an anonymous id claimed by two customers
    TOO_MANY_ALIASES = "too_many_aliases"
    DUPLICATE_CONFLICT = "duplicate_conflict"  # an event id applied before, with other content
    BEYOND_DEDUPE_HORIZON = "beyond_dedupe_horizon"  # unknown id older than the id memory's horizon
    TOO_LARGE = "too_large"  # a value above PATRONAGE_MAX_VALUE_BYTES
    INTERNAL_ERROR = "internal_error"  # a bug: the record is kept, the worker goes on
    # replay (the CLI reading a file)
    NO_KEY = "no_key"


class Stage(StrEnum):
    DECODE = "decode"
    VALIDATE = "validate"
    PROCESS = "process"
    REPLAY = "replay"


class Rejected(Exception):
    """A record that cannot be applied: becomes a dead letter with ``reason`` and ``detail``."""

    def __init__(self, stage: Stage, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.stage = stage
        self.reason = reason
        self.detail = detail
