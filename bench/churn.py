"""Churn costs, without Kafka (``python -m bench.churn``; part of ``make bench``):

- tick: 1,000,000 customers in state, 1,000 of them due - the time of one ``tick`` over the
  partitions that hold them (pop the due, advance their risk stage, decide the triggers,
  re-index); target < 50 ms;
- memory: bytes per customer of the in-memory state and its indexes (tracemalloc) and of
  the changelog value (JSON), for buyers with a realistic history;
- the BG/NBD fit on 25,000 customers (bench/bgnbd_fit.py).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

from schemas.state import CustomerState
from schemas.timestamps import DAY_MS
from schemas.topics import Topic, TopicNames
from streams.clock import WallClock
from streams.dedupe import id_hash, remember
from streams.indexes import StateIndex
from streams.partitioning import KeyPartitioner
from streams.pipeline import CustomerPipeline
from streams.policy import Policy

NOW = 1_793_491_200_000  # 2026-11-01


def customer(i: int, *, silent_days: int, purchases: int = 8, every: int = 12) -> CustomerState:
    """A buyer with ``purchases`` purchases ``every`` days apart, the last ``silent_days`` ago."""
    s = CustomerState(f"c{i:07d}")
    last = NOW - silent_days * DAY_MS - (i % 1000) * 1000
    for k in range(purchases):
        ts = last - (purchases - 1 - k) * every * DAY_MS
        remember(s.purchase_ids, id_hash(f"p{i}-{k}"), ts, 4096)
        day = ts // DAY_MS
        s.days[day] = [1, 2500]
    s.frequency, s.monetary_cents = purchases, purchases * 2500
    s.first_purchase_ms, s.last_purchase_ms = last - (purchases - 1) * every * DAY_MS, last
    s.last_event_ms = last
    s.stores = {"s01": purchases}
    s.stage = "member"
    return s


def wall_pipeline(
    partitions: int, wall: list[int], policy: Policy | None = None, extra_indexes: Sequence[StateIndex] = ()
) -> tuple[CustomerPipeline, dict[str, CustomerState], dict[str, int]]:
    """A pipeline on a wall clock reading ``wall[0]``, with its (empty) store and key map."""
    topics = TopicNames()
    partitioner = KeyPartitioner({name: partitions for name in topics.all()})
    identity = topics.real(Topic.IDENTITY)
    store: dict[str, CustomerState] = {}
    keys: dict[str, int] = {}
    pipeline = CustomerPipeline(
        policy=policy or Policy(),
        store=store,
        clock=WallClock(lambda: wall[0]),
        topics=topics,
        partition_of=lambda s: partitioner(identity, s),
        key_partitions=keys,
        extra_indexes=extra_indexes,
    )
    return pipeline, store, keys


def tick_cost(n: int, due: int, partitions: int) -> dict[str, Any]:
    wall = [NOW]
    pipeline, store, keys = wall_pipeline(partitions, wall)
    built = time.perf_counter()
    # everyone buys every 12 days; most bought 5 days ago, ``due`` of them 35 days ago. Their
    # rhythm is blended with the 30-day prior (the floor: the population's 12 days is below
    # it), so the silent ones are due 13 days from NOW and the others 30 days later
    for i in range(n):
        s = customer(i, silent_days=35 if i % (n // due) == 0 else 5)
        store[s.subject] = s
        keys[s.subject] = pipeline.partition_of(s.subject)
    gc.collect()
    gc.freeze()
    pipeline.rebuild()
    rebuild_s = time.perf_counter() - built
    assert len(pipeline.deadlines) == n
    wall[0] = NOW + 14 * DAY_MS
    started = time.perf_counter()
    batches = [pipeline.tick(p) for p in range(partitions)]
    tick_s = time.perf_counter() - started
    popped = sum(b.stats.due for b in batches)
    triggers = sum(len(b.triggers) for b in batches)
    assert popped == due, (popped, due)
    return {
        "customers": n,
        "due": popped,
        "triggers": triggers,
        "partitions": partitions,
        "tick_ms": tick_s * 1000,
        "tick_us_per_due": tick_s * 1e6 / popped,
        "setup_and_rebuild_s": rebuild_s,
    }


def memory(n: int) -> dict[str, Any]:
    topics = TopicNames()
    partitioner = KeyPartitioner({name: 4 for name in topics.all()})
    identity = topics.real(Topic.IDENTITY)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    store = {}
    for i in range(n):
        s = customer(i, silent_days=5 + i % 30)
        store[s.subject] = s
    states = tracemalloc.get_traced_memory()[0] - base
    pipeline = CustomerPipeline(
        policy=Policy(),
        store=store,
        clock=WallClock(lambda: NOW),
        topics=topics,
        partition_of=lambda s: partitioner(identity, s),
    )
    pipeline.rebuild()
    total = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    changelog = sum(len(s.to_json()) for s in store.values()) / n
    return {
        "customers": n,
        "state_bytes_per_customer": states / n,
        "indexes_bytes_per_customer": (total - states) / n,
        "changelog_bytes_per_customer": changelog,
        "purchases_per_customer": 8,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--due", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args()
    out: dict[str, Any] = {"tick": tick_cost(args.customers, args.due, args.partitions)}
    gc.unfreeze()
    gc.collect()
    out["memory"] = memory(100_000)
    from bench.bgnbd_fit import run as fit_run

    out["bgnbd"] = fit_run()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
