"""Where processed output goes: Kafka (record batches) or memory (agent tests)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import orjson

from schemas.outputs import dead_letter_record
from schemas.timestamps import iso_utc


class OutRecord(NamedTuple):
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None


def dead_letter(
    record: Any, stage: str, reason: str, topic: str, partition_for: Callable[[str, str], int]
) -> OutRecord:
    """The dead-letter record for an input record (original bytes, where it came from, why)."""
    key = record.key
    value = dead_letter_record(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=key,
        value=record.value,
        error=reason,
        stage=stage,
        at=iso_utc(int(time.time() * 1000)) or "",
    )
    partition = partition_for(topic, key.decode("utf-8", "replace")) if key else 0
    return OutRecord(topic, partition, key, orjson.dumps(value))


class Sink(Protocol):
    async def send(self, records: Sequence[OutRecord]) -> None:
        """Deliver ``records``; return only when the broker has acknowledged all of them."""
        ...


class KafkaSink:
    """Writes through the worker's aiokafka producer, one record batch per topic-partition.

    ~20x cheaper per record than ``Topic.send`` (which builds a future and a callback per
    message); every batch's delivery is awaited before returning.
    """

    def __init__(self, producer: Callable[[], Any]) -> None:
        self._producer = producer  # returns the started aiokafka.AIOKafkaProducer

    async def send(self, records: Sequence[OutRecord]) -> None:
        if not records:
            return
        producer = self._producer()
        by_tp: dict[tuple[str, int], list[OutRecord]] = defaultdict(list)
        for rec in records:
            by_tp[(rec.topic, rec.partition)].append(rec)
        futures = []
        for (topic, partition), recs in by_tp.items():
            batch = producer.create_batch()
            for rec in recs:
                if batch.append(key=rec.key, value=rec.value, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=rec.key, value=rec.value, timestamp=None) is None:
                        raise ValueError(f"record too large for one batch on {topic}")
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)


class MemorySink:
    """Keeps what would have been sent (agent tests, dry runs)."""

    def __init__(self) -> None:
        self.records: list[OutRecord] = []

    async def send(self, records: Sequence[OutRecord]) -> None:
        self.records.extend(records)

    def on(self, topic: str) -> list[OutRecord]:
        return [r for r in self.records if r.topic == topic]
