"""Fast acceptance of plainly valid purchases and touchpoints ("fast accept, slow explain").

Full pydantic validation costs ~8 us per purchase, a third of the hot path. These checks
accept only a strict subset of what the pydantic models accept (exact JSON types, ids and
names as strings without control characters) and build the same values; anything else returns None and
the caller validates with the pydantic model, which either accepts it (lax input such as
"qty": "2") or produces the field-named error for the dead letter. The property test in
tests/unit/test_fast_validation.py checks "fast accepted => pydantic accepts the same", and
tests/unit/test_schema_agreement.py checks that both accept exactly what the JSON Schemas accept.
"""

from __future__ import annotations

import math
from typing import Any

from schemas.events import CONTROL_CHARS, TouchType, event_ts_ms

_TOUCH_TYPES = {t.value: t for t in TouchType}
# exact in a float; the plausibility cap (PATRONAGE_MAX_AMOUNT) is checked by the pipeline
_MAX_CENTS = 2**53
_INF = float("inf")


class FastItem:
    __slots__ = ("category", "price", "qty", "sku")

    def __init__(self, sku: str, category: str, qty: int, price: float) -> None:
        self.sku = sku
        self.category = category
        self.qty = qty
        self.price = price

    @property
    def price_cents(self) -> int:
        return round(self.price * 100)


class FastPurchase:
    """Duck-types :class:`schemas.events.Purchase` for the fields the core reads."""

    event_id: str
    customer_id: str
    ts: int
    amount_cents: int
    currency: str
    items: list[FastItem]
    store_id: str | None
    channel: str | None
    payer_id: str | None

    __slots__ = (
        "amount_cents",
        "channel",
        "currency",
        "customer_id",
        "event_id",
        "items",
        "payer_id",
        "store_id",
        "ts",
    )

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)

    @property
    def subject(self) -> str:
        return self.customer_id


class FastTouchpoint:
    """Duck-types :class:`schemas.events.Touchpoint`."""

    alias_of: str | None
    anonymous_id: str | None
    category: str | None
    channel: str | None
    customer_id: str | None
    duration_s: float | None
    event_id: str
    rating: int | None
    sku: str | None
    store_id: str | None
    ts: int
    type: TouchType

    __slots__ = (
        "alias_of",
        "anonymous_id",
        "category",
        "channel",
        "customer_id",
        "duration_s",
        "event_id",
        "rating",
        "sku",
        "store_id",
        "ts",
        "type",
    )

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)

    @property
    def subject(self) -> str:
        subject = self.customer_id if self.customer_id is not None else self.anonymous_id
        assert subject is not None
        return subject

    @property
    def anonymous_alias(self) -> str | None:
        alias = self.alias_of or self.anonymous_id
        return alias if alias != self.customer_id else None

    def model_dump(self, mode: str = "json", exclude_none: bool = True) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}
        out["type"] = self.type.value
        return {k: v for k, v in out.items() if v is not None}


def _name(value: str) -> bool:
    """1-200 characters, none of them a control character (printable ASCII needs no search)."""
    if not 0 < len(value) <= 200:
        return False
    return (value.isascii() and value.isprintable()) or CONTROL_CHARS.search(value) is None


def _id(value: Any) -> str | None:
    return value if type(value) is str and _name(value) else None


def _opt_id(obj: dict[str, Any], name: str) -> tuple[bool, str | None]:
    value = obj.get(name)
    if value is None:
        return True, None
    v = _id(value)
    return v is not None, v


def _ts(value: Any) -> int | None:
    """Form only; the plausible range is checked by the pipeline (``TsBounds``)."""
    t = type(value)
    if t is int:
        return value
    if t is str:
        try:
            return event_ts_ms(value)
        except ValueError:
            return None
    return None


def _cents(value: Any) -> int | None:
    t = type(value)
    if t is int:
        return value * 100 if 0 <= value * 100 <= _MAX_CENTS else None
    if t is float:
        scaled = value * 100
        if not math.isfinite(scaled):
            return None
        cents = round(scaled)
        if abs(scaled - cents) < 1e-6 and 0 <= cents <= _MAX_CENTS:
            return int(cents)
    return None


