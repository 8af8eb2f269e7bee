"""Stock arrivals: validated, then broadcast to every partition of the internal
``stock-broadcast`` topic, where each customer partition matches the arrival against its own
interest index and gates it with each customer's own state (streams/stock.py,
streams/gate.py). Invalid records go to dead-letters like every other input.

The broadcast is sent (and acknowledged) before the input offsets are committed: a crash
re-broadcasts, and the per-customer memory of handled arrivals makes that a no-op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from agents.metrics import Metrics
from agents.sink import OutRecord, Sink, encode, send_dead_letters
from schemas.errors import Rejected
from schemas.events import StockArrival
from schemas.topics import Topic, TopicNames
from streams.clock import Clock
from streams.pipeline import bounds_for, check_ts, dead_letter, decode_object, validate_model
from streams.policy import Policy
from streams.stock import Arrival


class StockProcessor:
    def __init__(
        self,
        *,
        sink: Sink,
        topics: TopicNames,
        partition_for: Callable[[str, str], int],
        policy: Policy,
        clock: Clock,
        partitions: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.sink = sink
        self.topics = topics
        self.partition_for = partition_for
        self.policy = policy
        self.clock = clock
        self.partitions = partitions
        self.metrics = metrics
        self.accepted = 0
        self._broadcast = topics.real(Topic.STOCK_BROADCAST)
        # stock-arrivals partition -> newest arrival time broadcast from it (this process)
        self.newest: dict[int, int] = {}
        # broadcast partition -> offset of the last record this process wrote there
        self.sent_offsets: dict[int, int] = {}

    def validate(self, record: Any) -> StockArrival:
        event = validate_model(StockArrival, decode_object(record.value, self.policy.max_value_bytes))
        check_ts(bounds_for(self.policy, self.clock.wall_ms()), event.ts)
        return event

    def broadcast(self, event: StockArrival) -> list[OutRecord]:
        """The arrival, once per customer partition (epoch-ms times, keyed by category)."""
        value = orjson.dumps(
            Arrival(
                event.event_id,
                event.ts,
                event.sku,
                event.category,
                event.qty,
                event.store_id,
                event.region,
                tuple(event.tags),
            ).to_json()
        )
        key = event.category.encode()
        return [OutRecord(self._broadcast, p, key, value) for p in range(self.partitions)]

    async def handle(self, records: Sequence[Any]) -> None:
        dead: list[OutRecord] = []
        out: list[OutRecord] = []
        newest: dict[int, int] = {}  # stock partition -> newest arrival time in these records
        topic = Topic.STOCK_ARRIVALS.value
        for record in records:
            try:
                event = self.validate(record)
            except Rejected as exc:
                emit = dead_letter(record, exc, self.clock.wall_ms(), self.policy.dead_letter_max_bytes)
                dead.append(encode(emit, self.topics, self.partition_for))
                if self.metrics is not None:
                    self.metrics.dead_letters.labels(topic, exc.stage.value, exc.reason.value).inc()
                    self.metrics.events.labels(topic, "dead_letter").inc()
            else:
                out.extend(self.broadcast(event))
                partition = getattr(record, "partition", 0)
                if event.ts > newest.get(partition, -(2**62)):
                    newest[partition] = event.ts
                self.accepted += 1
                if self.metrics is not None:
                    self.metrics.events.labels(topic, "broadcast").inc()
        if out:
            await self.sink.send(out)
            offsets = getattr(self.sink, "last_offsets", {})
            for p in range(self.partitions):
                last = offsets.get((self._broadcast, p))
                if last is not None:
                    self.sent_offsets[p] = last
        # only now (the broadcast is on the topic, its offsets known): a customer batch that
        # runs while this one waits for the broker (the stock agent of PATRONAGE_FAST_PATH=false
        # runs beside the customer agent) must not count these arrivals as broadcast
        for partition, ts in newest.items():
            if ts > self.newest.get(partition, -(2**62)):
                self.newest[partition] = ts
        if dead:
            await send_dead_letters(self.sink, dead, self.metrics)
