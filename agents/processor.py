"""The I/O shell around :class:`streams.pipeline.CustomerPipeline`.

For one partition's records (``handle``) or for time passing (``tick``) the pipeline
returns a :class:`Batch`; this shell makes it durable in this order, then returns so the
caller acks the offsets:

1. send the emitted records (lifecycle changes, identity hops) and wait for the acks;
   dead letters go separately and can never fail the batch (too big: cut; refused: a
   minimal record; still refused: logged and counted);
2. write each changed customer's state to the table changelog once (coalesced), wait;
3. send the triggers (they are in the states' outboxes, now durable), wait, empty the
   outboxes and write those states again - a crash before that re-sends the very same
   trigger records on recovery (consumers see a repeated ``trigger_id``, never a new one).

A crash anywhere re-delivers the input batch; the per-customer event-id memory (in the same
changelog record as the state) makes re-applying it a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from agents.metrics import Metrics
from agents.sink import OutRecord, Sink, encode, send_dead_letters
from schemas.topics import Topic, TopicNames
from streams.core import Emit
from streams.pipeline import Batch, CustomerPipeline, RecordLike

log = logging.getLogger(__name__)

CHUNK = 5000  # records sent per call of the sink
# records decoded or applied between two yields to the event loop: applying one takes
# ~100-200 us on a loaded core, so 5,000 held the loop for 0.4-2.6 s at a time while a
# backlog was worked through (HTTP, /healthz, timers and the broker's heartbeats waited)
APPLY_CHUNK = 500


class CustomerProcessor:
    def __init__(
        self,
        *,
        pipeline: CustomerPipeline,
        sink: Sink,
        topics: TopicNames,
        partition_for: Callable[[str, str], int],
        metrics: Metrics | None = None,
        delivered: Callable[[dict[int, set[str]]], Awaitable[set[str]]] | None = None,
        on_durable: Callable[[Iterable[str]], None] | None = None,
    ) -> None:
        """``partition_for(real_topic, key)`` is the producers' key partitioner (murmur2);
        ``delivered(ids per triggers partition)`` says which are on the topic already
        (agents/delivered.py; None: re-send every unconfirmed one); ``on_durable(subjects)``
        hears of customers whose changed state is in the changelog (the Redis projection)."""
        self.on_durable = on_durable
        self.delivered = delivered
        self.pipeline = pipeline
        self.sink = sink
        self.topics = topics
        self.partition_for = partition_for
        self.metrics = metrics
        self._locks: dict[int, asyncio.Lock] = {}
        self._changelog = topics.real(Topic.CHANGELOG)
        # partitions whose batch is applying records in memory (nothing of it written yet)
        self.applying: set[int] = set()
        # per partition: the last batch's outbox-clearing changelog write, not waited for yet
        self._clearing: dict[int, asyncio.Future[None]] = {}

    def lock(self, partition: int) -> asyncio.Lock:
        """Records and ticks of one partition never interleave (both mutate its states)."""
        lock = self._locks.get(partition)
        if lock is None:
            lock = self._locks[partition] = asyncio.Lock()
        return lock

    # --- entry points ---------------------------------------------------------------------
    async def handle(
        self,
        partition: int,
        records: Sequence[RecordLike],
        align: bool = False,
        waiting: Sequence[str] = (),
        stock_until: int | None = None,
    ) -> Batch:
        """Process one partition's records; returns once outputs and state are durable.

        Large batches are processed in chunks with a yield to the event loop in between
        (HTTP endpoints stay responsive); outputs and the changelog are written once.
        ``align``: records beyond the topics' common event-time horizon come back unapplied
        in ``batch.held`` (the batching consumer offers them again, and acks them then);
        ``waiting``: input topics with records still to read but none in this batch."""
        started = time.perf_counter()
        async with self.lock(partition):
            batch = Batch(partition)
            steps = self.pipeline.apply_steps(
                partition,
                records,
                batch,
                align=align,
                waiting=waiting,
                stock_until=stock_until,
                chunk=APPLY_CHUNK,
            )
            # while applying, nothing of the batch is durable: a stop may abandon it at once
            # (see BatchingConsumer._finish); from complete() on it is waited for
            self.applying.add(partition)
            try:
                for _ in steps:
                    await asyncio.sleep(0)
            finally:
                self.applying.discard(partition)
            if self.metrics is not None:
                self.metrics.batch_stage.labels("apply").observe(time.perf_counter() - started)
            await self.complete(batch)
        if batch.stats.stale:
            log.warning(
                "partition %d: %d stock arrival(s) older than its newest customer event by more than %g days were "
                "offered to nobody (most often read again after a restart, offered before it; else re-sent "
                "or late stock records; PATRONAGE_GATE_MAX_ARRIVAL_AGE_DAYS): %s",
                partition,
                len(batch.stats.stale),
                self.pipeline.policy.gate.max_arrival_age_days,
                ", ".join(batch.stats.stale[:5]) + (" ..." if len(batch.stats.stale) > 5 else ""),
            )
        if self.metrics is not None:
            self.metrics.observe_batch(batch, time.perf_counter() - started)
        return batch

    async def tick(self, partition: int) -> Batch:
        """Let the clock fire what is due in ``partition``."""
        started = time.perf_counter()
        async with self.lock(partition):
            batch = self.pipeline.tick(partition)
            if batch:
                await self.complete(batch)
        if self.metrics is not None:
            self.metrics.observe_tick(batch, time.perf_counter() - started)
        return batch

    async def resend_outbox(self) -> int:
        """After recovery: send triggers that were decided but maybe never sent (same records),
        then persist the emptied outboxes. Returns how many were sent."""
        await self.settle()
        pending = self.pipeline.pending_outbox()
        if not pending:
            return 0
        triggers = [
            Emit(Topic.TRIGGERS, subject, record) for _, subject, records in pending for record in records
        ]
        encoded = [self._encode(e) for e in triggers]
        already: set[str] = set()
        if self.delivered is not None:
            wanted: dict[int, set[str]] = {}
            for out, emit in zip(encoded, triggers, strict=True):
                wanted.setdefault(out.partition, set()).add(emit.value["trigger_id"])
            try:
                already = await self.delivered(wanted)
            except Exception as exc:  # cannot tell: re-send them all (same records, same ids)
                log.warning("could not read back the triggers topic (%r); re-sending all unconfirmed", exc)
        resend = [
            out
            for out, emit in zip(encoded, triggers, strict=True)
            if emit.value["trigger_id"] not in already
        ]
        if resend:
            await self.sink.send(resend)
        for partition, subject, _ in pending:
            state = self.pipeline.store.get(subject)
            if state is not None:
                state.outbox.clear()
                await self.sink.send(
                    [OutRecord(self._changelog, partition, subject.encode(), state.to_json())]
                )
        if self.metrics is not None:
            self.metrics.outbox_resent.inc(len(resend))
        log.info(
            "unconfirmed trigger(s) from before the last stop: %d already delivered, %d re-sent",
            len(triggers) - len(resend),
            len(resend),
        )
        return len(resend)

    async def rewrite_changelog(self, partition: int, input_topic: str) -> int:
        """Write every state of ``partition`` to the changelog again (after the broker lost
        records: its changelog may lack the latest writes, and re-reading the inputs changes
        nothing that would write them again). Returns how many were written."""
        async with self.lock(partition):
            await self.settle(partition)
            store = self.pipeline.store  # a dense store hands its encoded values over as they are
            pairs = store.encoded_items() if hasattr(store, "encoded_items") else store.items()
            records = [
                OutRecord(
                    self._changelog, partition, key.encode(), st if isinstance(st, bytes) else st.to_json()
                )
                for key, st in list(pairs)
                if st is not None and self.partition_for(input_topic, key) == partition
            ]
            for start in range(0, len(records), CHUNK):
                await self.sink.send(records[start : start + CHUNK])
        return len(records)

    # --- making a batch durable -----------------------------------------------------------
    async def settle(self, partition: int | None = None) -> None:
        """Wait for the previous batch's outbox-clearing write of ``partition`` (None: of
        every partition): kept in order before any new write of that partition's changelog;
        a failure surfaces here and fails the batch, which is then processed again."""
        if partition is None:
            for p in list(self._clearing):
                await self.settle(p)
            return
        pending = self._clearing.pop(partition, None)
        if pending is not None:
            await pending

    async def complete(self, batch: Batch) -> None:
        stage = self._stage_timer()
        await self.settle(batch.partition)
        stage("settle")
        dead = [e for e in batch.emits if e.topic is Topic.DEAD_LETTERS]
        other = [self._encode(e) for e in batch.emits if e.topic is not Topic.DEAD_LETTERS]
        if other:
            await self.sink.send(other)
            stage("outputs")
        if dead:
            await send_dead_letters(self.sink, [self._encode(e) for e in dead], self.metrics)
            stage("dead_letters")
        if batch.changed:
            partition = batch.partition
            changelog = self._changelog
            await self.sink.send(
                [
                    OutRecord(changelog, partition, key.encode(), None if st is None else st.to_json())
                    for key, st in batch.changed.items()
                ]
            )
            stage("changelog")
            if self.on_durable is not None:
                self.on_durable(batch.changed.keys())
        if batch.triggers:
            await self.sink.send([self._encode(e) for e in batch.triggers])
            stage("triggers")
            self.pipeline.confirm_sent(batch)
            # persist the emptied outboxes, so a restart does not send these again. Not waited
            # for here: it overlaps the next batch's work and is waited for before that
            # batch writes anything (a crash before it lands re-sends the same records)
            sent = {e.key for e in batch.triggers}
            self._clearing[batch.partition] = asyncio.ensure_future(
                self.sink.send(
                    [
                        OutRecord(self._changelog, batch.partition, key.encode(), st.to_json())
                        for key in sent
                        if (st := self.pipeline.store.get(key)) is not None
                    ]
                )
            )

    def _stage_timer(self) -> Callable[[str], None]:
        """Observes, per call, the seconds since the previous one (the batch's durable steps:
        what each waited for, patronage_batch_stage_seconds)."""
        last = time.perf_counter()
        metrics = self.metrics

        def stage(name: str) -> None:
            nonlocal last
            now = time.perf_counter()
            if metrics is not None:
                metrics.batch_stage.labels(name).observe(now - last)
            last = now

        return stage

    def _encode(self, emit: Emit) -> OutRecord:
        return encode(emit, self.topics, self.partition_for)
