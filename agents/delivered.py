"""Which triggers already reached the ``triggers`` topic (read back after a restart).

A trigger is decided into the customer's outbox, the state is written, the trigger is sent,
and then the emptied outbox is written. A worker killed between the last two has sent the
trigger but its state still lists it; on recovery the outbox would send it again. Before
re-sending, the worker reads the tail of the ``triggers`` partitions those customers map to
and skips every trigger id already there - so a restart in the middle of a fan-out sends
nobody a notification twice. The tail read is bounded (``window`` records per partition
beyond the pending count); anything it cannot confirm is re-sent (the same record, the same
id: at-least-once, never a different decision).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)


class DeliveredTriggers:
    def __init__(
        self,
        bootstrap: list[str],
        topic: str,
        client_id: str,
        window: int = 200_000,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.options = options or {}  # security options (agents/kafkaauth.py)
        self.topic = topic
        self.client_id = client_id
        self.window = window

    async def __call__(self, pending: dict[int, set[str]]) -> set[str]:
        """Of the trigger ids pending per ``triggers`` partition, those already on the topic."""
        if not pending:
            return set()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=",".join(self.bootstrap),
            **self.options,
            group_id=None,
            enable_auto_commit=False,
            client_id=self.client_id,
            request_timeout_ms=15_000,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        found: set[str] = set()
        try:
            await consumer.start()
            tps = [TopicPartition(self.topic, p) for p in sorted(pending)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                wanted = pending[tp.partition]
                end = ends[tp]
                if end <= 0:
                    continue
                start = max(0, end - len(wanted) * 2 - self.window)
                consumer.seek(tp, start)
                position = start
                while position < end and not wanted <= found:
                    batch = await consumer.getmany(tp, timeout_ms=2000, max_records=20_000)
                    records = batch.get(tp, [])
                    # the fetch's high watermark: Tansu lists end offsets low (agents/admin.py end_offsets)
                    end = max(end, consumer.highwater(tp) or end)
                    if not records:
                        break
                    for rec in records:
                        position = rec.offset + 1
                        if rec.value is None:
                            continue
                        try:
                            trigger_id = orjson.loads(rec.value).get("trigger_id")
                        except (orjson.JSONDecodeError, AttributeError):
                            continue
                        if trigger_id in wanted:
                            found.add(trigger_id)
        finally:
            await consumer.stop()
        return found
