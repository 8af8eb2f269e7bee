"""Stock arrivals: validated and counted here; interest fan-out comes with the stock-trigger
issue. Invalid records go to dead-letters like every other input."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agents.metrics import Metrics
from agents.sink import OutRecord, Sink, encode, send_dead_letters
from schemas.errors import Rejected
from schemas.events import StockArrival
from schemas.topics import Topic, TopicNames
from streams.clock import Clock
from streams.pipeline import bounds_for, check_ts, dead_letter, decode_object, validate_model
from streams.policy import Policy


class StockProcessor:
    def __init__(
        self,
        *,
        sink: Sink,
        topics: TopicNames,
        partition_for: Callable[[str, str], int],
        policy: Policy,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.sink = sink
        self.topics = topics
        self.partition_for = partition_for
        self.policy = policy
        self.clock = clock
        self.metrics = metrics
        self.accepted = 0

    def validate(self, record: Any) -> StockArrival:
        event = validate_model(StockArrival, decode_object(record.value))
        check_ts(bounds_for(self.policy, self.clock.wall_ms()), event.ts)
        return event

    async def handle(self, records: Sequence[Any]) -> None:
        dead: list[OutRecord] = []
        topic = Topic.STOCK_ARRIVALS.value
        for record in records:
            try:
                self.validate(record)
            except Rejected as exc:
                emit = dead_letter(record, exc, self.clock.wall_ms(), self.policy.dead_letter_max_bytes)
                dead.append(encode(emit, self.topics, self.partition_for))
                if self.metrics is not None:
                    self.metrics.dead_letters.labels(topic, exc.stage.value, exc.reason.value).inc()
                    self.metrics.events.labels(topic, "dead_letter").inc()
            else:
                self.accepted += 1
                if self.metrics is not None:
                    self.metrics.events.labels(topic, "accepted").inc()
        if dead:
            await send_dead_letters(self.sink, dead, self.metrics)
