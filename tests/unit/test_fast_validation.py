"""The fast acceptance path must never accept what the pydantic contract rejects, and must
produce the same values when both accept ("fast accept, slow explain")."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.events import Purchase, Touchpoint
from schemas.fast import fast_purchase, fast_touchpoint

weird = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**15), 10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.sampled_from(
        ["", "x" * 201, "EUR", "eur", "E1R", "2026-11-01T10:00:00Z", "2026-11-01T10:00:00", "1793523600000"]
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
good_ts = st.one_of(st.integers(946_684_800_000, 4_102_444_799_999), st.just("2026-11-01T10:00:00+02:00"))
item_fields = st.fixed_dictionaries(
    {},
    optional={
        "sku": st.one_of(st.text(min_size=1, max_size=8), weird),
        "category": st.one_of(st.sampled_from(["beer", "wine"]), weird),
        "qty": st.one_of(st.integers(-2, 5), weird),
        "price": st.one_of(st.floats(0, 100), st.integers(0, 10), weird),
    },
)
item = st.builds(
    lambda changes, keep: {
        **{"sku": "a", "category": "beer", "qty": 1, "price": 1.5},
        **{k: changes[k] for k in keep if k in changes},
    },
    item_fields,
    st.lists(st.sampled_from(["sku", "category", "qty", "price"]), max_size=2),
)
purchase_fields = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.one_of(st.text(min_size=1, max_size=10), st.integers(0, 99), weird),
        "customer_id": st.one_of(st.sampled_from(["c1", "c2"]), st.integers(0, 9), weird),
        "ts": st.one_of(good_ts, weird),
        "amount": st.one_of(
            st.floats(0, 1000), st.integers(0, 100), st.sampled_from([0.1, 12.34, 1e-7]), weird
        ),
        "currency": st.one_of(st.just("EUR"), weird),
        "items": st.one_of(st.lists(item, max_size=3), weird),
        "store_id": st.one_of(st.just("s1"), weird),
        "channel": st.one_of(st.just("web"), weird),
        "payer_id": st.one_of(st.just("p1"), weird),
    },
)

touch_fields = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.one_of(st.text(min_size=1, max_size=10), weird),
        "customer_id": st.one_of(st.sampled_from(["c1", "c2"]), weird),
        "anonymous_id": st.one_of(st.sampled_from(["a1", "c1"]), weird),
        "alias_of": st.one_of(st.sampled_from(["a1", "c1"]), weird),
        "ts": st.one_of(good_ts, weird),
        "type": st.one_of(st.sampled_from(["view", "identify", "review", "cart"]), weird),
        "rating": st.one_of(st.integers(0, 6), weird),
        "duration_s": st.one_of(st.floats(0, 10), st.integers(-1, 10), weird),
        "channel": st.one_of(st.just("app"), weird),
        "category": st.one_of(st.just("beer"), weird),
        "sku": st.one_of(st.just("s"), weird),
        "store_id": st.one_of(st.just("s1"), weird),
    },
)


VALID_PURCHASE = {
    "event_id": "p1", "customer_id": "c1", "ts": 1793523600000, "amount": 12.5, "currency": "EUR",
    "items": [{"sku": "a", "category": "beer", "qty": 2, "price": 6.25}], "store_id": "s1", "channel": "store",
}  # fmt: skip
VALID_TOUCH = {"event_id": "t1", "customer_id": "c1", "ts": 1793523600000, "type": "view"}


@st.composite
def near_valid(draw: Any, base: dict[str, Any], fields: Any) -> dict[str, Any]:
    """A valid event with a few fields replaced or removed (most examples are near the edge)."""
    obj = dict(base)
    changes = draw(fields)
    for name in draw(st.lists(st.sampled_from(sorted(changes)), max_size=3, unique=True)) if changes else []:
        obj[name] = changes[name]
    for name in draw(st.lists(st.sampled_from(sorted(base)), max_size=1)):
        obj.pop(name, None)
    return obj


purchase = st.one_of(
    near_valid(VALID_PURCHASE, purchase_fields),
    st.builds(lambda items: {**VALID_PURCHASE, "items": items}, st.lists(item, min_size=1, max_size=3)),
)
touch = near_valid(VALID_TOUCH, touch_fields)


def _pydantic(model: Any, obj: dict[str, Any]) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError:
        return None


@settings(max_examples=1500, deadline=None)
@given(obj=purchase)
def test_fast_purchase_accepts_only_what_pydantic_accepts_with_equal_values(obj: dict[str, Any]) -> None:
    fast = fast_purchase(obj)
    if fast is None:
        return
    slow = _pydantic(Purchase, obj)
    assert slow is not None, obj
    for name in (
        "event_id",
        "customer_id",
        "ts",
        "amount_cents",
        "currency",
        "store_id",
        "channel",
        "payer_id",
    ):
        assert getattr(fast, name) == getattr(slow, name), (name, obj)
    assert [(i.sku, i.category, i.qty, i.price) for i in fast.items] == [
        (i.sku, i.category, i.qty, i.price) for i in slow.items
    ]


@settings(max_examples=1500, deadline=None)
@given(obj=touch)
def test_fast_touchpoint_accepts_only_what_pydantic_accepts_with_equal_values(obj: dict[str, Any]) -> None:
    fast = fast_touchpoint(obj)
    if fast is None:
        return
    slow = _pydantic(Touchpoint, obj)
    assert slow is not None, obj
    assert fast.model_dump() == slow.model_dump(mode="json", exclude_none=True), obj
    assert fast.subject == slow.subject and fast.anonymous_alias == slow.anonymous_alias


def test_common_events_take_the_fast_path() -> None:
    p = {"event_id": "p1", "customer_id": "c1", "ts": "2026-11-01T10:00:00Z", "amount": 12.5, "currency": "EUR",
         "items": [{"sku": "a", "category": "beer", "qty": 2, "price": 6.25}], "store_id": "s1", "channel": "store"}  # fmt: skip
    assert fast_purchase(p) is not None
    assert (
        fast_touchpoint({"event_id": "t1", "anonymous_id": "a", "ts": 1793523600000, "type": "view"})
        is not None
    )