def fast_purchase(obj: dict[str, Any]) -> FastPurchase | None:
    get = obj.get
    event_id = get("event_id")
    customer_id = get("customer_id")
    ts = get("ts")
    amount = get("amount")
    currency = get("currency")
    # the common case inline: str ids, int/ISO ts, float amount, "EUR"-like currency
    if type(event_id) is not str or not _name(event_id):
        return None
    if type(customer_id) is not str or not _name(customer_id):
        return None
    if type(ts) is not int:
        ts = _ts(ts)
        if ts is None:
            return None
    cents = _cents(amount)
    if cents is None:
        return None
    if type(currency) is not str or len(currency) != 3 or not currency.isascii() or not currency.isupper():
        return None
    if not currency.isalpha():
        return None
    items: list[FastItem] = []
    if "items" in obj:
        raw_items = obj["items"]
        if type(raw_items) is not list or len(raw_items) > 1000:
            return None
        for it in raw_items:
            if type(it) is not dict:
                return None
            sku = it.get("sku")
            cat = it.get("category")
            qty = it.get("qty")
            price: Any = it.get("price")  # type() checks below, not isinstance (hot path)
            if (
                type(sku) is not str
                or type(cat) is not str
                or type(qty) is not int
                or not _name(sku)
                or not _name(cat)
                or not 0 < qty <= 1_000_000
            ):
                return None
            tp = type(price)
            if tp is int:
                price = float(price)
            elif tp is not float or price != price or price in (_INF, -_INF):
                return None
            if not 0 <= price <= _MAX_CENTS:
                return None
            items.append(FastItem(sku, cat, qty, price))
    store_id = get("store_id")
    payer_id = get("payer_id")
    channel = get("channel")
    if store_id is not None and (type(store_id) is not str or not _name(store_id)):
        return None
    if payer_id is not None and (type(payer_id) is not str or not _name(payer_id)):
        return None
    if channel is not None and (type(channel) is not str or not _name(channel)):
        return None
    p = FastPurchase.__new__(FastPurchase)
    p.event_id = event_id
    p.customer_id = customer_id
    p.ts = ts
    p.amount_cents = cents
    p.currency = currency
    p.items = items
    p.store_id = store_id
    p.channel = channel
    p.payer_id = payer_id
    return p


def fast_touchpoint(obj: dict[str, Any]) -> FastTouchpoint | None:
    event_id = _id(obj.get("event_id"))
    ts = _ts(obj.get("ts"))
    raw_type = obj.get("type")
    type_ = _TOUCH_TYPES.get(raw_type) if type(raw_type) is str else None
    if event_id is None or ts is None or type_ is None:
        return None
    ok1, customer_id = _opt_id(obj, "customer_id")
    ok2, anonymous_id = _opt_id(obj, "anonymous_id")
    ok3, store_id = _opt_id(obj, "store_id")
    ok4, alias_of = _opt_id(obj, "alias_of")
    if not (ok1 and ok2 and ok3 and ok4) or (customer_id is None and anonymous_id is None):
        return None
    if type_ is TouchType.identify and (
        customer_id is None or (alias_of or anonymous_id) in (None, customer_id)
    ):
        return None
    fields: dict[str, Any] = {}
    for name in ("channel", "category", "sku"):
        value = obj.get(name)
        if value is not None and (type(value) is not str or not _name(value)):
            return None
        fields[name] = value
    rating = obj.get("rating")
    if rating is not None and (type(rating) is not int or not 1 <= rating <= 5):
        return None
    duration = obj.get("duration_s")
    if duration is not None:
        if type(duration) is int:
            duration = float(duration)
        if type(duration) is not float or not 0 <= duration <= 86_400 * 7:
            return None
    return FastTouchpoint(
        event_id=event_id,
        customer_id=customer_id,
        anonymous_id=anonymous_id,
        ts=ts,
        type=type_,
        store_id=store_id,
        alias_of=alias_of,
        rating=rating,
        duration_s=duration,
        **fields,
    )
