"""Output and internal record contracts.

Hot-path code builds these as plain dicts (see the ``*_record`` helpers); the pydantic
models document the shape and generate ``schemas/json/*.schema.json``.
"""

from __future__ import annotations

import base64
from hashlib import blake2b, sha256
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.errors import Reason, Stage


def deterministic_id(*parts: object) -> str:
    """A stable 128-bit hex id derived from its parts (same inputs, same id, any process)."""
    return blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).hexdigest()


class LifecycleCause(BaseModel):
    event_id: str
    topic: str
    type: str = Field(description="purchase, touchpoint type, customer-update, merge, deadline")
    rule: str = Field(description="the lifecycle rule now satisfied, in words")


class LifecycleChange(BaseModel):
    """``lifecycle-changes``: one record per stage transition, keyed by customer id."""

    change_id: str = Field(description="deterministic: same transition, same id")
    customer_id: str
    anonymous: bool = False
    from_stage: str
    to_stage: str
    ts: str = Field(
        description="when it happened, ISO-8601 UTC: the event time of the cause, or for risk "
        "stages (at_risk, lapsed, lost) the deadline on the configured clock"
    )
    cause: LifecycleCause


class RecordOrigin(BaseModel):
    """Where a record was read: topic (its real name), partition, offset."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    topic: str
    partition: int
    offset: int


class DeadLetter(BaseModel):
    """``dead-letters``: input that could not be processed, with the reason.

    ``topic``/``partition``/``offset`` name the input record as it was sent, also when it
    failed on the worker it was re-routed to (through the identity topic); ``via`` then
    names the identity hop that failed."""

    topic: str = Field(description="the input record's topic (a re-routed record's too: see via)")
    partition: int | None
    offset: int | None
    via: RecordOrigin | None = Field(
        default=None,
        description="only for a record re-routed through the identity topic (keyed to another "
        "partition, or an event for a merged anonymous id): where the hop that failed was read; "
        "value is then the hop record, the event under its 'event'",
    )
    key: str | None = Field(description="original key, utf-8 (or base64 in key_b64)")
    key_b64: str | None = None
    value: str | None = Field(description="original value as utf-8 text when it is text")
    value_b64: str | None = Field(default=None, description="original bytes when not utf-8")
    value_bytes: int | None = Field(default=None, description="size of the original value")
    value_sha256: str | None = Field(default=None, description="digest of the original value (hex)")
    truncated: bool = Field(
        default=False,
        description="the kept key/value are cut to PATRONAGE_DEAD_LETTER_MAX_BYTES (size and digest "
        "describe the original)",
    )
    reason: Reason = Field(description="stable reason code (group and alert on this)")
    error: str = Field(description="the detail in words, naming the field")
    stage: Stage
    at: str = Field(description="when it was dead-lettered (wall clock, ISO-8601 UTC)")


class IdentityRecord(BaseModel):
    """Internal ``<app>-identity`` topic (co-partitioned with the inputs, keyed by subject).

    ``link`` (at the anonymous id) and ``merge`` (at the customer) carry the merge protocol;
    ``event`` carries an input event to the partition that owns its subject.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["link", "merge", "event"]
    anon: str | None = None
    customer: str | None = None
    event_id: str | None = None
    ts: int | None = None
    snapshot: dict[str, Any] | None = None
    topic: str | None = Field(default=None, description="kind=event: original input topic")
    event: dict[str, Any] | None = Field(default=None, description="kind=event: the input event")
    origin: RecordOrigin | None = Field(
        default=None,
        description="the input record behind the hop (kept from hop to hop): a dead letter of "
        "the hop names it",
    )

    @field_validator("anon", "customer", "event_id", mode="before")
    @classmethod
    def _ids_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    def require(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"identity {self.kind!r} record needs {', '.join(missing)}")


TriggerType = Literal[
    "churn_risk", "stalled_prospect", "won_back", "churn_risk_withdrawn", "new_stock_for_interest"
]
TriggerReason = Literal[
    "lapse", "complaint", "experience", "stalled", "came_back", "premature", "interest", "affinity"
]
RecipientKind = Literal["account_owner", "store", "team", "customer", "payer"]
Channel = Literal["push", "email", "sms", "in_store"]


class StockItem(BaseModel):
    sku: str
    category: str
    qty: int
    store_id: str | None = None
    region: str | None = None


class InterestBasis(BaseModel):
    """The interest a new-stock trigger rests on (in the arrival's category; for ``affinity``
    in the source category, with the lift)."""

    category: str
    score: float = Field(description="0.5 x spend share + 0.5 x occasion share + touch bonus")
    spend_share: float = Field(description="recency-weighted share of the customer's spend")
    occasions_in_window: int = Field(description="orders with the category within the window")
    lift: float | None = Field(default=None, description="affinity: lift(source -> arrival category)")


