"""Input event contracts (one pydantic model per input topic).

The JSON Schema files in ``schemas/json/`` are generated from these models
(``python -m schemas.export``) so producers in any language validate against the same rules.
Validation errors name the field: ``items.0.qty: Input should be greater than 0``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas.errors import Reason
from schemas.timestamps import parse_ts_ms

_DECIMAL = Context(prec=80, rounding=ROUND_HALF_EVEN, Emax=999_999, Emin=-999_999)


def _to_cents(value: object) -> int:
    """Major units (number or numeric string) -> exact integer cents, half-even.

    No upper bound here: the plausibility cap is a setting (``PATRONAGE_MAX_AMOUNT``)
    checked by the pipeline, with the reason code ``amount_out_of_range``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError("must be a number")
    if isinstance(value, float) and not math.isfinite(value * 100):
        raise ValueError("must be a finite number")
    if isinstance(value, int | float):
        scaled = value * 100
        cents = round(scaled)
        # Fast path: values with at most two decimals land within float noise of an integer.
        if abs(scaled - cents) < 1e-6 and 0 <= cents <= 2**53:
            return int(cents)
    try:
        amount = Decimal(str(value).strip()[:1000])
    except InvalidOperation:
        raise ValueError(f"not a number: {str(value)[:80]!r}") from None
    if not amount.is_finite():
        raise ValueError("must be a finite number")
    if amount < 0:
        raise ValueError("must not be negative (send refunds as their own event type)")
    try:
        cents = int(_DECIMAL.quantize(_DECIMAL.multiply(amount, 100), Decimal(1)))
    except (InvalidOperation, ArithmeticError):
        raise PydanticCustomError(
            Reason.AMOUNT_OUT_OF_RANGE.value, f"amount {str(value)[:40]} is out of range"
        ) from None
    return cents


# No C0 control characters or DEL in ids and names (they break logs, keys and terminals).
# Expressed as "not: pattern" (a search without anchors) so every regex dialect agrees:
# anchored "$" also matches before a final newline in Python's re, not in Rust's or ECMA's.
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f]")
_CONTROL_JSON = "[\\u0000-\\u001f\\u007f]"


NAME_MAX_CHARS = 200


def _plain_str(value: object) -> object:
    """Strings only (no number coercion) of 1-200 characters, without control characters.
    The length is checked here, not by pydantic's constraint, to say it plainly: its own
    words for an empty id are "Value should have at least 1 item after validation"."""
    if type(value) is str:
        if not value:
            raise PydanticCustomError(
                Reason.INVALID_FIELD.value,
                f'is empty (""): must be a non-empty string (1 to {NAME_MAX_CHARS} characters)',
            )
        if len(value) > NAME_MAX_CHARS:
            raise PydanticCustomError(
                Reason.INVALID_FIELD.value,
                f"is {len(value)} characters long: must be at most {NAME_MAX_CHARS}",
            )
        if CONTROL_CHARS.search(value):
            raise PydanticCustomError(Reason.INVALID_FIELD.value, "must not contain control characters")
    return value


_NAME_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": NAME_MAX_CHARS,
    "not": {"pattern": _CONTROL_JSON},
}
# Ids are JSON strings: a number is refused (1e20, 1.0 and 12345678901234567890 do not survive
# every producer's JSON library unchanged). Send numeric ids as their decimal string.
Id = Annotated[
    str,
    BeforeValidator(_plain_str),
    Field(min_length=1, max_length=NAME_MAX_CHARS),
    WithJsonSchema(_NAME_SCHEMA),
]
# ISO 8601 / RFC 3339 date-time with a UTC offset (the shape; the calendar is checked by
# parsing). Beside strict RFC 3339 it takes the forms producers commonly send and earlier
# releases accepted: a space for the "T" (RFC 3339 section 5.6 allows it; Python's
# str(datetime) writes it), seconds left out, and an offset without its colon (+0100).
TS_PATTERN = (
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9]([.][0-9]{1,9})?)?"
    "(Z|[+-]([01][0-9]|2[0-3]):?[0-5][0-9])$"
)
_TS_RE = re.compile(TS_PATTERN)
_TS_NO_OFFSET_RE = re.compile("^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.][0-9]+)?)?)?$")
TS_MAX_CHARS = 35


