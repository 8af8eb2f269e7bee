"""Uplift through the real broker: generated data replayed (time-merged) with control groups
for both trigger types; the worker's rows equal an independent computation from the
triggers topic and the input purchases, in the HTTP answer, the CLI and the metrics, and
they survive a restart and a kill -9."""

from __future__ import annotations

import json
import shutil
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from schemas.timestamps import DAY_MS, parse_ts_ms
from streams.uplift import rows as uplift_rows
from tests.integration.conftest import Cluster
from tests.integration.test_churn import by_id_once
from tests.oracle import ts_ms

pytestmark = pytest.mark.integration
WINDOW_DAYS = 14
MEASURED = ("churn_risk", "new_stock_for_interest")
CONTROL_GROUPS = {  # both trigger types with a 30 % control group; the gate mostly open
    "PATRONAGE_GATE_CONSENT_DEFAULT": "true",
    "PATRONAGE_GATE_QUIET_HOURS": "00:00-00:00",
    "PATRONAGE_GATE_COALESCE_S": "0",
    "PATRONAGE_GATE_HOLDOUT": "new_stock_for_interest=0.3",
    "PATRONAGE_CHURN_HOLDOUT": "0.3",
    "PATRONAGE_UPLIFT_WINDOW_DAYS": str(WINDOW_DAYS),
    "PATRONAGE_UPLIFT_MAX_OPEN": "256",  # every trigger measured (the oracle sees them all)
}


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def oracle(
    triggers: list[dict[str, Any]], purchases: list[dict[str, Any]], now_ms: int
) -> list[dict[str, Any]]:
    """The uplift rows computed from the outputs and the inputs alone: every churn-risk and
    new-stock trigger is an exposure (control when held out), converted by a purchase of the
    customer strictly after it and less than the window later (stock: with an item of one of
    its categories), closed when its window ended by the clock's ``now_ms``."""
    bought: dict[str, list[tuple[int, set[str]]]] = defaultdict(list)
    seen: set[str] = set()
    for p in purchases:
        if p["event_id"] in seen:
            continue
        seen.add(p["event_id"])
        bought[p["customer_id"]].append((ts_ms(p["ts"]), {it["category"] for it in p.get("items", ())}))
    counts: dict[tuple[str, str, str, str], list[int]] = {}
    for t in triggers:
        start = parse_ts_ms(t["ts"])
        end = start + WINDOW_DAYS * DAY_MS
        cats = {it["category"] for it in t["items"]} if t["type"] == "new_stock_for_interest" else None
        converted = any(
            start < ts < end and (cats is None or not cats.isdisjoint(items))
            for ts, items in bought[t["customer_id"]]
        )
        group = "control" if t["holdout"] else "treated"
        key = (t["type"], t["details"]["segment"], t["details"]["tier"], group)
        entry = counts.setdefault(key, [0, 0, 0])
        if end <= now_ms:
            entry[0] += 1
            entry[1] += converted
        else:
            entry[2] += 1
    return uplift_rows(counts)


