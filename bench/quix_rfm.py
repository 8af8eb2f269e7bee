"""The Python peer: Quix Streams doing patronage's RFM update in its own per-key state store.

Measures end-to-end events/s of a Quix Streams ``Application`` (confluent-kafka consumer,
RocksDB state with a changelog topic, at-least-once) that, per purchase event:
validates it with ``Purchase.model_validate``, loads the customer's ``CustomerState`` from
the Quix per-key ``State`` (stored as the bytes of ``CustomerState.to_json``), applies
``streams.rfm.apply_purchase`` with the default ``Policy()`` and writes the state back.
The clock runs from the first event handed to the update to the ``--expected``-th one;
start-up (group join, changelog topic creation, recovery) is excluded.

After the app stops (which commits its last checkpoint), the state it committed is read back
from its RocksDB partitions and summed, so the result can be checked for exactness against
the totals of the input.

Usage::

    python -m bench.quix_rfm --bootstrap 127.0.0.1:9092 --topic purchases --expected 300000 \\
        --state-dir /tmp/quix-state [--group G]

Prints one JSON line (last line of stdout)::

    {"name": "quix", "events": N, "seconds": ..., "events_per_s": ...,
     "distinct_customers": ..., "sum_frequency": ..., "sum_monetary_cents": ...}

Topic creation: the input topic must already exist (it is never created here). Quix creates
its changelog topic itself through the admin API (CreateTopics) with the input topic's
partition count and verifies that count, so a broker that auto-creates unknown topics with one
partition (noida-db) does not matter here.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka.admin import AdminClient
from quixstreams import Application, State
from quixstreams.state.metadata import SEPARATOR
from quixstreams.state.rocksdb import RocksDBStorePartition

from schemas.events import Purchase
from schemas.state import CustomerState
from streams.policy import Policy
from streams.rfm import apply_purchase

NAME = "quix"
STATE_KEY = "s"


class Progress:
    """Counts processed events and records the first/last processing instants."""

    __slots__ = ("count", "expected", "t_first", "t_last")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.t_first = 0.0
        self.t_last = 0.0


def input_partitions(bootstrap: str, topic_name: str) -> int | None:
    """Partition count of ``topic_name``, or None if absent (listing all topics never auto-creates)."""
    listed = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics
    meta = listed.get(topic_name)
    return None if meta is None else len(meta.partitions)


def build_app(bootstrap: str, topic_name: str, group: str, state_dir: str, progress: Progress) -> Application:
    """Quix app: input topic -> stateful RFM update; stops itself after ``expected`` events.

    The state value is the changelog encoding (``CustomerState.to_json``) via
    ``State.set_bytes``; keeping a dict via ``State.set`` measured the same within noise.
    """
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        processing_guarantee="at-least-once",
        loglevel="WARNING",
    )
    topic = app.topic(topic_name, value_deserializer="json", key_deserializer="bytes")

    policy = Policy()
    validate = Purchase.model_validate
    from_json = CustomerState.from_json
    expected = progress.expected

    def rfm_update(value: dict[str, Any], state: State) -> None:
        if not progress.count:
            progress.t_first = time.perf_counter()
        p = validate(value)
        raw = state.get_bytes(STATE_KEY)
        cs = from_json(raw) if raw is not None else CustomerState(p.customer_id)
        apply_purchase(cs, p.event_id, p.ts, p.amount_cents, policy)
        state.set_bytes(STATE_KEY, cs.to_json())
        progress.count += 1
        if progress.count == expected:
            progress.t_last = time.perf_counter()
            app.stop()

    sdf = app.dataframe(topic)
    sdf.update(rfm_update, stateful=True)
    return app


def committed_totals(group_dir: Path) -> dict[str, int]:
    """Sum the final customer states that Quix committed to its RocksDB partitions."""
    suffix = SEPARATOR + orjson.dumps(STATE_KEY)
    customers = frequency = monetary = 0
    # Layout: <state_dir>/<group>/<stream_id>/<store>/<partition>/ (RocksDB dirs hold CURRENT).
    for current in sorted(group_dir.rglob("CURRENT")):
        part = RocksDBStorePartition(str(current.parent))
        try:
            tx = part.begin()
            prefixes = [k[: -len(suffix)] for k, _ in part.iter_items(lower_bound=b"") if k.endswith(suffix)]
            for prefix in prefixes:
                raw = tx.as_state(prefix=prefix).get_bytes(STATE_KEY)
                if raw is None:
                    continue
                cs = CustomerState.from_json(raw)
                customers += 1
                frequency += cs.frequency
                monetary += cs.monetary_cents
        finally:
            part.close()
    return {"distinct_customers": customers, "sum_frequency": frequency, "sum_monetary_cents": monetary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, help="host:port of the broker")
    parser.add_argument("--topic", required=True, help="input topic (must exist)")
    parser.add_argument("--expected", type=int, required=True, help="events to process (N)")
    parser.add_argument("--state-dir", required=True, help="Quix state directory (RocksDB)")
    parser.add_argument("--group", default=None, help="consumer group (default: unique per run)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    # Quix would create a missing input with its default partition count; refuse instead.
    if input_partitions(args.bootstrap, args.topic) is None:
        error = {"name": NAME, "events": 0, "error": f"input topic {args.topic!r} does not exist"}
        sys.stdout.write(orjson.dumps(error).decode() + "\n")
        return 1
    group = args.group or f"bench-quix-{uuid.uuid4().hex[:12]}"
    progress = Progress(args.expected)
    app = build_app(args.bootstrap, args.topic, group, args.state_dir, progress)

    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        app.stop()

    timer = threading.Timer(args.timeout, on_timeout)
    timer.daemon = True
    timer.start()
    try:
        app.run()
    finally:
        timer.cancel()

    done = progress.count >= args.expected and not timed_out.is_set()
    seconds = progress.t_last - progress.t_first if done else 0.0
    result: dict[str, Any] = {
        "name": NAME,
        "events": progress.count,
        "seconds": round(seconds, 4),
        "events_per_s": round(progress.count / seconds, 1) if seconds > 0 else 0.0,
        "group": group,
    }
    result.update(committed_totals(Path(args.state_dir) / group))
    if not done:
        result["error"] = f"timed out after {progress.count} of {args.expected} events"
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()
    return 0 if done else 1


if __name__ == "__main__":
    raise SystemExit(main())