def event_ts_ms(value: object) -> int:
    """An event's ``ts``: an RFC 3339 string with offset, or an integer (epoch ms; a JSON
    number with no fraction such as ``1.7e12`` is an integer in JSON Schema, so it counts)."""
    if type(value) is str:
        if len(value) > TS_MAX_CHARS or not _TS_RE.match(value) or value.endswith("\n"):
            if _TS_NO_OFFSET_RE.match(value) and not value.endswith("\n"):
                raise PydanticCustomError(
                    Reason.TS_NO_OFFSET.value,
                    f"timestamp {value[:80]!r} has no UTC offset (add 'Z' or '+hh:mm')",
                )
            raise PydanticCustomError(
                Reason.TS_INVALID.value,
                f"not an RFC 3339 timestamp with offset or epoch milliseconds: {value[:80]!r}",
            )
    return parse_ts_ms(value)


Timestamp = Annotated[
    int,
    BeforeValidator(event_ts_ms),
    WithJsonSchema(
        {
            "description": "RFC 3339 date-time with UTC offset, or epoch milliseconds (an integer). "
            "Plausible range is a setting: from PATRONAGE_TS_FLOOR (default 1970-01-01) to "
            "PATRONAGE_TS_MAX_FUTURE_S (default 1 day) past the wall clock",
            "oneOf": [
                {
                    "type": "string",
                    "format": "date-time",
                    "pattern": TS_PATTERN,
                    "maxLength": TS_MAX_CHARS,
                    "not": {"pattern": _CONTROL_JSON},
                },
                {"type": "integer"},
            ],
        }
    ),
]


def _json_int(value: object) -> object:
    """JSON integers only: no strings, no booleans; 2.0 is an integer in JSON Schema."""
    if type(value) is bool or type(value) is str:
        raise PydanticCustomError(Reason.INVALID_FIELD.value, "must be an integer")
    return value


def _json_number(value: object) -> object:
    if type(value) is bool or type(value) is str:
        raise PydanticCustomError(Reason.INVALID_FIELD.value, "must be a number")
    return value


StrictBool = Annotated[bool, Strict()]
# a decimal string keeps exact cents for producers whose JSON library has no decimals
AMOUNT_STRING_PATTERN = "^[0-9]{1,40}([.][0-9]{1,20})?$"
_AMOUNT_STRING_RE = re.compile(AMOUNT_STRING_PATTERN)


def _amount(value: object) -> int:
    if type(value) is str and (len(value) > 61 or not _AMOUNT_STRING_RE.match(value) or value[-1] == "\n"):
        raise ValueError(f"not a number: {value[:80]!r} (a JSON number, or a decimal string like '12.50')")
    return _to_cents(value)


Cents = Annotated[
    int,
    BeforeValidator(_amount),
    WithJsonSchema(
        {
            "description": 'major units, e.g. 12.50 (a number, or a decimal string such as "12.50" '
            "for exact cents); at most PATRONAGE_MAX_AMOUNT (default 100 billion)",
            "anyOf": [
                {"type": "number", "minimum": 0},
                {
                    "type": "string",
                    "pattern": AMOUNT_STRING_PATTERN,
                    "maxLength": 61,
                    "not": {"pattern": _CONTROL_JSON},
                },
            ],
        }
    ),
]
ShortStr = Annotated[
    str,
    BeforeValidator(_plain_str),
    Field(min_length=1, max_length=NAME_MAX_CHARS),
    WithJsonSchema(_NAME_SCHEMA),
]


