"""Input contracts: both timestamp forms, money in cents, errors that name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.events import CustomerUpdate, Purchase, StockArrival, Touchpoint, describe_validation_error
from schemas.state import CustomerState
from schemas.timestamps import iso_utc, parse_ts_ms
from streams.dedupe import remember


def test_timestamps_iso_with_offset_and_epoch_ms_agree() -> None:
    assert parse_ts_ms("2026-11-01T10:00:00+01:00") == parse_ts_ms("2026-11-01T09:00:00Z")
    assert parse_ts_ms("2026-11-01T09:00:00Z") == 1793523600000
    assert parse_ts_ms(1793523600000) == 1793523600000
    assert parse_ts_ms("1793523600000") == 1793523600000
    assert iso_utc(1793523600000) == "2026-11-01T09:00:00.000Z"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-11-01T10:00:00", "no UTC offset"),
        (1793523600, "looks like epoch seconds"),
        ("yesterday", "not an ISO-8601"),
        (True, "not a boolean"),
        (1.5e12 + 0.5, "whole milliseconds"),
        (10**15, "outside"),
    ],
)
def test_bad_timestamps_say_why(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ts_ms(value)


def _purchase(**over: object) -> dict:
    base = {
        "event_id": "p1",
        "customer_id": "c1",
        "ts": "2026-11-01T10:00:00Z",
        "amount": 12.34,
        "currency": "EUR",
        "items": [{"sku": "s1", "category": "beer", "qty": 2, "price": 6.17}],
    }
    base.update(over)
    return base


def test_purchase_amounts_become_exact_cents() -> None:
    assert Purchase.model_validate(_purchase()).amount_cents == 1234
    assert Purchase.model_validate(_purchase(amount="0.1")).amount_cents == 10
    assert Purchase.model_validate(_purchase(amount=0.1 + 0.2)).amount_cents == 30
    assert Purchase.model_validate(_purchase(amount=7)).amount_cents == 700
    assert Purchase.model_validate(_purchase(customer_id=42)).customer_id == "42"


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"amount": -1}, "amount: must not be negative"),
        ({"amount": "abc"}, "amount: not a number"),
        ({"amount": 1e308}, "amount: must be a finite number"),
        ({"currency": "euro"}, "currency:"),
        ({"event_id": ""}, "event_id:"),
        ({"customer_id": None}, "customer_id:"),
        ({"items": [{"sku": "s", "category": "c", "qty": 0, "price": 1}]}, "items.0.qty:"),
        ({"ts": "2026-11-01"}, "ts: timestamp '2026-11-01' has no UTC offset"),
    ],
)
def test_invalid_purchase_names_the_field(over: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Purchase.model_validate(_purchase(**over))
    assert field in describe_validation_error(info.value)


def test_touchpoint_needs_someone_and_identify_needs_both_ids() -> None:
    with pytest.raises(ValidationError, match="customer_id or anonymous_id"):
        Touchpoint.model_validate({"event_id": "t", "ts": 1793523600000, "type": "view"})
    with pytest.raises(ValidationError, match="anonymous_id or alias_of"):
        Touchpoint.model_validate(
            {"event_id": "t", "customer_id": "c", "ts": 1793523600000, "type": "identify"}
        )
    t = Touchpoint.model_validate(
        {"event_id": "t", "customer_id": "c", "anonymous_id": "a", "ts": 1793523600000, "type": "identify"}
    )
    assert t.subject == "c" and t.anonymous_alias == "a"
    with pytest.raises(ValidationError, match="rating"):
        Touchpoint.model_validate(
            {"event_id": "t", "customer_id": "c", "ts": 1793523600000, "type": "review", "rating": 6}
        )
    with pytest.raises(ValidationError, match="type"):
        Touchpoint.model_validate(
            {"event_id": "t", "customer_id": "c", "ts": 1793523600000, "type": "teleport"}
        )


def test_stock_and_updates() -> None:
    s = StockArrival.model_validate(
        {"event_id": "s", "ts": 1793523600000, "sku": "x", "category": "beer", "qty": 5}
    )
    assert s.subject == "beer"
    u = CustomerUpdate.model_validate(
        {
            "event_id": "u",
            "customer_id": "c",
            "ts": 1793523600000,
            "loyalty_member": True,
            "timezone": "Europe/Paris",
        }
    )
    assert u.changed_fields() == {"loyalty_member": True, "timezone": "Europe/Paris"}
    with pytest.raises(ValidationError, match=r"quiet_hours\.start"):
        CustomerUpdate.model_validate(
            {
                "event_id": "u",
                "customer_id": "c",
                "ts": 1793523600000,
                "quiet_hours": {"start": "25:00", "end": "07:00"},
            }
        )


def test_state_round_trips_through_changelog_encoding() -> None:
    s = CustomerState("c1")
    s.frequency, s.monetary_cents, s.first_purchase_ms, s.last_purchase_ms = 2, 1500, 1, 2
    s.days = {20000: [2, 1500]}
    remember(s.purchase_ids, 5, 1, cap=10)
    remember(s.purchase_ids, 6, 2, cap=10)
    s.touch_counts = {"view": 3}
    s.first_touch_ms = s.last_touch_ms = 1
    remember(s.touch_ids, 9, 1, cap=10)
    s.facts = {"loyalty_member": [1, "u1", True]}
    s.aliases = ["a1"]
    s.stage, s.stage_since_ms, s.last_event_ms = "customer", 1, 2
    again = CustomerState.from_json(s.to_json())
    assert again == s
    assert again.days == {20000: [2, 1500]}
    assert list(again.purchase_ids.ids) == [5, 6] and list(again.purchase_ids.ts) == [1, 2]
    with pytest.raises(ValueError, match="version"):
        CustomerState.from_dict({"v": 99, "s": "x"})
