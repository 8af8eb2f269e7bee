"""Where processed output goes: Kafka (record batches) or memory (agent tests)."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import orjson

from schemas.topics import TopicNames
from streams.core import Emit

if TYPE_CHECKING:
    from agents.metrics import Metrics

log = logging.getLogger(__name__)
# a dead letter bigger than this is sent as a minimal record (reason, origin, size, digest)
MAX_DEAD_LETTER_BYTES = 900_000


class OutRecord(NamedTuple):
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None


def encode(emit: Emit, topics: TopicNames, partition_for: Callable[[str, str], int]) -> OutRecord:
    """An emitted record as a Kafka record: real topic, key partition (murmur2), JSON value."""
    real = topics.real(emit.topic)
    key = emit.key.encode() if emit.key else None
    partition = partition_for(real, emit.key) if emit.key else 0
    if emit.value is None:  # a tombstone (streams.core.tombstone)
        return OutRecord(real, partition, key, None)
    return OutRecord(real, partition, key, orjson.dumps(emit.value, option=orjson.OPT_NON_STR_KEYS))


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
        self.last_offsets: dict[tuple[str, int], int] = {}  # (topic, partition) -> last written

    async def send(self, records: Sequence[OutRecord]) -> None:
        if not records:
            return
        producer = self._producer()
        by_tp: dict[tuple[str, int], list[OutRecord]] = defaultdict(list)
        for rec in records:
            by_tp[(rec.topic, rec.partition)].append(rec)
        futures = []
        counts: list[tuple[str, int, int]] = []
        for (topic, partition), recs in by_tp.items():
            batch = producer.create_batch()
            n = 0
            for rec in recs:
                if batch.append(key=rec.key, value=rec.value, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    counts.append((topic, partition, n))
                    batch, n = producer.create_batch(), 0
                    if batch.append(key=rec.key, value=rec.value, timestamp=None) is None:
                        raise ValueError(f"record too large for one batch on {topic}")
                n += 1
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            counts.append((topic, partition, n))
        results = await asyncio.gather(*futures)
        last = self.last_offsets
        for (topic, partition, n), meta in zip(counts, results, strict=True):
            offset = getattr(meta, "offset", None)
            if isinstance(offset, int) and n:
                end = offset + n - 1
                if end > last.get((topic, partition), -1):
                    last[(topic, partition)] = end


class MemorySink:
    """Keeps what would have been sent (agent tests, dry runs)."""

    def __init__(self) -> None:
        self.records: list[OutRecord] = []
        self.last_offsets: dict[tuple[str, int], int] = {}

    async def send(self, records: Sequence[OutRecord]) -> None:
        for rec in records:
            key = (rec.topic, rec.partition)
            self.last_offsets[key] = self.last_offsets.get(key, -1) + 1
        self.records.extend(records)

    def on(self, topic: str) -> list[OutRecord]:
        return [r for r in self.records if r.topic == topic]


def _minimal(record: OutRecord) -> OutRecord:
    """A dead letter cut to what always fits: where from, why, size and digest."""
    try:
        full = orjson.loads(record.value or b"{}")
    except orjson.JSONDecodeError:
        full = {}
    keep = ("topic", "partition", "offset", "via", "reason", "stage", "at", "value_bytes", "value_sha256")
    value: dict[str, Any] = {k: full.get(k) for k in keep if k != "via" or full.get(k) is not None}
    value.update(key=None, value=None, truncated=True, error=str(full.get("error", ""))[:500])
    key = None if record.key is None else record.key[:200]
    return OutRecord(record.topic, record.partition, key, orjson.dumps(value))


async def send_dead_letters(sink: Sink, records: Sequence[OutRecord], metrics: Metrics | None) -> None:
    """Dead letters must never stop the worker: a record the broker refuses is cut down to a
    minimal one; what it refuses still is logged and counted
    (``patronage_dead_letter_failures_total``), and processing goes on."""
    fitted = [
        r if r.value is None or len(r.value) + len(r.key or b"") <= MAX_DEAD_LETTER_BYTES else _minimal(r)
        for r in records
    ]
    try:
        await sink.send(fitted)
        return
    except Exception as exc:  # refused as a whole: try each, smaller if need be
        log.warning("sending %d dead letters failed (%r); retrying one by one", len(fitted), exc)
    for record in fitted:
        error: Exception | None = None
        for attempt in (record, _minimal(record)):
            try:
                await sink.send([attempt])
                error = None
                break
            except Exception as exc:
                error = exc
        if error is not None:
            log.error("a dead letter for %s could not be written: %r", record.topic, error)
            if metrics is not None:
                metrics.dead_letter_failures.inc()
