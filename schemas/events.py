"""Input event contracts (one pydantic model per input topic).

The JSON Schema files in ``schemas/json/`` are generated from these models
(``python -m schemas.export``) so producers in any language validate against the same rules.
Validation errors name the field: ``items.0.qty: Input should be greater than 0``.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from schemas.timestamps import parse_ts_ms


def _to_cents(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError("must be a number")
    if isinstance(value, float) and not math.isfinite(value * 100):
        raise ValueError("must be a finite number")
    if isinstance(value, int | float):
        scaled = value * 100
        cents = round(scaled)
        # Fast path: values with at most two decimals land within float noise of an integer.
        if abs(scaled - cents) < 1e-6 and 0 <= cents <= 10**13:
            return int(cents)
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not amount.is_finite():
        raise ValueError("must be a finite number")
    cents = int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    if cents < 0:
        raise ValueError("must not be negative (send refunds as their own event type)")
    if cents > 10**13:
        raise ValueError("is implausibly large (> 100 billion)")
    return cents


Id = Annotated[
    str,
    Field(min_length=1, max_length=200),
    WithJsonSchema({"type": ["string", "integer"], "minLength": 1, "maxLength": 200}),
]
Timestamp = Annotated[
    int,
    BeforeValidator(parse_ts_ms),
    WithJsonSchema(
        {
            "description": "ISO-8601 with UTC offset, or epoch milliseconds",
            "oneOf": [
                {"type": "string", "format": "date-time"},
                {"type": "integer", "minimum": 946684800000, "maximum": 4102444800000},
            ],
        }
    ),
]
Cents = Annotated[
    int,
    BeforeValidator(_to_cents),
    WithJsonSchema({"type": "number", "minimum": 0, "description": "major units, e.g. 12.50"}),
]
ShortStr = Annotated[str, Field(min_length=1, max_length=200)]


class _Event(BaseModel):
    # Numeric ids (common in source systems) are accepted and stored as decimal strings.
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True, coerce_numbers_to_str=True)


class Item(_Event):
    sku: ShortStr
    category: ShortStr
    qty: int = Field(gt=0, le=1_000_000)
    # unit price in major units; validated in Rust (no Python hook per line item)
    price: float = Field(ge=0, le=1e11, allow_inf_nan=False)

    @property
    def price_cents(self) -> int:
        return round(self.price * 100)


class Purchase(_Event):
    """An order. Keyed by ``customer_id`` on the ``purchases`` topic."""

    event_id: Id
    customer_id: Id
    ts: Timestamp
    amount_cents: Cents = Field(alias="amount")
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    items: list[Item] = Field(default_factory=list, max_length=1000)
    store_id: Id | None = None
    channel: ShortStr | None = None
    payer_id: Id | None = None

    @property
    def subject(self) -> str:
        return self.customer_id


class TouchType(StrEnum):
    view = "view"
    visit = "visit"
    inquiry = "inquiry"
    cart = "cart"
    campaign_click = "campaign_click"
    app_open = "app_open"
    signup = "signup"
    support = "support"
    complaint = "complaint"
    review = "review"
    referral = "referral"
    identify = "identify"


class Touchpoint(_Event):
    """A non-purchase interaction. Keyed by ``customer_id``, else ``anonymous_id``.

    ``identify`` links an anonymous visitor to a known customer: send ``customer_id`` (the
    known id) plus ``anonymous_id`` (or ``alias_of``) naming the anonymous id to merge.
    """

    event_id: Id
    customer_id: Id | None = None
    anonymous_id: Id | None = None
    ts: Timestamp
    type: TouchType
    channel: ShortStr | None = None
    store_id: Id | None = None
    category: ShortStr | None = None
    sku: ShortStr | None = None
    rating: int | None = Field(default=None, ge=1, le=5)
    duration_s: float | None = Field(default=None, ge=0, le=86_400 * 7)
    alias_of: Id | None = None

    @model_validator(mode="after")
    def _who(self) -> Touchpoint:
        if self.customer_id is None and self.anonymous_id is None:
            raise ValueError("customer_id or anonymous_id is required")
        if self.type is TouchType.identify:
            if self.customer_id is None:
                raise ValueError("identify needs customer_id (the known customer)")
            if self.anonymous_alias is None:
                raise ValueError("identify needs anonymous_id or alias_of (the id to merge)")
        return self

    @property
    def subject(self) -> str:
        return self.customer_id if self.customer_id is not None else self.anonymous_id  # type: ignore[return-value]

    @property
    def anonymous_alias(self) -> str | None:
        """For identify: the anonymous id that becomes this customer."""
        alias = self.alias_of or self.anonymous_id
        return alias if alias != self.customer_id else None


class StockArrival(_Event):
    """Stock landed. Keyed by ``category`` on the ``stock-arrivals`` topic."""

    event_id: Id
    ts: Timestamp
    sku: ShortStr
    category: ShortStr
    qty: int = Field(gt=0)
    store_id: Id | None = None
    region: ShortStr | None = None
    tags: list[ShortStr] = Field(default_factory=list, max_length=50)

    @property
    def subject(self) -> str:
        return self.category


class QuietHours(_Event):
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")


class CustomerUpdate(_Event):
    """Profile facts that are not behaviour. Keyed by ``customer_id``.

    Every field is optional; a field that is present replaces the stored value if this
    update is newer (by ``ts``, ties broken by ``event_id``). ``erase: true`` deletes the
    customer's state (right to erasure).
    """

    event_id: Id
    customer_id: Id
    ts: Timestamp
    loyalty_member: bool | None = None
    consent: dict[Literal["email", "sms", "push", "in_store"], bool] | None = None
    timezone: ShortStr | None = None
    quiet_hours: QuietHours | None = None
    household_id: Id | None = None
    payer_id: Id | None = None
    erase: bool = False

    @property
    def subject(self) -> str:
        return self.customer_id

    def changed_fields(self) -> dict[str, Any]:
        """The profile fields this update sets (those present in the message)."""
        fields = ("loyalty_member", "consent", "timezone", "quiet_hours", "household_id", "payer_id")
        out: dict[str, Any] = {}
        for name in fields:
            if name in self.model_fields_set:
                value = getattr(self, name)
                out[name] = value.model_dump() if isinstance(value, BaseModel) else value
        return out


InputEvent = Purchase | Touchpoint | StockArrival | CustomerUpdate

# Input topic name -> model. Topic names are the defaults; settings may prefix them.
TOPIC_MODELS: dict[str, type[_Event]] = {
    "purchases": Purchase,
    "touchpoints": Touchpoint,
    "stock-arrivals": StockArrival,
    "customer-updates": CustomerUpdate,
}


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad field: ``amount: must not be negative; items.0.qty: ...``."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(event)"
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
