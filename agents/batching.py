"""Batch dispatch inside Faust's consumer (the fast path).

Why: Faust hands every fetched record to its streams one at a time, creating two asyncio
tasks per record (``wait_first(callback(message), suspend_flow.wait())``) plus an Event, a
queue hop and sensor calls. Profiled on this machine (py-spy, see README "Performance"), a
Faust agent that does nothing but count events manages ~5.7k events/s, whether it
iterates per event or uses ``take_events``; the same process reading Faust's fetched
record batches directly does ~290k/s.

So for the co-partitioned customer topics this consumer keeps everything Faust does -
group membership, rebalancing, table recovery, flow control, offset commits (which flush
the producer first) - and replaces only the per-record hand-off: each fetched batch is
grouped by partition and given to a batch handler, which returns once its outputs and
state changelog are acknowledged by the broker. Then the offsets are acked in bulk, and
Faust's committer commits them. Other topics still go through Faust's normal path.

Event-time alignment: the handler may hold back records newer than the input topics'
common horizon (a fetch can bring months of purchases and weeks of touchpoints); those are
offered again with the next fetch of that partition, or when the inputs go quiet, and acked
only once applied - so a crash re-fetches them from the committed offset.

This subclasses a private method of faust-streaming 0.15.3 (pinned in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger(__name__)

BatchHandler = Callable[..., Awaitable[Any]]  # (partition, records, *, align) -> Batch


class BatchingConsumer(faust_aiokafka.Consumer):
    """Faust aiokafka consumer whose drain loop dispatches whole batches for chosen topics."""

    _fetch_shim_installed = False

    def _install_empty_fetch_backoff(self) -> None:
        """Emulate a broker-side long poll for brokers that answer empty fetches at once.

        Real Kafka parks a fetch with no data for up to fetch.max.wait.ms; noida-db replies
        immediately, so an idle partition makes aiokafka spin thousands of fetches per
        second in the consumer thread, competing with the processing thread for the GIL.
        With PATRONAGE_EMPTY_FETCH_BACKOFF_MS > 0 a fetch that returned no data waits that
        long before the next one to the same broker (off by default: real Kafka needs none).
        """
        if self._fetch_shim_installed:
            return
        backoff_ms = getattr(self.app, "empty_fetch_backoff_ms", 0.0)
        if not backoff_ms:
            self._fetch_shim_installed = True
            return
        consumer = getattr(self._thread, "_consumer", None)
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is None:
            return  # not started yet; try again on the next loop
        original = fetcher._proc_fetch_request
        delay = backoff_ms / 1000.0

        async def proc_fetch_request(assignment: Any, node_id: Any, request: Any) -> bool:
            has_data = await original(assignment, node_id, request)
            if not has_data:
                try:
                    await asyncio.sleep(delay)
                except asyncio.CancelledError:
                    # aiokafka's contract for fetch tasks (its own _proc_fetch_request does
                    # the same): they are cancelled by Fetcher.close() on stop and when the
                    # assignment changes, and close() then awaits each one *without*
                    # suppressing CancelledError. Raising here would escape close() and
                    # AIOKafkaConsumer.stop(), abort the consumer thread's shutdown before
                    # it signals the main thread, and the worker would hang on SIGTERM.
                    return False
            return bool(has_data)

        fetcher._proc_fetch_request = proc_fetch_request
        self._fetch_shim_installed = True
        log.info("empty-fetch backoff %.1f ms installed (broker without long poll)", backoff_ms)

    def _batch_setup(self) -> tuple[frozenset[str], BatchHandler | None]:
        hook = getattr(self.app, "batch_dispatch", None)
        if hook is None:
            return frozenset(), None
        topics, handler = hook()
        return frozenset(topics), handler

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        batch_topics, handler = self._batch_setup()
        if not batch_topics or handler is None:
            await super()._drain_messages(fetcher)
            return
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        held: dict[int, list[Any]] = {}  # partition -> records beyond the event-time horizon
        held_generation = self.app.consumer_generation_id
        hold_max = 2 * int(getattr(self.app.conf, "broker_max_poll_records", None) or 50_000)
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self._install_empty_fetch_backoff()
                records, active = await self._wait_next_records(1.0)
                await asyncio.sleep(0)
                if self.app.consumer_generation_id != held_generation:
                    held.clear()  # rebalanced: never acked, they are fetched again
                    held_generation = self.app.consumer_generation_id
                if not records and held and not self.should_stop and self.flow_active:
                    # the inputs went quiet: what waited for the other topics goes now
                    for partition in list(held):
                        await self._dispatch(handler, partition, held.pop(partition), held, align=False)
                    continue
                if not records or self.should_stop or not self.flow_active:
                    continue
                generation = self.app.consumer_generation_id
                grouped: dict[int, list[tuple[TP, list[Any]]]] = {}
                for tp, recs in records.items():
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    r_offset = get_read_offset(tp)
                    fresh = [r for r in recs if r_offset is None or r.offset >= r_offset]
                    if not fresh:
                        continue
                    if tp.topic in batch_topics:
                        grouped.setdefault(tp.partition, []).append((tp, fresh))
                        continue
                    for rec in fresh:  # Faust's normal per-message path for other topics
                        await self._track_gap(tp, get_read_offset(tp), rec.offset, acks_enabled_for)
                        await self.wait_first(callback(self._to_message(tp, rec)), self.suspend_flow.wait())
                        set_read_offset(tp, rec.offset)
                for partition, parts in grouped.items():
                    if self.app.consumer_generation_id != generation or not self.flow_active:
                        break  # rebalanced meanwhile: these will be fetched again
                    for tp, recs in parts:  # fetch bookkeeping; acks follow processing
                        await self._track_gap(tp, get_read_offset(tp), recs[0].offset, acks_enabled_for)
                        await self._fill_gaps(tp, recs, acks_enabled_for)
                        set_read_offset(tp, recs[-1].offset)
                    waiting = held.pop(partition, [])
                    batch = waiting + [r for _, recs in parts for r in recs]
                    markers = [self._to_message(tp, recs[-1]) for tp, recs in parts]
                    for marker in markers:  # make rebalances wait for this batch (wait_empty)
                        self._unacked_messages.add(marker)
                    try:
                        await self._dispatch(handler, partition, batch, held, align=len(batch) < hold_max)
                    finally:
                        for marker in markers:
                            self._unacked_messages.discard(marker)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    async def _dispatch(
        self,
        handler: BatchHandler,
        partition: int,
        records: list[Any],
        held: dict[int, list[Any]],
        *,
        align: bool,
    ) -> None:
        """Hand ``records`` to the batch handler; ack what it applied, keep what it held back."""
        result = await handler(partition, records, align=align)
        waiting = list(getattr(result, "held", ()) or ())
        if waiting:
            held[partition] = waiting
            skip = {id(r) for r in waiting}
            records = [r for r in records if id(r) not in skip]
        by_tp: dict[TP, list[int]] = {}
        for rec in records:
            by_tp.setdefault(TP(rec.topic, rec.partition), []).append(rec.offset)
        for tp, offsets in by_tp.items():
            self._ack_offsets(tp, sorted(offsets))

    async def _track_gap(self, tp: TP, r_offset: int | None, offset: int, acks_enabled_for: Callable) -> None:
        if r_offset is not None and offset - r_offset > 1 and acks_enabled_for(tp.topic):
            await self._add_gap(tp, r_offset + 1, offset)

    async def _fill_gaps(self, tp: TP, recs: Sequence[Any], acks_enabled_for: Callable) -> None:
        # offsets can jump inside a fetched batch (compaction, transaction markers)
        prev = recs[0].offset
        for rec in recs[1:]:
            if rec.offset - prev > 1 and acks_enabled_for(tp.topic):
                await self._add_gap(tp, prev + 1, rec.offset)
            prev = rec.offset

    def _ack_offsets(self, tp: TP, offsets: Iterable[int]) -> None:
        """Bulk equivalent of ``Consumer.ack`` for records that never became Messages."""
        if not self.app.topics.acks_enabled_for(tp.topic):
            return
        committed = self._committed_offset[tp]
        acked_index = self._acked_index[tp]
        acked = self._acked[tp]
        new = [o for o in offsets if (committed is None or o >= committed) and o not in acked_index]
        if not new:
            return
        resort = bool(acked) and new[0] < acked[-1]
        acked_index.update(new)
        acked.extend(new)
        if resort:
            acked.sort()
        self._n_acked += len(new)
        waiter = self._waiting_for_ack
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class BatchingTransport(faust_aiokafka.Transport):
    Consumer = BatchingConsumer
