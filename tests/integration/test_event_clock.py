"""The event clock through the real broker, on a replay sent flush by flush while the worker
reads it: every churn alert is decided after everything its partition had to apply before
the alert's time.

Found on a paced replay of the demo data (a flush of records, a pause, the next; a few stock
arrivals in each): while the worker was behind, every fetch brought new stock arrivals, and
each partition held its customer records back until they were broadcast - for seconds. The
consumer stopped counting held records as still to be applied while the batch that offered
them again ran, so the partition's inputs looked idle, and its clock followed another
partition weeks ahead. Lapse alerts fired for customers whose purchase before the deadline
was among the held records, and that purchase then closed each alert with a won_back older
than the alert (222 of 840 won_backs in one run). Before the fix this test found 32-70 of
~100 lapse alerts ahead of a purchase, every run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from schemas.timestamps import parse_ts_ms
from streams.partitioning import key_hash
from tests.integration.conftest import Cluster, code_env
from tests.integration.test_churn import by_id_once

pytestmark = pytest.mark.integration

# ``patronage replay`` of a directory, but a flush of FLUSH records at a time with a pause
# after each (a feed the worker reads while it arrives, not a backlog sent before it starts)
PACED_REPLAY = """
import asyncio, sys, time
from pathlib import Path
from agents.cli import ensure_all_topics, load_settings
from agents.replay import replay, sources_in
settings = load_settings()
result = asyncio.run(replay(settings, sources_in(Path(sys.argv[1])), partitions=ensure_all_topics(settings),
                            batch_size=int(sys.argv[2]), progress=lambda n: time.sleep(float(sys.argv[3]))))
print(result.sent)
"""


def test_no_alert_is_decided_ahead_of_a_purchase_in_a_paced_replay(cluster: Cluster) -> None:
    data = cluster.tmp / "data"
    cluster.run("generate", "--customers", "400", "--seed", "11", "--out", str(data))
    cluster.start_worker()
    subprocess.run(
        [sys.executable, "-c", PACED_REPLAY, str(data), "600", "0.1"],
        env={**os.environ, **cluster.env, **code_env()},
        check=True,
        capture_output=True,
        timeout=120,
    )
    cluster.wait(timeout=120)
    assert_no_alert_ahead_of_a_purchase(cluster, data)


def test_a_backlog_that_overflows_the_hold_keeps_the_inputs_aligned(cluster: Cluster) -> None:
    """A whole replay waiting before the worker starts, the hold bound small so that it
    overflows (as 100,000 records did on a 441k-record replay of 5,000 customers).

    Found there: a partition whose fetch brought only purchases, while its touchpoints were
    held back from an earlier fetch, counted the touchpoints as "still to read", held
    everything at the partition's clock, and so on, fetch after fetch, until the hold
    overflowed and its 100,000 records were applied unaligned: the batch's ticks ran to the
    newest touchpoint, months past purchases not fetched yet. 642-765 lifecycle changes per
    run were "a purchase from before the at_risk deadline, applied after it", and 301 lapse
    alerts were withdrawn as premature."""
    data = cluster.tmp / "data"
    cluster.run("generate", "--customers", "800", "--seed", "7", "--out", str(data))
    cluster.run("replay", str(data), "--quiet")
    cluster.env["PATRONAGE_HOLD_MAX_RECORDS"] = "20000"  # inputs paused from 5,000 held
    cluster.start_worker()
    cluster.wait(timeout=240)
    log = (cluster.tmp / "worker0.log").read_text()
    assert "records held back; pausing" in log  # the backpressure was exercised
    assert_no_alert_ahead_of_a_purchase(cluster, data)
    changes = cluster.read_topic("lifecycle-changes")
    late = [c for c in changes if "applied after it" in c["cause"]["rule"]]
    assert not late, (len(late), late[:2])
    assert_tiers_equal_a_batch_count(cluster, data)


def assert_tiers_equal_a_batch_count(cluster: Cluster, data: Path) -> None:
    """Every churn alert's tier is what a batch count over the purchases says at the alert's
    time: ``core`` when at most 20 % of the buyers of the customer's partition (the README's
    ranking) had spent as much or more by then. Ranked against every partition of the worker,
    as far as each had got, and with the buyers of the batch being applied left out, 28 % of
    a backlog replay's sampled tiers were wrong (5,000 customers, seed 3)."""
    partitions = int(cluster.env["PATRONAGE_PARTITIONS"])
    bought: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
    for line in (data / "purchases.jsonl").read_text().splitlines():
        p = json.loads(line)
        cents = int(Decimal(str(p["amount"])) * 100)
        bought[key_hash(p["customer_id"].encode()) % partitions].append(
            (parse_ts_ms(p["ts"]), p["customer_id"], cents)
        )
    alerts = [t for t in by_id_once(cluster.read_topic("triggers")).values() if t["type"] == "churn_risk"]
    assert len(alerts) >= 20
    wrong = []
    for t in alerts:
        at = parse_ts_ms(t["ts"])
        spent: dict[str, int] = defaultdict(int)
        for ts, cid, cents in bought[key_hash(t["customer_id"].encode()) % partitions]:
            if ts <= at:
                spent[cid] += cents
        mine = spent[t["customer_id"]]
        core = sum(v >= mine for v in spent.values()) <= max(1.0, 0.2 * len(spent))
        if t["details"]["tier"] != ("core" if core else "regular"):
            wrong.append((t["customer_id"], t["ts"], t["details"]["tier"]))
    assert not wrong, f"{len(wrong)} of {len(alerts)} alert tiers differ from a batch count: {wrong[:5]}"


def assert_no_alert_ahead_of_a_purchase(cluster: Cluster, data: Path) -> None:
    bought: dict[str, list[int]] = defaultdict(list)
    for line in (data / "purchases.jsonl").read_text().splitlines():
        p = json.loads(line)
        bought[p["customer_id"]].append(parse_ts_ms(p["ts"]))
    triggers = list(by_id_once(cluster.read_topic("triggers")).values())
    lapses = [t for t in triggers if t["type"] == "churn_risk" and t["reason"] == "lapse"]
    assert len(lapses) >= 20
    premature = [
        (t["customer_id"], t["ts"], t["details"]["last_purchase_at"])
        for t in lapses
        if any(
            parse_ts_ms(t["details"]["last_purchase_at"]) < ts < parse_ts_ms(t["ts"])
            for ts in bought[t["customer_id"]]
        )
    ]
    assert not premature, (
        f"{len(premature)} of {len(lapses)} lapse alerts ahead of a purchase: {premature[:5]}"
    )
    inverted = [
        t["details"]
        for t in triggers
        if t["type"] == "won_back"
        and parse_ts_ms(t["details"]["purchase_at"]) < parse_ts_ms(t["details"]["alerted_at"])
    ]
    assert not inverted, f"{len(inverted)} won_back older than their alert: {inverted[:3]}"
    # a replay has no late records: no alert had to be withdrawn either
    assert not [t for t in triggers if t["type"] == "churn_risk_withdrawn"]
