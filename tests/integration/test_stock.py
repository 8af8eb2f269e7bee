"""New stock for your interest through the real broker: labelled generated data scored
against an independent batch computation of the documented definition, the notification
gate on its defaults, and a worker killed in the middle of a fan-out."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from schemas.timestamps import DAY_MS, parse_ts_ms
from synthetic.generator import _STORE_INFO
from tests.integration.conftest import Cluster
from tests.integration.test_churn import by_id_once
from tests.oracle import stock_audience, ts_ms

pytestmark = pytest.mark.integration
REGIONS = {store: region for store, (region, _tz) in _STORE_INFO.items()}
PERMISSIVE = {  # the gate out of the way: every match becomes a one-item notification
    "PATRONAGE_GATE_CONSENT_DEFAULT": "true",
    "PATRONAGE_GATE_QUIET_HOURS": "00:00-00:00",
    "PATRONAGE_GATE_COOLDOWN_DAYS": "0",
    "PATRONAGE_GATE_CAP_PER_DAY": "1000000",
    "PATRONAGE_GATE_CAP_PER_WEEK": "1000000",
    "PATRONAGE_GATE_JUST_BOUGHT_DAYS": "0",
    "PATRONAGE_GATE_COALESCE_S": "0",
}


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def generated(cluster: Cluster, customers: int, seed: int) -> Path:
    data = cluster.tmp / "data"
    cluster.run("generate", "--customers", str(customers), "--seed", str(seed), "--out", str(data))
    return data


def stock_triggers(cluster: Cluster) -> list[dict[str, Any]]:
    return [
        t
        for t in by_id_once(cluster.read_topic("triggers")).values()
        if t["type"] == "new_stock_for_interest"
    ]


def test_labelled_arrivals_reach_exactly_the_customers_the_definition_names(cluster: Cluster) -> None:
    data = generated(cluster, 1000, 13)
    labels = json.loads((data / "labels.json").read_text())
    only = cluster.tmp / "no-updates"  # no consent records: the gate's consent default applies
    only.mkdir()
    for name in ("purchases", "touchpoints", "stock-arrivals"):
        shutil.copy(data / f"{name}.jsonl", only / f"{name}.jsonl")
    cluster.env.update(PERMISSIVE)
    cluster.env["PATRONAGE_STORE_REGIONS"] = ",".join(f"{s}={r}" for s, r in REGIONS.items())
    cluster.start_worker()
    cluster.run("replay", str(only), "--quiet")
    cluster.wait(timeout=300, settle_s=3)

    truth = stock_audience(
        rows(data / "purchases.jsonl"),
        rows(data / "touchpoints.jsonl"),
        rows(data / "stock-arrivals.jsonl"),
        regions=REGIONS,
    )
    expected = {(a, c) for a, told in truth.items() for c in told}
    triggers = stock_triggers(cluster)
    got = {(t["details"]["first_arrival_id"], t["customer_id"]) for t in triggers}
    assert all(len(t["items"]) == 1 and t["reason"] == "interest" for t in triggers)
    assert len(got) == len(triggers), "a customer told twice about one arrival"
    hit = len(expected & got)
    precision, recall = hit / len(got), hit / len(expected)
    print(
        f"stock audience: expected {len(expected)}, told {len(got)}, precision {precision:.4f}, recall {recall:.4f}"
    )
    assert len(expected) > 1000
    assert precision >= 0.98 and recall >= 0.95
    # and what the generator says each customer really favours
    arrivals = {a["event_id"]: a for a in rows(data / "stock-arrivals.jsonl")}
    favourites = labels["favourite_categories"]
    in_favourites = sum(arrivals[a]["category"] in favourites.get(c, ()) for a, c in got) / len(got)
    print(f"told about a labelled favourite category: {in_favourites:.4f}")
    assert in_favourites >= 0.95


def _facts_at(updates: list[dict[str, Any]]) -> dict[str, list[tuple[int, str, str, Any]]]:
    out: dict[str, list[tuple[int, str, str, Any]]] = defaultdict(list)
    for u in updates:
        for name in ("consent", "timezone", "quiet_hours"):
            if name in u:
                out[u["customer_id"]].append((ts_ms(u["ts"]), u["event_id"], name, u[name]))
    for facts in out.values():
        facts.sort(key=lambda f: (f[0], f[1]))
    return out


def _fact(history: list[tuple[int, str, str, Any]], name: str, at_ms: int) -> Any:
    value = None
    for ts, _id, field, v in history:
        if ts <= at_ms and field == name:
            value = v
    return value


def _quiet(local: datetime, start: int, end: int) -> bool:
    minute = local.hour * 60 + local.minute
    return start <= minute < end if start < end else (minute >= start or minute < end)


def test_the_gate_on_its_defaults_consent_and_quiet_hours(cluster: Cluster) -> None:
    data = generated(cluster, 1000, 13)
    cluster.env["PATRONAGE_STORE_REGIONS"] = ",".join(f"{s}={r}" for s, r in REGIONS.items())
    cluster.env["PATRONAGE_GATE_COALESCE_S"] = "60"
    cluster.start_worker()
    cluster.run("replay", str(data), "--quiet")
    cluster.wait(timeout=300, settle_s=3)

    triggers = stock_triggers(cluster)
    assert len(triggers) > 100
    facts = _facts_at(rows(data / "customer-updates.jsonl"))
    never_consented = {
        c for c in {p["customer_id"] for p in rows(data / "purchases.jsonl")}
        if not any(f[2] == "consent" and any(f[3].values()) for f in facts.get(c, ()))
    }  # fmt: skip
    assert never_consented  # the data has opted-out customers
    at_quiet_end = 0
    for t in triggers:
        at = parse_ts_ms(t["ts"])
        history = facts.get(t["customer_id"], [])
        assert t["customer_id"] not in never_consented
        consent = _fact(history, "consent", at) or {}
        assert consent.get(t["channel"]) is True, f"{t['trigger_id']} via {t['channel']} without consent"
        zone = ZoneInfo(_fact(history, "timezone", at) or "UTC")
        own = _fact(history, "quiet_hours", at)
        start, end = (21 * 60, 8 * 60) if not own else (
            int(own["start"][:2]) * 60 + int(own["start"][3:]), int(own["end"][:2]) * 60 + int(own["end"][3:])
        )  # fmt: skip
        local = datetime.fromtimestamp(at / 1000, UTC).astimezone(zone)
        assert not _quiet(local, start, end), f"{t['trigger_id']} at {local.isoformat()} in quiet hours"
        at_quiet_end += local.hour * 60 + local.minute == end and local.second == 0
        assert len(t["items"]) <= 10
    assert at_quiet_end > 0, "no notification deferred to the end of quiet hours"
    _status, summary = cluster.get("/summary/")
    assert summary["notifications"]["overdue"] == 0, summary["notifications"]  # deferred, not never
    print(
        f"stock triggers {len(triggers)}, sent at the end of quiet hours {at_quiet_end}, {summary['notifications']}"
    )


def test_a_worker_killed_mid_fan_out_notifies_nobody_twice(cluster: Cluster) -> None:
    customers = 20_000
    now = int(time.time() * 1000)
    purchases = [
        {"event_id": f"p{n}-{k}", "customer_id": f"c{n:06d}", "ts": now - (40 - 10 * k) * DAY_MS,
         "amount": 20, "currency": "EUR", "items": [{"sku": "tea-1", "category": "tea", "qty": 1, "price": 20}]}
        for n in range(customers) for k in range(2)
    ]  # fmt: skip
    cluster.env.update(PERMISSIVE)
    cluster.env["PATRONAGE_CLOCK"] = "wall"
    cluster.start_worker()
    cluster.replay(cluster.write("p.jsonl", purchases), "purchases")
    cluster.wait(timeout=300, settle_s=2)
    arrival = {"event_id": "s-tea", "ts": now, "sku": "tea-new", "category": "tea", "qty": 500}
    cluster.replay(cluster.write("s.jsonl", [arrival]), "stock-arrivals")
    from tests.integration.test_churn import _consumer

    consumer = _consumer(cluster)
    try:
        limit = time.monotonic() + 60
        first = None
        while first is None and time.monotonic() < limit:
            msg = consumer.poll(0.01)
            if (
                msg is not None
                and msg.error() is None
                and json.loads(msg.value())["type"] == "new_stock_for_interest"
            ):
                first = msg
        assert first is not None, "no stock trigger"
    finally:
        consumer.close()
    svc, _ = cluster.workers[0]
    pid = svc.pid()
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)  # the fan-out is under way: triggers are being written
    svc.kill9()
    told_before = len([t for t in cluster.read_topic("triggers") if t["type"] == "new_stock_for_interest"])
    cluster.start_worker()
    cluster.wait(timeout=300, settle_s=3)
    raw = [t for t in cluster.read_topic("triggers") if t["type"] == "new_stock_for_interest"]
    by_customer: dict[str, set[str]] = defaultdict(set)
    for t in by_id_once(raw).values():
        by_customer[t["customer_id"]].add(t["trigger_id"])
    print(f"fan-out of {customers}: {told_before} triggers before the kill, {len(raw)} records after, "
          f"{len(raw) - customers} identical re-sends")  # fmt: skip
    assert told_before < customers, "the kill came after the fan-out: nothing was proven"
    assert len(by_customer) == customers, "somebody was never told"
    assert all(len(ids) == 1 for ids in by_customer.values()), "somebody was told twice"
    # and not even the same record twice: the restart read the topic back before re-sending
    assert len(raw) == customers, f"{len(raw) - customers} trigger records sent twice"


def test_a_region_learned_before_a_restart_still_reaches_its_customers_after_it(cluster: Cluster) -> None:
    """A fresh-eyes backlog run lost the new-stock triggers of region-only arrivals read after
    a SIGTERM: the store -> region map learned from arrivals was in memory only. It is kept
    on the compacted store-regions topic and read at every recovery."""
    now = int(time.time() * 1000)
    purchases = [
        {"event_id": f"p-{c}-{k}", "customer_id": c, "ts": now - (40 - 10 * k) * DAY_MS, "store_id": store,
         "amount": 20, "currency": "EUR", "items": [{"sku": "tea-1", "category": "tea", "qty": 1, "price": 20}]}
        for c, store in (("c-north", "s-n"), ("c-south", "s-s"), ("c-none", "s-x")) for k in range(2)
    ]  # fmt: skip
    cluster.env.update(PERMISSIVE)
    cluster.start_worker()
    cluster.replay(cluster.write("p.jsonl", purchases), "purchases")
    teach = [  # stores named with their regions, in a category nobody buys
        {"event_id": "s-teach-n", "ts": now - 20 * DAY_MS, "sku": "x", "category": "garden", "qty": 1,
         "store_id": "s-n", "region": "north"},
        {"event_id": "s-teach-s", "ts": now - 20 * DAY_MS, "sku": "x", "category": "garden", "qty": 1,
         "store_id": "s-s", "region": "south"},
    ]  # fmt: skip
    cluster.replay(cluster.write("teach.jsonl", teach), "stock-arrivals")
    cluster.wait(timeout=120, settle_s=2)
    assert stock_triggers(cluster) == []
    kept = {r["store_id"]: r["region"] for r in cluster.read_topic("store-regions")}
    assert kept == {"s-n": "north", "s-s": "south"}, kept
    cut = cluster.run("tail", "store-regions", "--json", "-n", "1")  # a cut is said, on stderr
    assert len(cut.stdout.splitlines()) == 1 and "the newest 1 of 2 records; --all" in cut.stderr
    every = cluster.run("tail", "store-regions", "--json", "-n", "1", "--all")
    assert len(every.stdout.splitlines()) == 2 and not every.stderr.strip()
    cluster.signal_worker()
    assert cluster.wait_exit(timeout=30) == 0
    cluster.start_worker()  # reads from the committed offsets: the teaching arrivals are behind them
    north = {"event_id": "s-north-tea", "ts": now - 5 * DAY_MS, "sku": "tea-9", "category": "tea", "qty": 5,
             "region": "north"}  # fmt: skip
    cluster.replay(cluster.write("north.jsonl", [north]), "stock-arrivals")
    cluster.wait(timeout=120, settle_s=2)
    told = {t["customer_id"] for t in stock_triggers(cluster)}
    assert told == {"c-north"}, told
    log = (cluster.tmp / "worker0.log").read_text()
    assert "store regions: 2 on the topic, 2 new to this worker" in log
    # the restarted worker wrote nothing again: it knew both stores from the topic
    assert len(cluster.read_topic("store-regions")) == 2
