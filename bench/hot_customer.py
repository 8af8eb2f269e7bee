"""A hot customer: 100,000 events for one id through the pure pipeline (``python -m bench.hot_customer``).

Half purchases, half touchpoints, event time rising, delivered in batches of 500 as the
worker would; after every batch the customer's changelog record (``to_json``) is what the
worker writes. Prints one JSON line: events/s, the record size after the last batch and
the largest one, and the customer's frequency (must equal the purchases sent).
Without ``--worker`` there is no Kafka: the per-customer cost in the core. With
``--worker [--code DIR]`` the same events go through noida-db and one real worker (the
checkout ``DIR``'s code, default this one): events/s from the first send until the worker's
``patronage_events_total`` reaches the count, and the changelog records and bytes written.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import orjson

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


def through_worker(n: int, code: Path) -> dict[str, object]:
    import tempfile
    import urllib.request

    from confluent_kafka import Consumer, Producer

    from agents.localstack import LocalStack, free_port

    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(Path(tmp), kafka_port=free_port(), redis_port=free_port(), web_port=free_port())
        stack.start_broker()
        stack.start_redis()
        try:
            stack.start_worker(PYTHONPATH=str(code), PATRONAGE_PARTITIONS="1", PATRONAGE_LOG_LEVEL="warn")
            bootstrap = stack.broker_url.removeprefix("kafka://")
            producer = Producer(
                {"bootstrap.servers": bootstrap, "linger.ms": 20, "partitioner": "murmur2_random"}
            )
            now = int(time.time() * 1000)
            evs = events(n)
            start = time.perf_counter()
            for k, (topic, value) in enumerate(evs):
                value["ts"] = now - (n - k) * 10  # the last n*10 ms: plausible on the wall clock
                producer.produce(topic.value, orjson.dumps(value), key=b"guest")
                producer.poll(0)
            producer.flush(60)
            metrics_url = f"http://127.0.0.1:{stack.web_port}/metrics"
            done = 0.0
            while done < n and time.perf_counter() - start < 1800:
                time.sleep(0.5)
                with urllib.request.urlopen(metrics_url, timeout=30) as resp:
                    done = sum(
                        float(line.rsplit(" ", 1)[1])
                        for line in resp.read().decode().splitlines()
                        if line.startswith("patronage_events_total{")
                        and ('topic="purchases"' in line or 'topic="touchpoints"' in line)
                    )
            elapsed = time.perf_counter() - start
            consumer = Consumer(
                {"bootstrap.servers": bootstrap, "group.id": "bench-read", "auto.offset.reset": "earliest"}
            )
            consumer.subscribe(["patronage-customers-changelog"])
            records = size = largest = idle = 0
            while idle < 10:
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    idle += 1
                    continue
                idle = 0
                records += 1
                size += len(msg.value() or b"")
                largest = max(largest, len(msg.value() or b""))
            consumer.close()
        finally:
            stack.down()
    return {
        "bench": "hot_customer_worker",
        "code": str(code),
        "events": n,
        "processed": int(done),
        "events_per_s": round(n / elapsed),
        "changelog_records": records,
        "changelog_bytes": size,
        "changelog_record_bytes_max": largest,
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--worker", action="store_true", help="through noida-db and a real worker")
    ap.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1], help="checkout to run")
    args = ap.parse_args(argv)
    if args.worker:
        result = through_worker(args.events, args.code)
        print(json.dumps(result))
        return result
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