class Trigger(BaseModel):
    """``triggers``: a decision that someone should act, keyed by customer id.

    ``trigger_id`` is deterministic (same type, customer and episode, same id - also after a
    restart or a replay), and the whole record is decided once and stored before it is sent,
    so a re-send after a crash is byte-for-byte the same record.
    """

    model_config = ConfigDict(extra="forbid")

    trigger_id: str = Field(
        description="deterministic: hash of (type, customer, episode) - for new_stock_for_interest of "
        "(type, customer, first arrival of the notification)"
    )
    type: TriggerType
    customer_id: str
    recipient_id: str = Field(
        description="who should act or hear: store id, account owner id, team, the customer, or the payer"
    )
    recipient_kind: RecipientKind
    ts: str = Field(description="when the condition arose, on the configured clock (ISO-8601 UTC)")
    reason: TriggerReason
    episode: int | None = Field(
        default=None, description="churn types: the customer's churn episode (a come-back starts the next)"
    )
    details: dict[str, Any] = Field(
        description="churn_risk: days_silent, usual_interval_days, p_alive, expected_purchases_90d, "
        "lifetime_value, currency, tier, purchases, risk_stage, complaint{...}, experience{...}; "
        "stalled_prospect: asks{type: n}, first_ask_at, last_ask_at, touchpoints[...]; "
        "won_back: purchase_event_id, purchase_at, alerted_at, alert_reason, alert_trigger_id, days_silent; "
        "churn_risk_withdrawn (a lapse alert decided ahead of a purchase older than it): purchase_event_id, "
        "purchase_at, alerted_at, alert_reason, alert_trigger_id, days_before_alert; "
        "new_stock_for_interest: arrivals (coalesced), first_arrival_at, first_arrival_id, experiment "
        "(held out); churn_risk and new_stock_for_interest: segment and tier, the uplift cell the "
        "trigger is measured in"
    )
    # customer-facing types (new_stock_for_interest), decided by the notification gate
    channel: Channel | None = Field(default=None, description="the consented channel chosen")
    deliver: bool | None = Field(
        default=None,
        description="false: held out (control group) - record only, do not deliver "
        "(new_stock_for_interest, churn_risk, and the won_back or churn_risk_withdrawn closing a held-out alert)",
    )
    holdout: bool | None = Field(default=None, description="in the type's control group (measures uplift)")
    items: list[StockItem] | None = Field(default=None, description="at most gate_max_items arrivals")
    interest: InterestBasis | None = None
    user_id: str | None = Field(default=None, description="recipient_kind payer: the customer it is for")


class ChurnModelRecord(BaseModel):
    """``<app>-churn-model`` (compacted, key ``bgnbd``): BG/NBD parameters for P(alive).

    Written by ``patronage churn-model fit --publish``; workers read the latest record."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: Literal["bgnbd"] = "bgnbd"
    r: float = Field(gt=0, allow_inf_nan=False)
    alpha: float = Field(gt=0, allow_inf_nan=False)
    a: float = Field(gt=0, allow_inf_nan=False)
    b: float = Field(gt=0, allow_inf_nan=False)
    unit: Literal["days", "weeks"] = "days"
    log_likelihood: float | None = None
    customers: int | None = None
    until: str | None = Field(default=None, description="end of the calibration period (ISO-8601)")
    fitted_at: str | None = Field(default=None, description="when the fit ran (ISO-8601)")


def _text_or_b64(raw: bytes | None, cut: bool = False) -> tuple[str | None, str | None]:
    """UTF-8 text when it is text (a ``cut`` value may end inside a character), else base64."""
    if raw is None:
        return None, None
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        if cut and exc.start >= len(raw) - 3:
            try:
                return raw[: exc.start].decode("utf-8"), None
            except UnicodeDecodeError:
                pass
        return None, base64.b64encode(raw).decode("ascii")


def dead_letter_record(
    *,
    topic: str,
    partition: int | None,
    offset: int | None,
    key: bytes | None,
    value: bytes | None,
    reason: Reason,
    error: str,
    stage: Stage,
    at: str,
    max_bytes: int = 65_536,
    via: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The dead-letter record. Key and value are kept up to ``max_bytes`` each (then cut,
    ``truncated: true``), so the record always fits a broker's message limit; the original
    size and SHA-256 always describe the whole value. ``via``: the identity hop a re-routed
    record failed on (``topic``/``partition``/``offset`` are then the input record's)."""
    truncated = False
    if key is not None and len(key) > max_bytes:
        key, truncated = key[:max_bytes], True
    kept = value
    if value is not None and len(value) > max_bytes:
        kept, truncated = value[:max_bytes], True
    key_text, key_b64 = _text_or_b64(key, truncated)
    value_text, value_b64 = _text_or_b64(kept, truncated)
    rec: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key_text,
        "value": value_text,
        "reason": reason.value,
        "error": error if len(error) <= 2000 else error[:2000] + "…",
        "stage": stage.value,
        "at": at,
    }
    if via is not None:
        rec["via"] = via
    if key_b64 is not None:
        rec["key_b64"] = key_b64
    if value_b64 is not None:
        rec["value_b64"] = value_b64
    if value is not None:
        rec["value_bytes"] = len(value)
        rec["value_sha256"] = sha256(value).hexdigest()
    rec["truncated"] = truncated  # always there, as the contract lists it (false: kept whole)
    return rec


OUTPUT_MODELS: dict[str, type[BaseModel]] = {
    "triggers": Trigger,
    "lifecycle-changes": LifecycleChange,
    "dead-letters": DeadLetter,
    "identity": IdentityRecord,
    "churn-model": ChurnModelRecord,
}
