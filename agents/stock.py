"""Stock arrivals: validated and counted here; interest fan-out comes with the stock-trigger
issue. Invalid records go to dead-letters like every other input."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agents.metrics import Metrics
from agents.processor import InvalidRecord, decode_object, validate_model
from agents.sink import OutRecord, Sink, dead_letter
from schemas.events import StockArrival


class StockProcessor:
    def __init__(
        self,
        *,
        sink: Sink,
        topic_names: dict[str, str],
        partition_for: Callable[[str, str], int],
        metrics: Metrics | None = None,
    ) -> None:
        self.sink = sink
        self.topics = topic_names
        self.partition_for = partition_for
        self.metrics = metrics
        self.accepted = 0

    def validate(self, record: Any) -> tuple[StockArrival | None, str | None, str | None]:
        """Return (event, None, None) or (None, stage, reason)."""
        try:
            return validate_model(StockArrival, decode_object(record.value)), None, None
        except InvalidRecord as exc:
            return None, exc.stage, exc.reason

    async def handle(self, records: Sequence[Any]) -> None:
        dead: list[OutRecord] = []
        topic = "stock-arrivals"
        for record in records:
            event, stage, reason = self.validate(record)
            if event is None:
                assert stage is not None and reason is not None
                dead.append(
                    dead_letter(record, stage, reason, self.topics["dead-letters"], self.partition_for)
                )
                if self.metrics is not None:
                    self.metrics.dead_letters.labels(topic, stage).inc()
                    self.metrics.events.labels(topic, "dead_letter").inc()
            else:
                self.accepted += 1
                if self.metrics is not None:
                    self.metrics.events.labels(topic, "accepted").inc()
        await self.sink.send(dead)
