"""New-stock costs (``python -m bench.stock``; part of ``make bench``). Prints one JSON line.

- fan-out through the broker: one worker holding ``--customers`` customers interested in
  one category (two orders each); one stock arrival produced; the time until the last of
  their triggers is read back from the ``triggers`` topic (target < 2 s for 100,000). The
  gate is opened (no coalescing window, quiet hours, caps or consent) so every match is a
  trigger at once: the window a deployment configures adds to this on purpose;
- the same fan-out in the pure pipeline (no I/O): match + gate + trigger per customer;
- index upkeep per purchase: the interest profile and the interest and affinity indexes for
  realistic orders (line items of the bench's purchase generator);
- affinity on generated data: how many extra customers an arrival reaches when affinity is
  on for every category, and how many of them buy the category within 30 days, beside the
  same rate for the customers reached by interest and for everybody else.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from schemas.timestamps import DAY_MS
from schemas.topics import Topic
from streams.policy import GatePolicy, InterestPolicy, Policy
from streams.testing import PipelineHarness

OPEN = GatePolicy(coalesce_s=0, quiet_start_min=0, quiet_end_min=0, consent_default=True, cooldown_days=0,
                  cap_per_day=10**9, cap_per_week=10**9, just_bought_days=0)  # fmt: skip
NOW = 1_793_491_200_000  # 2026-11-01


def _purchases(customers: int, now_ms: int) -> list[dict[str, Any]]:
    out = []
    for n in range(customers):
        for k in range(2):
            out.append(
                {"event_id": f"p{n}-{k}", "customer_id": f"c{n:07d}", "ts": now_ms - (40 - 10 * k) * DAY_MS,
                 "amount": 20, "currency": "EUR",
                 "items": [{"sku": "tea-1", "category": "tea", "qty": 1, "price": 15},
                           {"sku": "bread-1", "category": "bread", "qty": 1, "price": 5}]}
            )  # fmt: skip
    return out


def pure_fanout(customers: int, partitions: int) -> dict[str, Any]:
    from agents.app import tune_gc

    tune_gc()  # as the worker does
    h = PipelineHarness(Policy(gate=OPEN), partitions=partitions, clock="wall", start_ms=NOW)
    rows = _purchases(customers, NOW)
    for i in range(0, len(rows), 20_000):
        h.send_many(Topic.PURCHASES, rows[i : i + 20_000])
    gc.collect()
    gc.freeze()  # as the worker does after recovery
    from streams.stock import broadcast_value

    value = broadcast_value({"event_id": "s1", "ts": NOW, "sku": "tea-9", "category": "tea", "qty": 10})
    records = [h.record(Topic.STOCK_BROADCAST, value, key="tea", partition=p) for p in range(partitions)]
    started = time.perf_counter()
    batches = [h.pipeline.apply(p, [records[p]]) for p in range(partitions)]
    matched = time.perf_counter() - started
    encode_started = time.perf_counter()
    for b in batches:
        for st in b.changed.values():
            if st is not None:
                st.to_json()
        for e in b.triggers:
            orjson.dumps(e.value)
    encoded = time.perf_counter() - encode_started
    triggers = sum(len(b.triggers) for b in batches)
    return {
        "customers": customers,
        "triggers": triggers,
        "match_gate_s": round(matched, 3),
        "encode_s": round(encoded, 3),
        "us_per_customer": round((matched + encoded) / max(1, triggers) * 1e6, 2),
    }


def upkeep(purchases: int) -> dict[str, Any]:
    """Microseconds per purchase for the interest profile and the two stock indexes."""
    from schemas.fast import fast_purchase
    from schemas.state import CustomerState
    from streams import interest
    from streams.stock import AffinityIndex, InterestIndex
    from synthetic import iter_purchases_fast

    policy = InterestPolicy()
    events = [fast_purchase(orjson.loads(orjson.dumps(e))) for e in iter_purchases_fast(20_000, purchases, 7)]
    states: dict[str, CustomerState] = {}
    idx, aff = InterestIndex(policy), AffinityIndex(policy)
    t_profile = t_index = 0.0
    for ev in events:
        assert ev is not None
        s = states.get(ev.customer_id)
        if s is None:
            s = states[ev.customer_id] = CustomerState(ev.customer_id)
        a = time.perf_counter()
        interest.note_purchase(s, ev.ts, ev.items, policy)
        b = time.perf_counter()
        idx.update(0, ev.customer_id, s)
        aff.update(0, ev.customer_id, s)
        c = time.perf_counter()
        t_profile += b - a
        t_index += c - b
    n = len(events)
    profile_bytes = sum(len(orjson.dumps(s.interest)) for s in states.values()) / len(states)
    return {
        "purchases": n,
        "profile_us_per_purchase": round(t_profile / n * 1e6, 2),
        "indexes_us_per_purchase": round(t_index / n * 1e6, 2),
        "profile_changelog_bytes_per_customer": round(profile_bytes),
    }


def affinity(customers: int, seed: int) -> dict[str, Any]:
    """Extra reach of affinity (on for every category) and who of them buys within 30 days."""
    from synthetic.generator import generate
    from tests.oracle import ts_ms

    data = generate(customers, seed)
    results = {}
    for on in (False, True):
        interest = InterestPolicy(
            affinity_categories=frozenset({"*"}) if on else frozenset(), affinity_min_lift=1.5
        )
        h = PipelineHarness(
            Policy(gate=OPEN, interest=interest), clock="event", start_ms=data.labels["end_ms"] + DAY_MS
        )
        events = sorted(
            [(ts_ms(e["ts"]), n, t, e) for t, rows in (
                (Topic.PURCHASES, data.purchases), (Topic.TOUCHPOINTS, data.touchpoints),
                (Topic.STOCK_ARRIVALS, data.stock_arrivals)) for n, e in enumerate(rows)],
            key=lambda x: (x[0], x[1]),
        )  # fmt: skip
        for _ts, _n, topic, e in events:
            if topic is Topic.STOCK_ARRIVALS:
                h.stock(e)
            else:
                h.send(topic, e)
        results[on] = h.triggers("new_stock_for_interest")
    arrivals = {a["event_id"]: a for a in data.stock_arrivals}
    bought: dict[tuple[str, str], list[int]] = defaultdict(list)
    for p in data.purchases:
        for it in p.get("items", []):
            bought[(p["customer_id"], it["category"])].append(ts_ms(p["ts"]))

    def converted(pairs: set[tuple[str, str]]) -> float | None:
        if not pairs:
            return None
        hits = 0
        for aid, cid in pairs:
            a = arrivals[aid]
            at = ts_ms(a["ts"])
            hits += any(at < t <= at + 30 * DAY_MS for t in bought.get((cid, a["category"]), ()))
        return round(hits / len(pairs), 4)

    interest_pairs = {(t["details"]["first_arrival_id"], t["customer_id"]) for t in results[False]}
    extra = {
        (t["details"]["first_arrival_id"], t["customer_id"])
        for t in results[True]
        if t["reason"] == "affinity"
    }
    everyone = {c for c, _cat in bought}
    sample = {(aid, cid) for aid in list(arrivals)[::10] for cid in everyone} - interest_pairs - extra
    return {
        "customers": customers,
        "arrivals": len(arrivals),
        "reached_by_interest": len(interest_pairs),
        "extra_reached_by_affinity": len(extra),
        "bought_within_30d_interest": converted(interest_pairs),
        "bought_within_30d_affinity": converted(extra),
        "bought_within_30d_others": converted(sample),
    }


def broker_fanout(customers: int, partitions: int) -> dict[str, Any]:
    from confluent_kafka import Consumer, Producer

    from agents.localstack import LocalStack, Service, free_port, wait_worker_ready

    run = Path(tempfile.mkdtemp(prefix="bench-stock-"))
    stack = LocalStack(run / "stack", kafka_port=free_port(), redis_port=free_port())
    stack.start_broker()
    bootstrap = f"127.0.0.1:{stack.kafka_port}"
    port = free_port()
    prefix = "bs-"
    env = {
        "PATRONAGE_BROKER": stack.broker_url, "PATRONAGE_APP_ID": f"{prefix}app", "PATRONAGE_TOPIC_PREFIX": prefix,
        "PATRONAGE_PARTITIONS": str(partitions), "PATRONAGE_WEB_PORT": str(port),
        "PATRONAGE_DATA_DIR": str(run / "worker-data"), "PATRONAGE_LOG_LEVEL": "warn", "PATRONAGE_CLOCK": "wall",
        "PATRONAGE_EMPTY_FETCH_BACKOFF_MS": os.environ.get("PATRONAGE_EMPTY_FETCH_BACKOFF_MS", "5"),
        "PATRONAGE_GATE_CONSENT_DEFAULT": "true", "PATRONAGE_GATE_QUIET_HOURS": "00:00-00:00",
        "PATRONAGE_GATE_COALESCE_S": "0", "PATRONAGE_GATE_CAP_PER_DAY": "1000000",
        "PATRONAGE_GATE_CAP_PER_WEEK": "1000000", "PATRONAGE_GATE_JUST_BOUGHT_DAYS": "0",
    }  # fmt: skip
    svc = Service("bench-stock-worker", run / "worker.pid", run / "worker.log")
    proc = svc.start([str(Path(os.sys.executable).parent / "patronage"), "worker"], env={**os.environ, **env})
    try:
        wait_worker_ready(port, 120, proc, svc.log_file)
        now = int(time.time() * 1000)
        producer = Producer(
            {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 20}
        )
        rows = _purchases(customers, now)
        for r in rows:
            while True:
                try:
                    producer.produce(f"{prefix}purchases", orjson.dumps(r), key=r["customer_id"].encode())
                    break
                except BufferError:
                    producer.poll(0.01)
            producer.poll(0)
        producer.flush()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics/", timeout=60) as resp:
                text = resp.read().decode()
            done = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("patronage_events_total{") and 'topic="purchases"' in line
            )
            if done >= len(rows):
                break
            time.sleep(0.2)
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{now}",
                             "auto.offset.reset": "latest", "enable.auto.commit": False})  # fmt: skip
        consumer.subscribe([f"{prefix}triggers"])
        while not consumer.assignment():
            consumer.poll(0.1)
        time.sleep(1.0)
        arrival = {"event_id": "s-bench", "ts": now, "sku": "tea-9", "category": "tea", "qty": 100}
        sent = time.perf_counter()
        producer.produce(f"{prefix}stock-arrivals", orjson.dumps(arrival), key=b"tea")
        producer.flush()
        seen = 0
        first = last = None
        limit = time.monotonic() + 300
        while seen < customers and time.monotonic() < limit:
            for msg in consumer.consume(10_000, 0.2):
                if msg.error() is None and b"new_stock_for_interest" in msg.value():
                    seen += 1
                    last = time.perf_counter()
                    first = first or last
        consumer.close()
        return {
            "customers": customers,
            "triggers_read": seen,
            "first_trigger_s": None if first is None else round(first - sent, 3),
            "last_trigger_s": None if last is None else round(last - sent, 3),
        }
    finally:
        svc.stop()
        stack.down()
        if os.environ.get("BENCH_KEEP_LOG"):
            print((run / "worker.log").read_text()[-5000:], file=os.sys.stderr)
        shutil.rmtree(run, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=100_000, help="customers interested in the category")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--skip", nargs="*", default=[], help="parts to skip: broker pure upkeep affinity")
    args = ap.parse_args()
    out: dict[str, Any] = {}
    if "upkeep" not in args.skip:
        out["upkeep"] = upkeep(300_000)
    if "pure" not in args.skip:
        out["pure_fanout"] = pure_fanout(args.customers, args.partitions)
    if "affinity" not in args.skip:
        out["affinity"] = affinity(1000, 13)
    if "broker" not in args.skip:
        out["broker_fanout"] = broker_fanout(args.customers, args.partitions)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
