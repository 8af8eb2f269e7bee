"""A hot customer: 100,000 events for one id through the pure pipeline (``python -m bench.hot_customer``).

Half purchases, half touchpoints, event time rising, delivered in batches of 500 as the
worker would; after every batch the customer's changelog record (``to_json``) is what the
worker writes. Prints one JSON line: events/s, the record size after the last batch and
the largest one, and the customer's frequency (must equal the purchases sent).
No Kafka: this measures the per-customer cost in the core, not the broker.
"""

from __future__ import annotations

import argparse
import json
import time

from schemas.topics import Topic
from streams.testing import PipelineHarness

T0 = 1_767_225_600_000  # 2026-01-01


def events(n: int, customer: str = "guest") -> list[tuple[Topic, dict[str, object]]]:
    out: list[tuple[Topic, dict[str, object]]] = []
    for i in range(n):
        ts = T0 + i * 1000
        if i % 2 == 0:
            out.append(
                (
                    Topic.PURCHASES,
                    {
                        "event_id": f"p{i}",
                        "customer_id": customer,
                        "ts": ts,
                        "amount": 9.5,
                        "currency": "EUR",
                        "items": [{"sku": f"s{i % 50}", "category": f"c{i % 7}", "qty": 1, "price": 9.5}],
                    },
                )
            )
        else:
            out.append(
                (Topic.TOUCHPOINTS, {"event_id": f"t{i}", "customer_id": customer, "ts": ts, "type": "view"})
            )
    return out


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args(argv)
    h = PipelineHarness(clock="wall", start_ms=T0 + args.events * 1000 + 60_000, partitions=1)
    evs = events(args.events)
    records = [h.record(topic, value) for topic, value in evs]
    sizes = []
    start = time.perf_counter()
    for k in range(0, len(records), args.batch):
        h.deliver(records[k : k + args.batch])
        state = h.state("guest")
        assert state is not None
        sizes.append(len(state.to_json()))
    elapsed = time.perf_counter() - start
    state = h.state("guest")
    assert state is not None
    result = {
        "bench": "hot_customer",
        "events": args.events,
        "events_per_s": round(args.events / elapsed),
        "changelog_record_bytes_last": sizes[-1],
        "changelog_record_bytes_max": max(sizes),
        "frequency": state.frequency,
        "dead_letters": len(h.dead_letters()),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
