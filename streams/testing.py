"""Drive the whole customer pipeline from lists of records, without Kafka, with a clock you
move by hand (like quix-streams' ``sdf.test()`` or bytewax's ``TestingSource`` +
``TimeTestingGetter``).

Records are keyed and partitioned exactly as producers and the worker do (murmur2), the
internal identity records are fed back to the partition they are keyed to, triggers are
"sent" only after the states are "written" - the same order as the worker - and every
output lands in ``harness.out[topic]``.

    h = PipelineHarness(clock="wall", start_ms=T0)
    h.send(Topic.PURCHASES, {"event_id": "p1", "customer_id": "c1", ...})
    h.advance(days=40)            # moves the wall clock and ticks every partition
    assert h.triggers("churn_risk")
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.state import CustomerState
from schemas.timestamps import DAY_MS
from schemas.topics import KEY_FIELDS, Topic, TopicNames
from streams.clock import Clock, EventClock, WallClock
from streams.core import ChurnModel
from streams.indexes import StateIndex
from streams.partitioning import KeyPartitioner
from streams.pipeline import Batch, CustomerPipeline
from streams.policy import Policy
from streams.stock import broadcast_value
from streams.store import StateStore

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class ManualWall:
    """A wall clock that moves only when told to."""

    def __init__(self, start_ms: int = T0) -> None:
        self.ms = start_ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms


@dataclass(slots=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


# PipelineHarness's store: None = a plain dict; a number = a StateStore with that hot bound
# (tests/conftest.py sets it from PATRONAGE_TEST_HOT_STATES: with 0 every batch and tick
# starts with every customer encoded, so the whole suite checks the dense store is exact)
DEFAULT_HOT_STATES: int | None = None


class PipelineHarness:
    def __init__(
        self,
        policy: Policy | None = None,
        *,
        partitions: int = 4,
        clock: str = "event",
        start_ms: int = T0,
        allowed_lateness_ms: int = 0,
        idle_ms: int = 5000,
        model: ChurnModel | None = None,
        extra_indexes: Sequence[StateIndex] = (),
        hot_states: int | None = -1,
    ) -> None:
        """``hot_states``: the store's hot bound (None: a plain dict; -1: DEFAULT_HOT_STATES)."""
        self.policy = policy or Policy()
        self.partitions = partitions
        self.wall = ManualWall(start_ms)
        self.clock: Clock = (
            EventClock(self.wall, allowed_lateness_ms, idle_ms) if clock == "event" else WallClock(self.wall)
        )
        self.topics = TopicNames()
        self.partitioner = KeyPartitioner({name: partitions for name in self.topics.all()})
        hot = DEFAULT_HOT_STATES if hot_states == -1 else hot_states
        self.store: MutableMapping[str, CustomerState] = {} if hot is None else StateStore(hot)
        self.key_partitions: dict[str, int] = {}
        identity_topic = self.topics.real(Topic.IDENTITY)
        self.pipeline = CustomerPipeline(
            policy=self.policy,
            store=self.store,
            clock=self.clock,
            topics=self.topics,
            partition_of=lambda subject: self.partitioner(identity_topic, subject),
            key_partitions=self.key_partitions,
            extra_indexes=extra_indexes,
        )
        self.pipeline.model = model
        self.out: dict[Topic, list[dict[str, Any]]] = defaultdict(list)
        self.tombstones: dict[Topic, list[str]] = defaultdict(list)  # keys of null-valued records
        self.batches: list[Batch] = []
        self._offsets: dict[tuple[str, int], int] = defaultdict(int)

    # --- input ----------------------------------------------------------------------------
    def record(
        self,
        topic: Topic,
        value: dict[str, Any] | bytes | None,
        key: str | None = None,
        partition: int | None = None,
    ) -> Rec:
        """A record as a producer would write it (key from the contract's key field)."""
        if key is None and isinstance(value, dict):
            for name in KEY_FIELDS.get(topic, ()):
                if value.get(name) not in (None, ""):
                    key = str(value[name])
                    break
        real = self.topics.real(topic)
        if partition is None:
            partition = 0 if key is None else self.partitioner(real, key)
        raw = orjson.dumps(value) if isinstance(value, dict) else value
        offset = self._offsets[(real, partition)]
        self._offsets[(real, partition)] += 1
        return Rec(real, partition, offset, None if key is None else key.encode(), raw)

    def send(
        self,
        topic: Topic,
        value: dict[str, Any] | bytes | None,
        key: str | None = None,
        partition: int | None = None,
    ) -> None:
        """Deliver one record and everything it causes on the internal topic."""
        self.deliver([self.record(topic, value, key, partition)])

    def stock(self, arrival: dict[str, Any]) -> None:
        """A stock arrival as the stock processor forwards it: to every partition."""
        value = broadcast_value(arrival)
        self.deliver(
            [
                self.record(Topic.STOCK_BROADCAST, value, key=value["category"], partition=p)
                for p in range(self.partitions)
            ]
        )

    def send_many(self, topic: Topic, values: list[dict[str, Any]]) -> None:
        self.deliver([self.record(topic, v) for v in values])

    def deliver(self, records: list[Rec]) -> None:
        """Apply records, grouped by partition in order, then the identity hops they cause."""
        queue: deque[Rec] = deque(records)
        while queue:
            by_partition: dict[int, list[Rec]] = defaultdict(list)
            while queue:
                rec = queue.popleft()
                by_partition[rec.partition].append(rec)
            for partition, recs in sorted(by_partition.items()):
                queue.extend(self._complete(self.pipeline.apply(partition, recs)))

    # --- time -----------------------------------------------------------------------------
    def tick(self) -> None:
        for partition in range(self.partitions):
            self._complete(self.pipeline.tick(partition))

    def advance(self, ms: int = 0, *, days: float = 0, tick: bool = True) -> None:
        """Move the wall clock (event clock: only idleness depends on it) and tick."""
        self.wall.advance(ms + int(days * DAY_MS))
        if tick:
            self.tick()

    # --- output ---------------------------------------------------------------------------
    def _complete(self, batch: Batch) -> list[Rec]:
        """What the worker does with a batch: send emits, 'write' states, send triggers."""
        self.batches.append(batch)
        internal: list[Rec] = []
        for emit in batch.emits:
            if emit.value is None:  # a tombstone: kept apart, so ``out`` holds only records
                self.tombstones[emit.topic].append(emit.key)
            elif emit.topic is Topic.IDENTITY:
                internal.append(self.record(Topic.IDENTITY, emit.value, key=emit.key))
            else:
                self.out[emit.topic].append(emit.value)
        for subject, state in batch.changed.items():  # the changelog round trip
            if state is not None:
                assert CustomerState.from_json(state.to_json()) == state, subject
        for emit in batch.triggers:
            assert emit.value is not None
            self.out[Topic.TRIGGERS].append(emit.value)
        self.pipeline.confirm_sent(batch)
        return internal

    def state(self, subject: str) -> CustomerState | None:
        return self.store.get(subject)

    def triggers(self, type_: str | None = None, customer_id: str | None = None) -> list[dict[str, Any]]:
        return [
            t
            for t in self.out[Topic.TRIGGERS]
            if (type_ is None or t["type"] == type_)
            and (customer_id is None or t["customer_id"] == customer_id)
        ]

    def lifecycle(self, customer_id: str | None = None) -> list[dict[str, Any]]:
        return [
            c
            for c in self.out[Topic.LIFECYCLE_CHANGES]
            if customer_id is None or c["customer_id"] == customer_id
        ]

    def dead_letters(self) -> list[dict[str, Any]]:
        return list(self.out[Topic.DEAD_LETTERS])
