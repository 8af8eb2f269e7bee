"""Output and internal record contracts.

Hot-path code builds these as plain dicts (see the ``*_record`` helpers); the pydantic
models document the shape and generate ``schemas/json/*.schema.json``.
"""

from __future__ import annotations

import base64
from hashlib import blake2b
from typing import Any, Literal

from pydantic import BaseModel, Field


def deterministic_id(*parts: object) -> str:
    """A stable 128-bit hex id derived from its parts (same inputs, same id, any process)."""
    return blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=16).hexdigest()


class LifecycleCause(BaseModel):
    event_id: str
    topic: str
    type: str = Field(description="purchase, touchpoint type, customer-update, merge")
    rule: str = Field(description="the lifecycle rule now satisfied, in words")


class LifecycleChange(BaseModel):
    """``lifecycle-changes``: one record per stage transition, keyed by customer id."""

    change_id: str = Field(description="deterministic: same transition, same id")
    customer_id: str
    anonymous: bool = False
    from_stage: str
    to_stage: str
    ts: str = Field(description="event time of the cause, ISO-8601 UTC")
    cause: LifecycleCause


class DeadLetter(BaseModel):
    """``dead-letters``: input that could not be processed, with the reason."""

    topic: str
    partition: int | None
    offset: int | None
    key: str | None = Field(description="original key, utf-8 (or base64 in key_b64)")
    key_b64: str | None = None
    value: str | None = Field(description="original value as utf-8 text when it is text")
    value_b64: str | None = Field(default=None, description="original bytes when not utf-8")
    error: str
    stage: Literal["decode", "validate", "process", "replay"]
    at: str = Field(description="when it was dead-lettered (wall clock, ISO-8601 UTC)")


class IdentityRecord(BaseModel):
    """Internal ``<app>-identity`` topic (co-partitioned with the inputs, keyed by subject)."""

    kind: Literal["link", "merge", "event"]
    anon: str | None = None
    customer: str | None = None
    event_id: str | None = None
    ts: int | None = None
    snapshot: dict[str, Any] | None = None
    topic: str | None = Field(default=None, description="kind=event: original input topic")
    event: dict[str, Any] | None = Field(default=None, description="kind=event: the input event")


def _text_or_b64(raw: bytes | None) -> tuple[str | None, str | None]:
    if raw is None:
        return None, None
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, base64.b64encode(raw).decode("ascii")


def dead_letter_record(
    *,
    topic: str,
    partition: int | None,
    offset: int | None,
    key: bytes | None,
    value: bytes | None,
    error: str,
    stage: str,
    at: str,
) -> dict[str, Any]:
    key_text, key_b64 = _text_or_b64(key)
    value_text, value_b64 = _text_or_b64(value)
    rec: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key_text,
        "value": value_text,
        "error": error,
        "stage": stage,
        "at": at,
    }
    if key_b64 is not None:
        rec["key_b64"] = key_b64
    if value_b64 is not None:
        rec["value_b64"] = value_b64
    return rec


OUTPUT_MODELS: dict[str, type[BaseModel]] = {
    "lifecycle-changes": LifecycleChange,
    "dead-letters": DeadLetter,
    "identity": IdentityRecord,
}