class _Event(BaseModel):
    # Ids are JSON strings (see Id); numbers are not coerced to strings anywhere.
    # JSON types as the schema states them: no number -> string coercion, no "2" -> 2.
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Item(_Event):
    sku: ShortStr
    category: ShortStr
    qty: Annotated[int, Field(gt=0, le=1_000_000), BeforeValidator(_json_int)]
    # unit price in major units
    price: Annotated[float, Field(ge=0, allow_inf_nan=False), BeforeValidator(_json_number)]

    @property
    def price_cents(self) -> int:
        return round(self.price * 100)


class Purchase(_Event):
    """An order. Keyed by ``customer_id`` on the ``purchases`` topic."""

    event_id: Id
    customer_id: Id
    ts: Timestamp
    amount_cents: Cents = Field(alias="amount")
    currency: Annotated[str, Strict()] = Field(pattern=r"^[A-Z]{3}$", min_length=3, max_length=3)
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


def _has_str(*names: str) -> Any:
    return [{"required": [n], "properties": {n: {"type": "string"}}} for n in names]


class Touchpoint(_Event):
    """A non-purchase interaction. Keyed by ``customer_id``, else ``anonymous_id``.

    ``identify`` links an anonymous visitor to a known customer: send ``customer_id`` (the
    known id) plus ``anonymous_id`` (or ``alias_of``) naming the anonymous id to merge.
    The one rule JSON Schema cannot state: that id must differ from ``customer_id``.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": _has_str("customer_id", "anonymous_id"),
            "if": {"required": ["type"], "properties": {"type": {"const": "identify"}}},
            "then": {
                "allOf": [{"anyOf": _has_str("customer_id")}, {"anyOf": _has_str("alias_of", "anonymous_id")}]
            },
        }
    )

    event_id: Id
    customer_id: Id | None = None
    anonymous_id: Id | None = None
    ts: Timestamp
    type: TouchType
    channel: ShortStr | None = None
    store_id: Id | None = None
    category: ShortStr | None = None
    sku: ShortStr | None = None
    rating: Annotated[int, Field(ge=1, le=5), BeforeValidator(_json_int)] | None = None
    duration_s: Annotated[float, Field(ge=0, le=86_400 * 7), BeforeValidator(_json_number)] | None = None
    alias_of: Id | None = None

    @model_validator(mode="after")
    def _who(self) -> Touchpoint:
        if self.customer_id is None and self.anonymous_id is None:
            raise ValueError("customer_id or anonymous_id is required")
        if self.type is TouchType.identify:
            if self.customer_id is None:
                raise ValueError("identify needs customer_id (the known customer)")
            if self.anonymous_alias is None:
                if (self.alias_of or self.anonymous_id) is not None:
                    which = "alias_of" if self.alias_of is not None else "anonymous_id"
                    raise ValueError(
                        f"identify: {which} equals customer_id; the id to merge must differ from the customer's"
                    )
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
    qty: Annotated[int, Field(gt=0, le=1_000_000_000), BeforeValidator(_json_int)]
    store_id: Id | None = None
    region: ShortStr | None = None
    tags: list[ShortStr] = Field(default_factory=list, max_length=50)

    @property
    def subject(self) -> str:
        return self.category


@lru_cache(maxsize=4096)
def _known_zone(name: str) -> bool:
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(name)
    except Exception:  # unknown name, malformed key (path-like, empty): not a zone
        return False
    return True


def _time_zone(value: str) -> str:
    if not _known_zone(value):
        raise ValueError(f"unknown time zone {value[:60]!r} (an IANA name such as Europe/Lisbon)")
    return value


TimeZoneName = Annotated[ShortStr, AfterValidator(_time_zone)]


class QuietHours(_Event):
    start: Annotated[str, Strict()] = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", max_length=5)
    end: Annotated[str, Strict()] = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", max_length=5)


class CustomerUpdate(_Event):
    """Profile facts that are not behaviour. Keyed by ``customer_id``.

    Every field is optional; a field that is present replaces the stored value if this
    update is newer (by ``ts``, ties broken by ``event_id``). ``erase: true`` deletes the
    customer's state (right to erasure).
    """

    event_id: Id
    customer_id: Id
    ts: Timestamp
    loyalty_member: StrictBool | None = None
    consent: dict[Literal["email", "sms", "push", "in_store"], StrictBool] | None = None
    timezone: TimeZoneName | None = None
    quiet_hours: QuietHours | None = None
    household_id: Id | None = None
    payer_id: Id | None = None
    owner_id: Id | None = Field(
        default=None, description="account owner / relationship manager who acts on churn alerts"
    )
    erase: StrictBool = False

    @property
    def subject(self) -> str:
        return self.customer_id

    def changed_fields(self) -> dict[str, Any]:
        """The profile fields this update sets (those present in the message)."""
        fields = (
            "loyalty_member",
            "consent",
            "timezone",
            "quiet_hours",
            "household_id",
            "payer_id",
            "owner_id",
        )
        out: dict[str, Any] = {}
        for name in fields:
            if name in self.model_fields_set:
                value = getattr(self, name)
                out[name] = value.model_dump() if isinstance(value, BaseModel) else value
        return out


class ItemLike(Protocol):
    @property
    def sku(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def qty(self) -> int: ...
    @property
    def price(self) -> float: ...


class PurchaseLike(Protocol):
    """What the purchase step reads: a :class:`Purchase` or a fast-accepted ``FastPurchase``."""

    @property
    def event_id(self) -> str: ...
    @property
    def customer_id(self) -> str: ...
    @property
    def ts(self) -> int: ...
    @property
    def amount_cents(self) -> int: ...
    @property
    def currency(self) -> str: ...
    @property
    def items(self) -> Sequence[ItemLike]: ...
    @property
    def store_id(self) -> str | None: ...
    @property
    def channel(self) -> str | None: ...
    @property
    def payer_id(self) -> str | None: ...
    @property
    def subject(self) -> str: ...


class TouchpointLike(Protocol):
    """What the touchpoint step reads: a :class:`Touchpoint` or a fast-accepted ``FastTouchpoint``."""

    @property
    def event_id(self) -> str: ...
    @property
    def customer_id(self) -> str | None: ...
    @property
    def anonymous_id(self) -> str | None: ...
    @property
    def ts(self) -> int: ...
    @property
    def type(self) -> TouchType: ...
    @property
    def channel(self) -> str | None: ...
    @property
    def store_id(self) -> str | None: ...
    @property
    def category(self) -> str | None: ...
    @property
    def sku(self) -> str | None: ...
    @property
    def rating(self) -> int | None: ...
    @property
    def subject(self) -> str: ...
    @property
    def anonymous_alias(self) -> str | None: ...

    def model_dump(self, mode: str = "json", exclude_none: bool = True) -> dict[str, Any]: ...


InputEvent = Purchase | Touchpoint | StockArrival | CustomerUpdate

# Input topic name -> model. Topic names are the defaults; settings may prefix them.
TOPIC_MODELS: dict[str, type[_Event]] = {
    "purchases": Purchase,
    "touchpoints": Touchpoint,
    "stock-arrivals": StockArrival,
    "customer-updates": CustomerUpdate,
}


def describe_validation_error(exc: ValidationError) -> tuple[Reason, str]:
    """The reason code of the first error and one line naming each bad field:
    ``amount: must not be negative; items.0.qty: ...``."""
    parts = []
    reason: Reason | None = None
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(event)"
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        parts.append(f"{loc}: {msg}")
        if reason is None:
            kind = err["type"]
            if kind in _REASONS:
                reason = Reason(kind)
            elif kind == "missing":
                reason = Reason.MISSING_FIELD
            else:
                reason = Reason.INVALID_FIELD
    return reason or Reason.INVALID_FIELD, "; ".join(parts)


_REASONS = {r.value for r in Reason}
