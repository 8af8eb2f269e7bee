"""Uplift, pure: exposures, conversions on event time, windows closed by the clock, the
tallies and their index, the churn-risk control group, and the statistics."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest

from agents.settings import Settings
from schemas.state import CustomerState
from schemas.timestamps import DAY_MS
from schemas.topics import Topic
from streams import uplift
from streams.policy import ChurnPolicy, GatePolicy, Policy, UpliftPolicy
from streams.testing import T0, PipelineHarness

HOUR_MS = 3_600_000
NOON = T0 + 12 * HOUR_MS
OPEN = GatePolicy(coalesce_s=0, quiet_start_min=0, quiet_end_min=0, consent_default=True)
_ids = itertools.count()


# --- statistics -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("counts", "expected"),
    [  # Newcombe (1998), Stat Med 17:873, table II, method 10 (hybrid score)
        ((56, 70, 48, 80), (0.0524, 0.3339)),
        ((9, 10, 3, 10), (0.1705, 0.8090)),
        ((6, 7, 2, 7), (0.0582, 0.8062)),
        ((5, 56, 0, 29), (-0.0381, 0.1926)),
        ((0, 10, 0, 20), (-0.1611, 0.2775)),
        ((0, 10, 0, 10), (-0.2775, 0.2775)),
        ((10, 10, 0, 20), (0.6791, 1.0000)),
        ((10, 10, 0, 10), (0.6075, 1.0000)),
    ],
)
def test_newcombe_interval_matches_the_published_examples(
    counts: tuple[int, int, int, int], expected: tuple[float, float]
) -> None:
    ci = uplift.newcombe(*counts)
    assert ci is not None
    assert round(ci[0], 4) == pytest.approx(expected[0], abs=1e-4)
    assert round(ci[1], 4) == pytest.approx(expected[1], abs=1e-4)


def test_wilson_interval_and_empty_groups() -> None:
    lo, hi = uplift.wilson(81, 263)  # Newcombe (1998b): 0.2553 - 0.3662
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    assert uplift.newcombe(3, 10, 0, 0) is None and uplift.newcombe(0, 0, 1, 2) is None
    assert uplift.Z95 == pytest.approx(1.959964, abs=1e-6)


def test_rows_add_groups_up_and_compute_rates_uplift_and_ci() -> None:
    counts = {
        ("churn_risk", "loyal", "core", "treated"): [70, 56, 2],
        ("churn_risk", "loyal", "core", "control"): [80, 48, 1],
        ("new_stock_for_interest", "champions", "regular", "treated"): [4, 1, 0],
    }
    rows = uplift.rows(counts)
    assert [(r["type"], r["segment"], r["tier"]) for r in rows] == [
        ("churn_risk", "loyal", "core"),
        ("new_stock_for_interest", "champions", "regular"),
    ]
    churn, stock = rows
    assert (churn["treated"], churn["treated_converted"], churn["control"], churn["control_converted"]) == (
        70,
        56,
        80,
        48,
    )
    assert churn["treated_rate"] == pytest.approx(0.8) and churn["control_rate"] == pytest.approx(0.6)
    assert churn["uplift"] == pytest.approx(0.2) and churn["open"] == 3
    assert (round(churn["ci_low"], 4), round(churn["ci_high"], 4)) == (0.0524, 0.3339)
    assert stock["treated_rate"] == 0.25 and stock["control_rate"] is None
    assert stock["uplift"] is None and stock["ci_low"] is None and stock["ci_high"] is None
    assert uplift.rows(uplift.counts_from_rows(rows)) == rows  # several workers add up


# --- exposures in the state -------------------------------------------------------------------
def stock_trigger(cats: list[str], holdout: bool = False) -> dict[str, Any]:
    return {
        "type": "new_stock_for_interest",
        "holdout": holdout,
        "deliver": not holdout,
        "items": [{"sku": f"{c}-1", "category": c} for c in cats],
    }


def test_conversion_needs_the_category_and_the_window_and_closing_is_final() -> None:
    policy = UpliftPolicy(window_days=14)
    s = CustomerState("c1")
    t = T0
    assert uplift.expose(s, stock_trigger(["fish", "wine"]), t, "loyal", "core", policy)
    assert uplift.expose(s, stock_trigger(["fish"], holdout=True), t + 1, "loyal", "core", policy)
    assert not uplift.expose(s, {"type": "won_back"}, t, "loyal", "core", policy)
    assert uplift.next_end(s) == t + 14 * DAY_MS
    assert not uplift.on_purchase(s, t + DAY_MS, ["bread"])  # other category
    assert uplift.on_purchase(s, t + DAY_MS, ["wine"])  # converts the first only
    assert [e[7] for e in s.uplift["open"]] == [1, 0]  # type: ignore[index]
    assert not uplift.close(s, t + 14 * DAY_MS - 1)
    assert uplift.close(s, t + 14 * DAY_MS)  # the first ended; the second ends 1 ms later
    assert s.uplift["done"] == {"new_stock_for_interest|loyal|core|treated": [1, 1]}  # type: ignore[index]
    # a purchase at the second one's end: not in its window, and it closes it (event time)
    assert uplift.on_purchase(s, t + 14 * DAY_MS + 1, ["fish"])
    assert not uplift.close(s, t + 20 * DAY_MS)
    assert s.uplift == {  # closed, never to change again
        "open": [],
        "done": {
            "new_stock_for_interest|loyal|core|treated": [1, 1],
            "new_stock_for_interest|loyal|core|control": [1, 0],
        },
    }
    assert uplift.next_end(s) is None
    assert CustomerState.from_json(s.to_json()) == s


def test_open_exposures_are_bounded() -> None:
    policy = UpliftPolicy(max_open=2)
    s = CustomerState("c1")
    made = [uplift.expose(s, stock_trigger(["fish"]), T0 + i, None, None, policy) for i in range(3)]
    assert made == [True, True, False]
    assert {e[3] for e in s.uplift["open"]} == {"none"}  # type: ignore[index]


def test_state_version_5_round_trips_and_version_3_still_loads() -> None:
    s = CustomerState("c1")
    uplift.expose(s, stock_trigger(["fish"]), T0, "new", "regular", UpliftPolicy())
    d = s.to_dict()
    assert d["v"] == 5 and "upl" in d
    assert CustomerState.from_dict(d) == s
    old = {"v": 3, "s": "c2", "st": "customer", "alr": [T0, "lapse", "abc"]}
    loaded = CustomerState.from_dict(old)
    assert loaded.uplift is None and loaded.alert is not None and loaded.alert.held_out is False


def test_index_follows_updates_and_equals_a_rebuild() -> None:
    idx = uplift.UpliftIndex()
    states = []
    for n in range(6):
        s = CustomerState(f"c{n}")
        uplift.expose(s, stock_trigger(["fish"], holdout=n % 2 == 1), T0, "loyal", "core", UpliftPolicy())
        idx.update(n % 2, s.subject, s)
        states.append(s)
    assert idx.totals() == {
        ("new_stock_for_interest", "loyal", "core", "treated"): [0, 0, 3],
        ("new_stock_for_interest", "loyal", "core", "control"): [0, 0, 3],
    }
    uplift.on_purchase(states[0], T0 + DAY_MS, ["fish"])
    for s in states:
        uplift.close(s, T0 + 30 * DAY_MS)
        idx.update(int(s.subject[1:]) % 2, s.subject, s)
    rebuilt = uplift.UpliftIndex()
    for n, s in enumerate(states):
        rebuilt.update(n % 2, s.subject, s)
    assert (
        idx.totals()
        == rebuilt.totals()
        == {
            ("new_stock_for_interest", "loyal", "core", "treated"): [3, 1, 0],
            ("new_stock_for_interest", "loyal", "core", "control"): [3, 0, 0],
        }
    )
    idx.clear(1)  # the control customers' partition
    assert idx.totals() == {("new_stock_for_interest", "loyal", "core", "treated"): [3, 1, 0]}
    idx.update(0, "c0", None)
    assert idx.totals() == {("new_stock_for_interest", "loyal", "core", "treated"): [2, 0, 0]}


# --- through the pipeline -----------------------------------------------------------------------
def buy(
    h: PipelineHarness, cid: str, lines: dict[str, float], days_ago: float = 0, eid: str | None = None
) -> None:
    h.send(
        Topic.PURCHASES,
        {
            "event_id": eid or f"p{next(_ids)}",
            "customer_id": cid,
            "ts": h.wall.ms - int(days_ago * DAY_MS),
            "amount": sum(lines.values()),
            "currency": "EUR",
            "items": [{"sku": f"{c}-sku", "category": c, "qty": 1, "price": p} for c, p in lines.items()],
        },
    )


def stock_world(share: float = 0.5) -> PipelineHarness:
    policy = Policy(gate=replace(OPEN, holdout=(("new_stock_for_interest", share),)))
    h = PipelineHarness(policy, clock="wall", start_ms=NOON)
    for n in range(40):
        buy(h, f"c{n}", {"fish": 10}, 30)
        buy(h, f"c{n}", {"fish": 10}, 20)
    return h


def test_stock_uplift_through_the_pipeline_counts_each_exposure_once() -> None:
    h = stock_world()
    h.stock({"event_id": "s1", "ts": h.wall.ms, "sku": "fish-new", "category": "fish", "qty": 5})
    told = h.triggers("new_stock_for_interest")
    assert len(told) == 40
    held = {t["customer_id"] for t in told if t["holdout"]}
    assert 5 <= len(held) <= 35
    rows = h.pipeline.uplift_rows()
    assert sum(r["open"] for r in rows) == 40 and sum(r["treated"] + r["control"] for r in rows) == 0
    h.advance(days=2)
    # c0..c9 buy fish (converts), c10..c19 buy bread (does not), the rest nothing
    for n in range(20):
        buy(h, f"c{n}", {"fish" if n < 10 else "bread": 5}, eid=f"late-{n}")
    buy(h, "c0", {"fish": 5}, eid="late-0")  # re-delivered: a duplicate, counts nothing
    h.advance(days=13)  # 15 days after the triggers: every window (14 days) closed by the clock
    rows = h.pipeline.uplift_rows()
    assert sum(r["open"] for r in rows) == 0
    converted = {f"c{n}" for n in range(10)}
    exp_treated = [0, 0]
    exp_control = [0, 0]
    for t in told:
        side = exp_control if t["holdout"] else exp_treated
        side[0] += 1
        side[1] += t["customer_id"] in converted
    assert sum(r["treated"] for r in rows) == exp_treated[0]
    assert sum(r["treated_converted"] for r in rows) == exp_treated[1]
    assert sum(r["control"] for r in rows) == exp_control[0]
    assert sum(r["control_converted"] for r in rows) == exp_control[1]
    assert {(r["type"], r["tier"]) for r in rows} <= {
        ("new_stock_for_interest", "core"),
        ("new_stock_for_interest", "regular"),
    }
    # after a restart the indexes are rebuilt from the states: the same rows
    before = h.pipeline.uplift_rows()
    h.pipeline.rebuild()
    assert h.pipeline.uplift_rows() == before


def test_window_closes_on_the_clock_for_a_silent_customer() -> None:
    h = stock_world(share=0.0)
    h.stock({"event_id": "s1", "ts": h.wall.ms, "sku": "fish-new", "category": "fish", "qty": 5})
    h.advance(days=13.9)
    assert sum(r["open"] for r in h.pipeline.uplift_rows()) == 40
    h.advance(days=0.2)
    rows = h.pipeline.uplift_rows()
    assert sum(r["open"] for r in rows) == 0 and sum(r["treated"] for r in rows) == 40
    assert all(r["control"] == 0 and r["ci_low"] is None for r in rows)


def churn_world(share: float, n: int = 60) -> PipelineHarness:
    policy = Policy(churn=ChurnPolicy(holdout_share=share))
    h = PipelineHarness(policy, clock="wall", start_ms=NOON)
    for c in range(n):
        for k in range(6):  # every 10 days, the last 10 days ago: valued (>= 5 purchases)
            buy(h, f"c{c}", {"fish": 10}, 60 - 10 * k)
    return h


def test_churn_holdout_is_deterministic_recorded_and_measured() -> None:
    assert not any(t.get("holdout") for t in churn_world(0.0, 10).triggers("churn_risk"))
    runs = []
    for _ in range(2):
        h = churn_world(0.5)
        h.advance(days=40)  # silent 3x the usual interval: at risk, alerted
        alerts = h.triggers("churn_risk")
        assert len(alerts) == 60
        assert all(t["deliver"] is (not t["holdout"]) for t in alerts)
        held = {t["customer_id"] for t in alerts if t["holdout"]}
        assert all(t["details"]["experiment"] == "default" for t in alerts if t["holdout"])
        runs.append(held)
        for c in range(0, 60, 2):  # the even ones come back within the window
            buy(h, f"c{c}", {"bread": 3})
        won = h.triggers("won_back")
        assert {t["customer_id"] for t in won} == {f"c{c}" for c in range(0, 60, 2)}
        assert all(t["holdout"] is (t["customer_id"] in held) for t in won)  # the alert's group
        h.advance(days=15)
        rows = h.pipeline.uplift_rows()
        got = {
            "treated": sum(r["treated"] for r in rows),
            "treated_converted": sum(r["treated_converted"] for r in rows),
            "control": sum(r["control"] for r in rows),
            "control_converted": sum(r["control_converted"] for r in rows),
        }
        assert got == {
            "treated": 60 - len(held),
            "treated_converted": sum(1 for c in range(0, 60, 2) if f"c{c}" not in held),
            "control": len(held),
            "control_converted": sum(1 for c in range(0, 60, 2) if f"c{c}" in held),
        }
    assert runs[0] == runs[1] and 15 <= len(runs[0]) <= 45


def test_settings_name_the_churn_holdout_and_refuse_it_in_the_gate() -> None:
    s = Settings(churn_holdout=0.25, uplift_window_days=7, uplift_max_open=3)
    policy = s.policy()
    assert policy.churn.holdout_share == 0.25
    assert policy.uplift == UpliftPolicy(window_days=7, max_open=3)
    with pytest.raises(ValueError, match="PATRONAGE_CHURN_HOLDOUT"):
        Settings(gate_holdout="churn_risk=0.1")
    with pytest.raises(ValueError):
        Settings(uplift_window_days=0)


def test_customers_with_the_same_key_share_it_in_the_index() -> None:
    """The index remembers every customer's contribution; decoded states bring their own
    copies of each key's strings, which the index shares (one tuple per distinct key)."""
    import orjson

    raw = {"open": [[T0, T0 + DAY_MS, "churn_risk", "loyal", "core", "treated", [], 0]],
           "done": {"won_back|loyal|core|treated": [2, 1]}}  # fmt: skip
    index = uplift.UpliftIndex()
    for subject in ("a", "b"):
        state = CustomerState(subject)
        state.uplift = orjson.loads(orjson.dumps(raw))  # fresh strings, as from the changelog
        index.update(0, subject, state)
    a, b = (list(index._of[s][1]) for s in ("a", "b"))
    assert a == b and len(a) == 2 and all(x is y for x, y in zip(a, b, strict=True))
    assert index.totals() == {k: [2 * n for n in v] for k, v in uplift.contribution(state).items()}  # type: ignore[union-attr]