def _metric_sums(text: str) -> dict[tuple[str, str, str], float]:
    """(metric, type, group) -> sum over segments and tiers, from a Prometheus scrape."""
    out: dict[tuple[str, str, str], float] = defaultdict(float)
    for line in text.splitlines():
        if not line.startswith(("patronage_uplift_exposures{", "patronage_uplift_conversions{")):
            continue
        name, rest = line.split("{", 1)
        labels_text, value = rest.rsplit("} ", 1)
        labels = dict(part.split("=", 1) for part in labels_text.split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        out[(name, labels["type"], labels["group"])] += float(value)
    return out


def _scrape(cluster: Cluster) -> str:
    import urllib.request

    with urllib.request.urlopen(cluster.url() + "/metrics", timeout=30) as resp:
        return resp.read().decode()


def _now_ms(cluster: Cluster) -> int:
    status, doc = cluster.get("/summary/")
    assert status == 200
    return parse_ts_ms(doc["as_of"])


def test_uplift_rows_equal_an_independent_computation_and_survive_restarts(cluster: Cluster) -> None:
    data = cluster.tmp / "data"
    cluster.run("generate", "--customers", "800", "--seed", "21", "--out", str(data))
    cluster.env.update(CONTROL_GROUPS)
    cluster.env["PATRONAGE_CHURN_ALERT_TIERS"] = "core,regular"  # more alerts, more to measure
    cluster.start_worker()
    cluster.run("replay", str(data), "--quiet")
    cluster.wait(timeout=300, settle_s=3)

    triggers = [t for t in by_id_once(cluster.read_topic("triggers")).values() if t["type"] in MEASURED]
    by_type = defaultdict(lambda: [0, 0])
    for t in triggers:
        assert t["deliver"] is (not t["holdout"]), t
        by_type[t["type"]][t["holdout"]] += 1
    print("triggers (treated, control):", dict(by_type))
    for type_ in MEASURED:  # both groups exist for both types
        assert min(by_type[type_]) >= 10, (type_, by_type[type_])

    status, doc = cluster.get("/uplift")
    assert status == 200 and doc["window_days"] == WINDOW_DAYS
    got = doc["rows"]
    expected = oracle(triggers, _lines(data / "purchases.jsonl"), _now_ms(cluster))
    assert got == expected
    pooled: dict[tuple[str, str, str, str], list[int]] = {}
    for r in got:  # per type, all segments and tiers together
        for group, n, c in (
            ("treated", r["treated"], r["treated_converted"]),
            ("control", r["control"], r["control_converted"]),
        ):
            cell = pooled.setdefault((r["type"], "all", "all", group), [0, 0, 0])
            cell[0] += n
            cell[1] += c
            cell[2] += r["open"] if group == "treated" else 0
    for row in uplift_rows(pooled):
        print("pooled:", row)
    assert sum(r["treated_converted"] for r in got) > 0 and sum(r["control_converted"] for r in got) > 0
    assert sum(r["treated"] + r["control"] for r in got) > 0.8 * len(triggers)

    # the metrics say the same (closed exposures only)
    sums = _metric_sums(_scrape(cluster))
    for type_ in MEASURED:
        for group, n_key, c_key in (
            ("treated", "treated", "treated_converted"),
            ("control", "control", "control_converted"),
        ):
            assert sums[("patronage_uplift_exposures", type_, group)] == sum(
                r[n_key] for r in got if r["type"] == type_
            )
            assert sums[("patronage_uplift_conversions", type_, group)] == sum(
                r[c_key] for r in got if r["type"] == type_
            )

    # the CLI: JSON as served, and a readable table
    cli = json.loads(cluster.run("uplift", "--json", "--url", cluster.url()).stdout)
    assert cli == doc
    table = cluster.run("uplift", "--url", cluster.url()).stdout
    assert "uplift [95 % CI]" in table and "new_stock_for_interest" in table and "churn_risk" in table

    # a graceful restart, then a kill -9: the tallies come back from the changelog
    cluster.stop_workers()
    cluster.start_worker()
    cluster.wait(timeout=120, settle_s=2)
    assert cluster.get("/uplift/")[1] == doc
    cluster.signal_worker(0, signal.SIGKILL)
    cluster.wait_exit(0, timeout=10)
    cluster.start_worker()
    cluster.wait(timeout=120, settle_s=2)
    assert cluster.get("/uplift")[1] == doc
    # replaying the customer inputs again changes nothing (re-applied events are duplicates;
    # stock arrivals are left out: a re-sent arrival still fresh reaches customers who became
    # interested since - the gate's documented freshness rule, not a double count)
    again_dir = cluster.tmp / "again"
    again_dir.mkdir()
    for name in ("purchases", "touchpoints", "customer-updates"):
        shutil.copy(data / f"{name}.jsonl", again_dir / f"{name}.jsonl")
    cluster.run("replay", str(again_dir), "--quiet")
    cluster.wait(timeout=300, settle_s=3)
    assert cluster.get("/uplift")[1] == doc
    after = [t for t in by_id_once(cluster.read_topic("triggers")).values() if t["type"] in MEASURED]
    assert len(after) == len(triggers)


def test_two_workers_answer_for_their_partitions_and_the_cli_adds_them_up(cluster: Cluster) -> None:
    data = cluster.tmp / "data"
    cluster.run("generate", "--customers", "400", "--seed", "5", "--out", str(data))
    cluster.env.update(CONTROL_GROUPS)
    cluster.start_worker(0)
    cluster.start_worker(1)
    cluster.run("replay", str(data), "--quiet")
    cluster.wait(timeout=300, settle_s=3)
    docs = [cluster.get("/uplift", i)[1] for i in (0, 1)]
    assert all(d["rows"] for d in docs), "both workers hold measured customers"
    # each worker's event clock follows the newest event it has seen: the two may differ a
    # little, so an exposure ending between them may be closed on one worker, open on the other
    nows = sorted(parse_ts_ms(cluster.get("/summary/", i)[1]["as_of"]) for i in (0, 1))
    triggers = [t for t in by_id_once(cluster.read_topic("triggers")).values() if t["type"] in MEASURED]
    purchases = _lines(data / "purchases.jsonl")
    early, late = oracle(triggers, purchases, nows[0]), oracle(triggers, purchases, nows[1])
    both = cluster.url(0) + "," + cluster.url(1)
    added = json.loads(cluster.run("uplift", "--json", "--url", both).stdout)
    assert added["window_days"] == WINDOW_DAYS
    got = added["rows"]
    assert [(r["type"], r["segment"], r["tier"]) for r in got] == [
        (r["type"], r["segment"], r["tier"]) for r in late
    ]
    for g, lo, hi in zip(got, early, late, strict=True):
        for key in ("treated", "treated_converted", "control", "control_converted"):
            assert lo[key] <= g[key] <= hi[key], (key, g, lo, hi)
        assert g["treated"] + g["control"] + g["open"] == hi["treated"] + hi["control"] + hi["open"]
    if nows[0] == nows[1]:
        assert got == late
    # the CLI's sum is the sum of what each worker answers for its own partitions
    for key in ("treated", "treated_converted", "control", "control_converted", "open"):
        assert sum(r[key] for r in got) == sum(r[key] for d in docs for r in d["rows"])
    assert sum(r["treated"] + r["control"] + r["open"] for r in got) == len(triggers)
