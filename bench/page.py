"""The page's cost, without Kafka (``python -m bench.page [--customers N]``): N buyers in
state (default 200,000; 1 in 20 silent long enough to be at risk, with alerts), the page's
indexes rebuilt from the table, then the time of one page view (view model + HTML) against
the time of ``/summary``'s full table scan. Prints one JSON line."""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from types import SimpleNamespace
from typing import Any

from agents.page import render, view
from bench.churn import NOW, customer, wall_pipeline
from streams.page import PageIndexes
from streams.policy import Policy
from streams.profile import summarize


def run(n: int, partitions: int = 4, views: int = 20) -> dict[str, Any]:
    wall = [NOW]
    policy = Policy()
    indexes = PageIndexes(50)
    pipeline, store, keys = wall_pipeline(partitions, wall, policy, indexes.all())
    for i in range(n):
        s = customer(i, silent_days=120 if i % 20 == 0 else 5 + i % 10, purchases=3 + i % 9)
        s.stores = {f"s{i % 12:02d}": s.frequency}
        store[s.subject] = s
        keys[s.subject] = pipeline.partition_of(s.subject)
    gc.collect()
    gc.freeze()
    started = time.perf_counter()
    pipeline.rebuild()
    rebuild_s = time.perf_counter() - started
    for p in range(partitions):  # the silent ones become at risk and are alerted
        batch = pipeline.tick(p)
        pipeline.confirm_sent(batch)
    settings = SimpleNamespace(partitions=partitions, page_rows=50, page_store_funnel_hours=24)
    runtime: Any = SimpleNamespace(
        pipeline=pipeline,
        settings=settings,
        page=indexes,
        store=store,
        clock=pipeline.clock,
        partition_of=pipeline.home_partition,
        ready=True,
    )
    times, size = [], 0
    for k in range(views):
        started = time.perf_counter()
        doc = view(runtime, list(range(partitions)), None if k % 2 else "s03")
        size = len(render(doc, None))
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    summarize(store.values(), pipeline.population)
    scan_s = time.perf_counter() - started
    at_risk = sum(pipeline.risk_counts().values())
    return {
        "customers": n,
        "at_risk": at_risk,
        "page_ms_median": round(statistics.median(times) * 1000, 1),
        "page_ms_max": round(max(times) * 1000, 1),
        "html_bytes": size,
        "summary_scan_ms": round(scan_s * 1000, 1),
        "rebuild_s_with_page_indexes": round(rebuild_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=200_000)
    args = parser.parse_args()
    print(json.dumps(run(args.customers)))


if __name__ == "__main__":
    main()
