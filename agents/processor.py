"""The customer batch processor: the thin shell around ``streams.customer``.

For one partition's batch of records (any mix of purchases, touchpoints, customer-updates
and internal identity records, all co-partitioned by subject id):

1. decode + validate each record (bad input -> dead-letter with the reason, never raised);
2. records whose subject belongs to another partition (producer used another partitioner)
   are re-routed through the internal identity topic;
3. apply the pure step to the subject's in-memory state (the Faust table's store);
4. send every emitted record (lifecycle changes, dead letters, identity hops) and wait
   until the broker has them;
5. write each touched customer's state to the table changelog once (coalesced) and wait;
6. only then does the caller ack the offsets, so a crash at any point re-processes the
   batch, and the per-customer event-id memory (stored in the same changelog record as the
   state it protects) turns re-processing into a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from agents.clock import Clock
from agents.metrics import Metrics
from agents.sink import OutRecord, Sink, dead_letter
from schemas.events import CustomerUpdate, Purchase, Touchpoint, describe_validation_error
from schemas.fast import fast_purchase, fast_touchpoint
from schemas.state import CustomerState
from streams import customer as steps
from streams.policy import Policy
from streams.population import Population

log = logging.getLogger(__name__)

CHUNK = 5000  # records processed between two yields to the event loop
PURCHASES = "purchases"
TOUCHPOINTS = "touchpoints"
CUSTOMER_UPDATES = "customer-updates"
IDENTITY = "identity"
CUSTOMER_INPUTS = (PURCHASES, TOUCHPOINTS, CUSTOMER_UPDATES)


class RecordLike(Protocol):
    """What the processor needs of a Kafka record (aiokafka records and Faust messages fit)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class BatchStats:
    records: int = 0
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead_letters: Counter[tuple[str, str]] = field(default_factory=Counter)
    lifecycle: Counter[str] = field(default_factory=Counter)
    beyond_horizon: int = 0
    changelog_writes: int = 0


