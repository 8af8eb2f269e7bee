"""Input contracts: both timestamp forms, money in cents, errors that name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.errors import Reason
from schemas.events import CustomerUpdate, Purchase, StockArrival, Touchpoint, describe_validation_error
from schemas.state import CustomerState, Fact
from schemas.timestamps import DAY_MS, TsBounds, iso_utc, parse_ts_ms
from streams.dedupe import remember

WALL = 1793523600000  # 2026-11-01T09:00:00Z
BOUNDS = TsBounds(0, WALL + DAY_MS)


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
        ("yesterday", "not an ISO-8601"),
        (True, "not a boolean"),
        (1.5e12 + 0.5, "whole milliseconds"),
        (float("nan"), "finite"),
    ],
)
def test_bad_timestamps_say_why(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ts_ms(value)


@pytest.mark.parametrize(
    ("ts", "reason", "message"),
    [
        (1793523600, Reason.TS_IN_SECONDS, "looks like epoch seconds (2026-11-01T09:00:00.000Z)"),
        (10**15, Reason.TS_OUT_OF_RANGE, "looks like epoch microseconds"),
        (WALL + 2 * DAY_MS, Reason.TS_OUT_OF_RANGE, "PATRONAGE_TS_MAX_FUTURE_S"),
        (-1, Reason.TS_OUT_OF_RANGE, "outside 1970-01-01"),
    ],
)
def test_implausible_times_get_a_reason_code(ts: int, reason: Reason, message: str) -> None:
    assert BOUNDS.check(ts) is reason
    assert message in BOUNDS.explain(ts, reason)


def test_history_from_the_nineties_is_plausible_and_bounds_are_settings() -> None:
    for text in ("1997-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "1985-06-30T12:00:00+02:00"):
        ms = parse_ts_ms(text)
        expected = None if ms >= BOUNDS.seconds_below_ms else Reason.TS_IN_SECONDS
        assert BOUNDS.check(ms) is expected, text
    assert BOUNDS.check(parse_ts_ms("1997-03-25T10:00:00Z")) is None
    assert BOUNDS.check(WALL + DAY_MS - 1) is None
    assert TsBounds(0, WALL, seconds_below_ms=0).check(1_000) is None  # guard off
    assert TsBounds(parse_ts_ms("2000-01-01T00:00:00Z"), WALL).check(parse_ts_ms("1997-01-01T00:00:00Z")) is (
        Reason.TS_OUT_OF_RANGE
    )


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
    # ids are JSON strings (the schema says so): a number is refused, not turned into "42"
    for number in (42, 1e20, 1.0):
        with pytest.raises(ValidationError, match="customer_id"):
            Purchase.model_validate(_purchase(customer_id=number))
    assert Purchase.model_validate(_purchase(customer_id="42")).customer_id == "42"


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
    reason, detail = describe_validation_error(info.value)
    assert field in detail
    assert reason in (Reason.INVALID_FIELD, Reason.MISSING_FIELD, Reason.TS_NO_OFFSET)


def test_reason_codes_group_errors_independent_of_the_value() -> None:
    codes = {}
    for over in ({"customer_id": None}, {"ts": "2026-11-01"}, {"ts": "soon"}, {"amount": "x"}):
        with pytest.raises(ValidationError) as info:
            Purchase.model_validate(_purchase(**over))
        codes[next(iter(over))] = describe_validation_error(info.value)[0]
    missing = {k: v for k, v in _purchase().items() if k != "event_id"}
    with pytest.raises(ValidationError) as info:
        Purchase.model_validate(missing)
    assert describe_validation_error(info.value)[0] is Reason.MISSING_FIELD
    assert codes["customer_id"] is Reason.INVALID_FIELD
    assert codes["amount"] is Reason.INVALID_FIELD


@pytest.mark.parametrize("amount", [1e30, "1" + "0" * 30, 10**30])
def test_huge_amounts_are_exact_cents_not_an_internal_error(amount: object) -> None:
    # the plausibility cap is a setting checked by the pipeline (amount_out_of_range)
    assert Purchase.model_validate(_purchase(amount=amount)).amount_cents == 10**32


def test_absurd_amount_strings_are_a_validation_error() -> None:
    # an amount string is plain decimal digits (the schema's pattern): no exponent, no sign
    for text in ("1e999999", "1E+30", "-1", " 12", "NaN"):
        with pytest.raises(ValidationError) as info:
            Purchase.model_validate(_purchase(amount=text))
        reason, detail = describe_validation_error(info.value)
        assert reason is Reason.INVALID_FIELD and "amount" in detail


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
    s.facts = {"loyalty_member": Fact(1, "u1", True)}
    s.aliases = ["a1"]
    s.stage, s.stage_since_ms, s.last_event_ms = "customer", 1, 2
    again = CustomerState.from_json(s.to_json())
    assert again == s
    assert again.days == {20000: [2, 1500]}
    assert list(again.purchase_ids.ids) == [5, 6] and list(again.purchase_ids.ts) == [1, 2]
    with pytest.raises(ValueError, match="version"):
        CustomerState.from_dict({"v": 99, "s": "x"})


def test_version_1_state_from_the_foundation_still_loads() -> None:
    v1 = {"v": 1, "s": "c1", "f": 1, "m": 500, "fp": 5, "lp": 5, "days": {"0": [1, 500]}, "pid": "",
          "facts": {"timezone": [3, "u1", "Europe/Paris"]}, "st": "customer"}  # fmt: skip
    s = CustomerState.from_dict(v1)
    assert s.fact("timezone") == "Europe/Paris" and s.facts["timezone"].ts_ms == 3
    assert (s.risk, s.episode, s.alert, s.outbox) == (None, 0, None, [])
    assert CustomerState.from_json(s.to_json()) == s


def test_an_end_of_period_is_a_date_s_last_millisecond_or_a_timestamp() -> None:
    from schemas.timestamps import parse_until_ms

    assert parse_until_ms("2024-03-31") == parse_ts_ms("2024-04-01T00:00:00Z") - 1
    assert parse_until_ms(" 1997-06-30 ") == parse_ts_ms("1997-07-01T00:00:00+00:00") - 1
    assert parse_until_ms("2024-03-31T12:00:00+02:00") == parse_ts_ms("2024-03-31T10:00:00Z")
    assert parse_until_ms("1711886400000") == 1711886400000
    with pytest.raises(ValueError):
        parse_until_ms("last tuesday")
