"""The consume limit: a raw aiokafka loop that decodes every value and keeps no state.

Measures the rate at which one Python process can pull records off the topic with aiokafka
(``getmany`` with a large ``max_records``) and ``orjson.loads`` each value, with no consumer
group, no commits and no per-key state. This is the ceiling any Python stream processor on
aiokafka can approach on this broker. All partitions are assigned directly and read from the
beginning; the clock runs from the first record received to the ``--expected``-th record.

Usage::

    python -m bench.raw_consume --bootstrap 127.0.0.1:9092 --topic purchases --expected 300000

Prints one JSON line (last line of stdout)::

    {"name": "raw_aiokafka_decode", "events": N, "seconds": ..., "events_per_s": ...}
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

NAME = "raw_aiokafka_decode"


async def consume(bootstrap: str, topic: str, expected: int, timeout_s: float) -> dict[str, object]:
    """Read ``expected`` records from all partitions of ``topic``, decoding each value."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # aiokafka defaults (1 MiB per partition per fetch): the first fetch, which lands
        # before the clock starts, stays a small share of the run.
        max_partition_fetch_bytes=1024 * 1024,
    )
    await consumer.start()
    try:
        parts: set[int] | None = None
        deadline = time.monotonic() + 30
        while not parts:
            await consumer.topics()  # refresh metadata
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                if time.monotonic() > deadline:
                    raise SystemExit(f"topic {topic!r} not found")
                await asyncio.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)

        loads = orjson.loads
        count = 0
        t_first = t_last = 0.0
        give_up = time.monotonic() + timeout_s
        while count < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=100_000)
            if not batches:
                if time.monotonic() > give_up:
                    break
                continue
            if not count:
                t_first = time.perf_counter()
            for records in batches.values():
                for record in records:
                    loads(record.value)
                count += len(records)
            if count >= expected:
                t_last = time.perf_counter()
        # If the topic holds more than N records the last batch may overshoot N; those
        # records were decoded inside the timed span, so they are counted too.
        seconds = (t_last - t_first) if count >= expected else 0.0
        out: dict[str, object] = {
            "name": NAME,
            "events": count,
            "seconds": round(seconds, 4),
            "events_per_s": round(count / seconds, 1) if seconds > 0 else 0.0,
        }
        if count < expected:
            out["error"] = f"timed out after {count} of {expected} records"
        return out
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, help="host:port of the broker")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expected", type=int, required=True, help="records to read (N)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    result = asyncio.run(consume(args.bootstrap, args.topic, args.expected, args.timeout))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    raise SystemExit(main())