class InvalidRecord(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


def decode_object(raw: bytes | None) -> dict[str, Any]:
    """An input record's value as a JSON object, or InvalidRecord("decode", why)."""
    if raw is None:
        raise InvalidRecord("decode", "empty value (tombstone) on an input topic")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord("decode", f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidRecord("decode", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def validate_model(model: Any, obj: dict[str, Any]) -> Any:
    """``model.model_validate(obj)``, or InvalidRecord("validate", field-named reason)."""
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise InvalidRecord("validate", describe_validation_error(exc)) from None


class CustomerProcessor:
    """Owns the hot state of the partitions this worker holds (via the table's store)."""

    def __init__(
        self,
        *,
        policy: Policy,
        store: MutableMapping[str, CustomerState],
        population: Population,
        clock: Clock,
        sink: Sink,
        topic_names: dict[str, str],
        partition_for: Callable[[str, str], int],
        key_partitions: MutableMapping[str, int] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``topic_names`` maps logical names (purchases, ..., identity, lifecycle-changes,
        dead-letters, changelog) to real topic names; ``partition_for(topic, key)`` is the
        producers' key partitioner (murmur2, as the Java client and aiokafka use)."""
        self.policy = policy
        self.store = store
        self.population = population
        self.clock = clock
        self.sink = sink
        self.topics = topic_names
        self._logical = {real: logical for logical, real in topic_names.items()}
        self.partition_for = partition_for
        self._identity_topic = topic_names[IDENTITY]
        self.key_partitions = key_partitions
        self.metrics = metrics

    # --- the async shell --------------------------------------------------------------------
    async def handle(self, partition: int, records: Sequence[RecordLike]) -> BatchStats:
        """Process one partition's records; returns once outputs and state are durable.

        Large batches are processed in chunks with a yield to the event loop in between
        (HTTP endpoints stay responsive), but outputs and the coalesced changelog are
        written once for the whole batch.
        """
        started = time.perf_counter()
        emits: list[OutRecord] = []
        changed: dict[str, CustomerState | None] = {}
        stats = BatchStats(records=len(records))
        for i in range(0, len(records), CHUNK):
            if i:
                await asyncio.sleep(0)
            self._process_into(partition, records[i : i + CHUNK], emits, changed, stats)
        if emits:
            await self.sink.send(emits)
        if changed:
            changelog = self.topics["changelog"]
            await self.sink.send(
                [
                    OutRecord(changelog, partition, key.encode(), None if st is None else st.to_json())
                    for key, st in changed.items()
                ]
            )
            stats.changelog_writes = len(changed)
        if self.metrics is not None:
            self._observe(stats, time.perf_counter() - started)
        return stats

    # --- the synchronous core ---------------------------------------------------------------
    def process(
        self, partition: int, records: Sequence[RecordLike]
    ) -> tuple[list[OutRecord], dict[str, CustomerState | None], BatchStats]:
        """Apply ``records`` to the in-memory state; return (emits, changed states, stats)."""
        stats = BatchStats(records=len(records))
        emits: list[OutRecord] = []
        changed: dict[str, CustomerState | None] = {}
        self._process_into(partition, records, emits, changed, stats)
        return emits, changed, stats

    def _process_into(
        self,
        partition: int,
        records: Sequence[RecordLike],
        emits: list[OutRecord],
        changed: dict[str, CustomerState | None],
        stats: BatchStats,
    ) -> None:
        touched: dict[str, CustomerState | None] = {}
        for record in records:
            topic = self._logical.get(record.topic, record.topic)
            try:
                outcome = self._one(partition, topic, record, emits, touched, stats)
            except InvalidRecord as exc:
                outcome = "dead_letter"
                emits.append(self._dead_letter(record, exc.stage, exc.reason))
                stats.dead_letters[(topic, exc.stage)] += 1
            except Exception as exc:  # a bug must not stop the worker or lose the record
                log.exception("processing %s[%s]@%s failed", record.topic, record.partition, record.offset)
                outcome = "dead_letter"
                emits.append(self._dead_letter(record, "process", f"internal error: {exc!r}"))
                stats.dead_letters[(topic, "process")] += 1
            stats.outcomes[(topic, outcome)] += 1
        update = self.population.update
        for subject, state in touched.items():  # rank index: once per customer per chunk
            update(subject, state)
        changed.update(touched)

    def _one(
        self,
        partition: int,
        topic: str,
        record: RecordLike,
        emits: list[OutRecord],
        changed: dict[str, CustomerState | None],
        stats: BatchStats,
    ) -> str:
        obj = decode_object(record.value)
        if topic == IDENTITY:
            return self._identity(partition, obj, emits, changed, stats)
        return self._input(partition, topic, obj, emits, changed, stats)

    def _input(
        self,
        partition: int,
        topic: str,
        obj: dict[str, Any],
        emits: list[OutRecord],
        changed: dict[str, CustomerState | None],
        stats: BatchStats,
    ) -> str:
        ev: Any
        if topic == PURCHASES:
            ev = fast_purchase(obj) or validate_model(Purchase, obj)
            apply: Any = steps.on_purchase
        elif topic == TOUCHPOINTS:
            ev = fast_touchpoint(obj) or validate_model(Touchpoint, obj)
            apply = steps.on_touchpoint
        elif topic == CUSTOMER_UPDATES:
            ev = validate_model(CustomerUpdate, obj)
            apply = steps.on_customer_update
        else:
            raise InvalidRecord("process", f"topic {topic!r} is not a customer input")
        subject = ev.subject
        home = self.partition_for(self._identity_topic, subject)
        if home != partition:
            # Keyed differently from the customer id: send it to the customer's partition.
            self._route(emits, subject, home, {"kind": "event", "topic": topic, "event": obj})
            return "rerouted"
        try:
            step = apply(self.store.get(subject), ev, self.policy)
        except ValueError as exc:
            raise InvalidRecord("process", str(exc)) from None
        if step.outcome != "duplicate":
            self.clock.observe(ev.ts)
        self._commit_step(subject, step, partition, emits, changed, stats)
        return step.outcome

    def _identity(
        self,
        partition: int,
        obj: dict[str, Any],
        emits: list[OutRecord],
        changed: dict[str, CustomerState | None],
        stats: BatchStats,
    ) -> str:
        kind = obj.get("kind")
        if kind == "event":
            topic = obj.get("topic")
            event = obj.get("event")
            if topic not in CUSTOMER_INPUTS or not isinstance(event, dict):
                raise InvalidRecord("validate", "identity event record needs topic and event")
            return self._input(partition, topic, event, emits, changed, stats)
        try:
            anon = str(obj["anon"])
            customer = str(obj["customer"])
            event_id = str(obj["event_id"])
            ts = int(obj["ts"])
        except (KeyError, TypeError, ValueError):
            raise InvalidRecord(
                "validate", f"identity {kind!r} record needs anon, customer, event_id, ts"
            ) from None
        try:
            if kind == "link":
                subject = anon
                step = steps.on_link(self.store.get(anon), anon, customer, event_id, ts)
            elif kind == "merge":
                subject = customer
                step = steps.on_merge(
                    self.store.get(customer), customer, anon, obj.get("snapshot"), event_id, ts, self.policy
                )
            else:
                raise InvalidRecord("validate", f"unknown identity record kind {kind!r}")
        except ValueError as exc:
            raise InvalidRecord("process", str(exc)) from None
        self._commit_step(subject, step, partition, emits, changed, stats)
        return step.outcome

    def _commit_step(
        self,
        subject: str,
        step: steps.Step,
        partition: int,
        emits: list[OutRecord],
        changed: dict[str, CustomerState | None],
        stats: BatchStats,
    ) -> None:
        if step.outcome != "duplicate" and step.state is not None:
            self.store[subject] = step.state
            if self.key_partitions is not None:
                self.key_partitions[subject] = partition
            changed[subject] = step.state
        if step.beyond_horizon:
            stats.beyond_horizon += 1
        for emit in step.emits:
            if emit.topic == steps.IDENTITY:
                self._route(emits, emit.key, None, emit.value)
            else:
                if emit.topic == steps.LIFECYCLE:
                    stats.lifecycle[emit.value["to_stage"]] += 1
                real = self.topics[emit.topic]
                emits.append(
                    OutRecord(
                        real,
                        self.partition_for(real, emit.key),
                        emit.key.encode(),
                        orjson.dumps(emit.value, option=orjson.OPT_NON_STR_KEYS),
                    )
                )

    def _route(self, emits: list[OutRecord], key: str, partition: int | None, value: dict[str, Any]) -> None:
        topic = self.topics[IDENTITY]
        if partition is None:
            partition = self.partition_for(topic, key)
        emits.append(
            OutRecord(topic, partition, key.encode(), orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
        )

    def _dead_letter(self, record: RecordLike, stage: str, reason: str) -> OutRecord:
        return dead_letter(record, stage, reason, self.topics[steps.DEAD_LETTERS], self.partition_for)

    def _observe(self, stats: BatchStats, seconds: float) -> None:
        m = self.metrics
        assert m is not None
        m.batch_seconds.observe(seconds)
        m.batch_records.observe(stats.records)
        for (topic, outcome), n in stats.outcomes.items():
            m.events.labels(topic, outcome).inc(n)
        for (topic, stage), n in stats.dead_letters.items():
            m.dead_letters.labels(topic, stage).inc(n)
        for stage, n in stats.lifecycle.items():
            m.lifecycle_changes.labels(stage).inc(n)
        if stats.beyond_horizon:
            m.dedupe_beyond_horizon.inc(stats.beyond_horizon)
        m.changelog_writes.inc(stats.changelog_writes)

    # --- state rebuild after partition assignment / recovery ---------------------------------
    def rebuild(self) -> None:
        """Re-derive the population index and the event clock from the store."""
        self.population.clear()
        for subject, state in self.store.items():
            self.population.update(subject, state)
            if state.last_event_ms is not None:
                self.clock.observe(state.last_event_ms)
