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
only once applied - so a crash re-fetches them from the committed offset, and a rebalance
has their partitions read again from the first of them.

Records fetched during a rebalance are never handled: Faust seeks the partitions back to
their committed offsets at its end; the fast path seeks again those it fetched past (see the
rebalance guard in ``_drain_messages``).

A stop (SIGTERM/SIGINT) must end the process within seconds without losing or repeating
work: a batch being handled when the stop comes is finished and acked before Faust's final
commit (see ``_dispatch``), the consumer thread always completes its shutdown, and a
:class:`StopGuard` ends a stop that hangs anyway.

This overrides private methods of faust-streaming 0.15.3 and aiokafka 0.14.0 (both pinned in
pyproject.toml).
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger(__name__)

# (partition, records, *, align, waiting, bounded) -> Batch (.held)
BatchHandler = Callable[..., Awaitable[Any]]
Parts = list[tuple[TP, list[Any]]]  # one partition's fetched records, per topic


class StopGuard:
    """Makes sure a worker that was asked to stop does stop, without anyone sending SIGKILL.

    Faust's Worker (mode's) handles SIGTERM and SIGINT on the event loop, ignores any
    further one once a stop is under way, and on the way out waits for the consumer thread
    without a bound (part of it a blocking ``Event.wait`` in the main thread). So a stop that
    hangs anywhere can only be ended with SIGKILL, which also loses the evidence.

    :meth:`install` makes this the Python-level handler of both signals. asyncio's wake-up
    fd still delivers them to the loop's handlers, so the Worker's graceful stop is
    unchanged. On top of it: a second signal, or a stop still running ``budget_s`` after
    the first, writes every thread's stack to stderr (the worker log) and exits at once,
    with 128 + the signal number, or 1. ``budget_s`` stays below the deployments' 60 s grace
    period (deploy/); a clean stop takes 1-2 s.
    """

    # Set by the app: a reason to exit at once on a stop signal instead of stopping
    # gracefully (the broker is unreachable: nothing could be committed or flushed), or None.
    quick_exit: Callable[[], str | None] | None = None

    def __init__(self, budget_s: float = 45.0) -> None:
        self.budget_s = budget_s
        self.signals = 0
        self._timer: threading.Timer | None = None

    def install(self) -> bool:
        """Take over SIGTERM/SIGINT (main thread only, after the loop's handlers are set)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        return True

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        reason = StopGuard.quick_exit() if StopGuard.quick_exit is not None else None
        if reason is not None:
            os.write(2, f"patronage: {name} while {reason}: nothing can be committed; exiting now\n".encode())
            os._exit(0)
        if self.signals == 1:
            self._timer = threading.Timer(
                self.budget_s, self._exit, (f"still stopping {self.budget_s:.0f} s after {name}", 1)
            )
            self._timer.daemon = True
            self._timer.start()
        else:
            self._exit(f"{name} while stopping", 128 + signum)

    def _exit(self, why: str, code: int) -> None:
        # Only fd writes here: this runs inside a signal handler or beside a stuck main thread,
        # either of which may hold the locks of sys.stderr or of logging.
        try:
            os.write(2, f"patronage: forced exit ({why}); stacks of all threads:\n".encode())
            faulthandler.dump_traceback(file=2, all_threads=True)
        finally:
            os._exit(code)


async def confirmed_end_offsets(
    listed: dict[Any, int], bootstrap: list[str], options: dict[str, Any], timeout_s: float = 10.0
) -> dict[Any, int]:
    """``listed`` end offsets (ListOffsets), raised to what a Fetch's high watermark says.

    Tansu answers ListOffsets with the last record batch's base offset + 1 (a batch of 7
    records ending at offset 17: 12). Faust's table recovery reads each changelog partition up
    to that "highwater" and stops: the changelog's last batch was lost on a restart (an
    identity merge, the touchpoints of an anonymous id, in the recovery test). A short-lived
    consumer fetching from just before each listed end reads the true high watermark; on
    brokers that list ends right (Kafka, noida-db) nothing changes.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    out = dict(listed)
    probe = [TopicPartition(tp.topic, tp.partition) for tp, end in listed.items() if end > 0]
    if not probe:
        return out
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **options
    )
    await consumer.start()
    try:
        consumer.assign(probe)
        for tp in probe:
            consumer.seek(tp, listed[tp] - 1)
        pending = set(probe)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while pending and loop.time() < deadline:
            await consumer.getmany(*pending, timeout_ms=200, max_records=1)
            for tp in list(pending):
                high = consumer.highwater(tp)
                if high is not None:
                    out[tp] = max(out[tp], high)
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return out


class BatchingConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, whose shutdown always runs to its end.

    mode's ServiceThread runs ``on_thread_stop()`` (which stops the aiokafka consumer) and
    only then signals the main thread that the thread has shut down. If stopping the
    consumer raises, the signal is never sent and the main thread waits for it until
    mode's 60 s shutdown_timeout; a CancelledError (a BaseException) even kills the thread
    past mode's ``except Exception`` safety net. Log it and carry on instead.
    """

    async def _highwaters(self, partitions: list[TP]) -> Any:
        """Faust's end offsets (table recovery reads changelogs up to them), confirmed by a
        fetch: see :func:`confirmed_end_offsets`."""
        listed = dict(await super()._highwaters(partitions))
        if self.consumer.in_transaction or not any(end > 0 for end in listed.values()):
            return listed
        conf = self.app.conf
        transport = self.app.transport
        return await confirmed_end_offsets(
            listed,
            faust_aiokafka.server_list(transport.url, transport.default_port),
            dict(faust_aiokafka.credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context)),
        )

    async def on_thread_stop(self) -> None:
        try:
            await super().on_thread_stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this shutdown itself is being cancelled
            log.exception("stopping the Kafka consumer raised a stray CancelledError; shutting down anyway")
        except Exception:
            log.exception("stopping the Kafka consumer failed; shutting down anyway")


class BatchingConsumer(faust_aiokafka.Consumer):
    """Faust aiokafka consumer whose drain loop dispatches whole batches for chosen topics."""

    _fetch_shim_installed = False
    stop_batch_grace_s = 10.0  # see _dispatch
    stop_guard: StopGuard | None = None  # one per process, armed by the first consumer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handled: dict[TP, int] = {}  # last offset handled and acked, per partition
        # records the handler held back (beyond the event-time horizon): fetched, not acked
        self._held: dict[int, list[Any]] = {}
        self._held_count: dict[int, dict[str, int]] = {}  # partition -> topic -> records held
        self._held_first: dict[int, dict[str, int]] = {}  # partition -> topic -> first offset held
        # partitions sought back to records fetched and not handled: the first of them, until
        # a batch of the partition is handled again (see _commit_floor)
        self._refetch_floor: dict[TP, int] = {}
        self._held_generation: int | None = None
        self.hold_max = 100_000  # more than this in hand in a partition: see _handle_and_ack
        self._crowded_said: dict[int, float] = {}
        self._crowded: set[int] = set()  # partitions whose last batch was crowded
        # backpressure for the hold (see _pace): partition -> (its input partitions paused,
        # since when, monotonic); after ``hold_wait_s`` its next batch counts as crowded
        self._paced: dict[int, tuple[set[TP], float]] = {}
        self._offered: dict[int, float] = {}  # partition -> when _overdue last offered it
        self.hold_wait_s = 300.0
        # The rebalance guard (see _drain_messages): Faust's seeks done, their offsets, and
        # partitions whose fetched records were not handled: (first offset, seeks when fetched).
        self._seeks = 0
        self._seeked: dict[TP, int | None] = {}
        self._unhandled: dict[TP, tuple[int, int]] = {}
        self._fetched_in_rebalance = False
        self._fetched_at_seek = 0
        self.regressions: dict[TP, int] = {}  # offset regressions followed, per partition

    async def perform_seek(self) -> None:
        """Faust's seek of every assigned partition to its committed offset (at the end of a
        rebalance), remembered for :meth:`_refetch_unhandled`."""
        await super().perform_seek()
        self._seeked = dict(self._read_offset)
        self._seeks += 1

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:  # noqa: ASYNC109 (Faust's)
        self._fetched_in_rebalance = self.app.rebalancing
        self._fetched_at_seek = self._seeks
        return await super()._getmany(active_partitions, timeout)

    def _not_handled(self, tp: TP, recs: Sequence[Any]) -> None:
        first, seeks = self._unhandled.get(tp, (recs[0].offset, self._fetched_at_seek))
        self._unhandled[tp] = (min(first, recs[0].offset), min(seeks, self._fetched_at_seek))

    async def _refetch_unhandled(self) -> None:
        """Seek the partitions whose fetched records were not handled to where handling must
        go on: the offset of the seek that ended the rebalance, if they were fetched before it
        (it rewound them), else the first record not handled."""
        assigned = self.assignment()
        for tp, (first, seeks) in self._unhandled.items():
            if tp in assigned:
                seeked = self._seeked.get(tp) if seeks < self._seeks else None
                await self.seek(tp, first if seeked is None else seeked)
                self._refetch_floor[tp] = first if seeked is None else min(first, seeked)
        self._unhandled.clear()

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return BatchingConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_start(self) -> None:
        await super().on_start()
        self.hold_max = getattr(self.app, "hold_max_records", self.hold_max)
        self.hold_wait_s = getattr(self.app, "hold_wait_s", self.hold_wait_s)
        # In a worker, whose signal handlers were installed before the app and this consumer.
        if BatchingConsumer.stop_guard is None and getattr(self.app, "in_worker", False):
            guard = StopGuard()
            if guard.install():
                BatchingConsumer.stop_guard = guard

    def _install_empty_fetch_backoff(self) -> None:
        """Emulate a broker-side long poll for brokers that answer empty fetches at once.

        Real Kafka parks a fetch with no data for up to fetch.max.wait.ms; noida-db replies
        immediately, so an idle partition makes aiokafka spin thousands of fetches per
        second in the consumer thread, competing with the processing thread for the GIL.
        With PATRONAGE_EMPTY_FETCH_BACKOFF_MS > 0 a fetch that returned no data waits that
        long before the next one to the same broker (5 ms by default; real Kafka parks an
        empty fetch itself, so it adds nothing there).
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

    _batch_topics: frozenset[str] = frozenset()

    def _batch_setup(self) -> tuple[frozenset[str], BatchHandler | None]:
        hook = getattr(self.app, "batch_dispatch", None)
        if hook is None:
            return frozenset(), None
        topics, handler = hook()
        self._batch_topics = frozenset(topics)
        return self._batch_topics, handler

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
        unhandled = self._unhandled
        # the app's bulk path for changelog records during recovery (agents/recovery.py)
        bulk = getattr(self.app, "bulk_changelog", None)
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self._install_empty_fetch_backoff()
                if unhandled and self.flow_active and not (self.app.rebalancing or self.should_stop):
                    await self._refetch_unhandled()
                records, active = await self._wait_next_records(1.0)
                await asyncio.sleep(0)
                self._drop_held_on_rebalance()
                if not records:
                    if self._held and self.flow_active and not (self.app.rebalancing or self.should_stop):
                        # nothing fetched for a second: the holds are offered again. What an
                        # input that went quiet (nothing left to read) held back goes now;
                        # an input with records still to read - a slow fetch, a loaded
                        # machine - is still waited for, and the stock bound kept. (Taken
                        # as crowded, which dropped both, a loaded `make test` sent
                        # stalled-prospect alerts to customers whose purchase was not read
                        # yet: ticks ran past it.) A paused hold gives up after hold_wait_s.
                        for partition in list(self._held):
                            await self._dispatch(handler, partition, [], acks_enabled_for)
                    continue
                # The rebalance guard. During a rebalance Faust discards what it fetches and, at
                # the end, seeks every partition back to its committed offset. Records fetched
                # before that (e.g. when all partitions are paused, aiokafka returns every
                # partition's) must not be handled: the seek would have them fetched and handled
                # again, and rewinds the read offsets under them (phantom gaps, commits stall).
                # Nor may any be dropped silently: the fetch position has moved past them. So
                # they are noted, and their partitions sought again once the rebalance is over.
                stopping = self.should_stop or not self.flow_active
                in_rebalance = self._fetched_in_rebalance
                generation = self.app.consumer_generation_id
                grouped: dict[int, Parts] = {}
                for tp, recs in records.items():
                    batch = tp.topic in batch_topics
                    if (
                        stopping
                        or (batch and in_rebalance)
                        or (active is not None and tp not in active and tp not in self._buffered_partitions)
                    ):
                        if batch:
                            self._not_handled(tp, recs)
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and recs[0].offset < r_offset:
                        # the fetch position went back without a seek of ours: aiokafka reset
                        # it after OffsetOutOfRange (the broker's log now ends below what we
                        # read: acked records lost, or truncated). Follow it.
                        await self._follow_regression(tp, recs[0].offset, r_offset)
                        r_offset = get_read_offset(tp)
                    fresh = [r for r in recs if r_offset is None or r.offset >= r_offset]
                    if not fresh:
                        continue
                    if tp.topic in batch_topics:
                        grouped.setdefault(tp.partition, []).append((tp, fresh))
                        continue
                    if bulk is not None and bulk(tp, fresh):  # a changelog being recovered
                        set_read_offset(tp, fresh[-1].offset)
                        continue
                    for rec in fresh:  # Faust's normal per-message path for other topics
                        await self._track_gap(tp, get_read_offset(tp), rec.offset, acks_enabled_for)
                        await self.wait_first(callback(self._to_message(tp, rec)), self.suspend_flow.wait())
                        set_read_offset(tp, rec.offset)
                for partition, parts in grouped.items():
                    if self.app.consumer_generation_id != generation or not self.flow_active:
                        break  # rebalanced meanwhile: these will be fetched again
                    # one partition after another: run side by side, a partition that finished
                    # waited for the slowest one, and its inputs could look idle to the event
                    # clock meanwhile (test_uplift caught windows closed early under load)
                    await self._dispatch(handler, partition, parts, acks_enabled_for)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                for partition in self._overdue():
                    # paused, and what its hold waits for did not come: applied crowded
                    if partition not in grouped and self.flow_active and not self.app.rebalancing:
                        await self._dispatch(handler, partition, [], acks_enabled_for)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            if self.transport.app.should_stop:  # operators (and the stop tests) check the commit
                handled = ", ".join(
                    f"{tp.topic}[{tp.partition}]@{o}" for tp, o in sorted(self._handled.items())
                )
                log.info("batch dispatch stopped; last offsets handled: %s", handled or "none")

    async def _follow_regression(self, tp: TP, first: int, read: int) -> None:
        """The broker's log of ``tp`` now ends below the position we had read (``read``), and
        aiokafka reset the fetch position (``auto_offset_reset``: earliest) to ``first``.

        Every record the broker holds now is handled from ``first`` on; records it already
        holds that were applied before are no-ops (event-id memory), and new records that
        reuse old offsets are applied. So the read position, the committed position and the
        acks/gaps bookkeeping all move back to ``first`` (the commit then follows what is
        applied from the new log, never past it), and records held back from the old log
        are dropped (re-read, or re-sent by their producer). The app is told (log, metric,
        /healthz, and re-writing the partition's states to its changelog, which may have
        lost records too)."""
        committed = self._committed_offset.get(tp)
        high = self.highwater(tp)
        log.warning(
            "offset regression on %s[%d]: the broker's log went back (read up to %d, committed %s, "
            "log end now %s); following it from offset %d. Records the broker lost are gone: "
            "their producer must send them again",
            tp.topic,
            tp.partition,
            read,
            committed,
            high,
            first,
        )
        self._read_offset[tp] = first or None  # as a seek to ``first``: next to read
        self._committed_offset[tp] = first or None
        self._acked[tp].clear()
        self._acked_index[tp].clear()
        self._gap[tp].clear()
        self._handled.pop(tp, None)
        self._unhandled.pop(tp, None)
        self._refetch_floor.pop(tp, None)
        held = self._held.get(tp.partition)
        if held:
            self._keep_held(tp.partition, [r for r in held if r.topic != tp.topic])
        self.regressions[tp] = self.regressions.get(tp, 0) + 1
        hook = getattr(self.app, "on_offset_regression", None)
        if hook is not None:
            await hook(tp.topic, tp.partition, read, first, high, tp.topic in self._batch_topics)

    def _drop_held_on_rebalance(self) -> None:
        """Held records belong to the generation that fetched them: after a rebalance their
        partitions are read again from the first of them (they were never acked)."""
        generation = self.app.consumer_generation_id
        if generation == self._held_generation:
            return
        self._held_generation = generation
        for records in self._held.values():
            by_tp: dict[TP, list[Any]] = {}
            for rec in records:
                by_tp.setdefault(TP(rec.topic, rec.partition), []).append(rec)
            for tp, recs in by_tp.items():
                self._not_handled(tp, sorted(recs, key=lambda r: r.offset))
        self._held.clear()
        self._held_count.clear()
        self._held_first.clear()
        forget = getattr(self.app, "forget_held", None)
        if forget is not None:
            forget()
        self._unpace_all()

    def _unpace_all(self) -> None:
        for tps, _since in self._paced.values():
            self.resume_partitions(tps)
        self._paced.clear()
        self._offered.clear()

    def _pace(self, partition: int, held: Sequence[Any]) -> None:
        """Backpressure for event-time alignment, as Kafka Streams pauses a partition whose
        buffer is full: while a quarter of ``hold_max`` or more of ``partition``'s records are
        held back, the inputs they come from are paused - not handed out again, so not
        fetched again - and the fetches go to what the hold waits for. Without it a sparse
        input (stock arrivals, customer updates) could be left unread for many fetches while
        the busy ones filled the hold. Resumed once the hold is smaller again."""
        paced, since = self._paced.get(partition, (set(), None))
        if len(held) < max(1, self.hold_max // 4):
            if paced:
                self.resume_partitions(paced)
            self._paced.pop(partition, None)
            self._offered.pop(partition, None)
            return
        pausable = getattr(self.app, "pausable_topics", frozenset())
        want = {TP(topic, partition) for topic in self._held_count.get(partition, ()) if topic in pausable}
        if want != paced:
            if paced - want:
                self.resume_partitions(paced - want)
            if want - paced:
                self.pause_partitions(want - paced)
                if since is None:
                    log.info(
                        "partition %d: %d records held back; pausing %s until what they wait for "
                        "is read (at most PATRONAGE_HOLD_WAIT_S, %g s)",
                        partition,
                        len(held),
                        ", ".join(sorted(tp.topic for tp in want)),
                        self.hold_wait_s,
                    )
        self._paced[partition] = (want, time.monotonic() if since is None else since)

    def _paused_for(self, partition: int) -> float:
        """Seconds ``partition``'s inputs have been paused by the hold (0: not paused)."""
        paced = self._paced.get(partition)
        return 0.0 if paced is None else time.monotonic() - paced[1]

    def _overdue(self) -> list[int]:
        """Partitions paused for longer than ``hold_wait_s`` and not offered again for a
        second: what they wait for did not come, so they are offered again without it."""
        now = time.monotonic()
        due = []
        for p, (_tps, since) in self._paced.items():
            if now - since > self.hold_wait_s and now - self._offered.get(p, 0.0) >= 1.0:
                self._offered[p] = now
                due.append(p)
        return due

    async def _dispatch(
        self,
        handler: BatchHandler,
        partition: int,
        parts: Parts,
        acks_enabled_for: Callable,
        *,
        align: bool = True,
        crowded: bool = False,
    ) -> None:
        """Hand one partition's fetched records to the handler, then ack their offsets.

        Faust stops the fetcher by cancelling this drain loop wherever it waits, and it
        mostly waits inside the handler (for the broker's acks). A batch cut off there has
        applied its records and sent some outputs, but acked no offsets, so after the
        restart all of it is processed again. So handler and acks run as one task which that
        cancellation does not interrupt: the stop waits for the batch, at most
        ``stop_batch_grace_s`` (then abandons it: at-least-once), and goes on; Faust's final
        commit then includes its offsets.
        """
        batch = asyncio.ensure_future(
            self._handle_and_ack(handler, partition, parts, acks_enabled_for, align, crowded)
        )
        try:
            await asyncio.shield(batch)
        except asyncio.CancelledError:
            await self._finish(batch, partition)
            raise

    async def _handle_and_ack(
        self,
        handler: BatchHandler,
        partition: int,
        parts: Parts,
        acks_enabled_for: Callable,
        align: bool,
        crowded: bool = False,
    ) -> None:
        read_offset = self._read_offset
        # records held back before are offered first; they stay in ``_held`` until the handler
        # has applied them, so every backlog report meanwhile (this batch's last tick, the tick
        # timer while the batch waits for the broker) still counts them as still to be applied
        records = [*self._held.get(partition, ()), *(r for _, recs in parts for r in recs)]
        markers = [self._to_message(tp, recs[-1]) for tp, recs in parts]
        for marker in markers:  # make rebalances wait for this batch (wait_empty)
            self._unacked_messages.add(marker)
        backlog = self.report_backlog(partition)  # before the batch ticks the partition's clock
        # a topic with records in hand (fetched now, or held back before) has a known newest
        # time: the handler's horizon covers it. Only a topic with records still to read and
        # none in hand is "waiting" (counting held records as waiting clamped every batch to
        # the partition's clock, held everything back until ``hold_max`` and then applied
        # 100,000 records unaligned: deadlines fired ahead of the other topic's records)
        in_hand = {*self._held_count.get(partition, ()), *(tp.topic for tp, _ in parts)}
        waiting = [topic for topic, n in backlog.items() if n > 0 and topic not in in_hand]
        # Crowded: the hold did not get what it waits for - more than ``hold_max`` records in
        # hand, the partition's inputs paused ``hold_wait_s`` (see _pace), or the inputs went
        # quiet. The bounds from outside the batch (an input with records to read and none in
        # hand, stock arrivals not read yet) are dropped, but the inputs in hand stay aligned
        # with each other (dropping that let a batch's ticks run to the newest event of one
        # input, ahead of the others' records not fetched yet: churn deadlines fired before
        # the purchases that cancel them). Giving up early costs correctness (a backlog replay
        # that gave up after 10 s sent 3,470 stalled-prospect alerts to customers whose
        # purchase was not read yet, and offered most stock arrivals to nobody), so the wait
        # is long. Only when that did not help - the previous batch was crowded too and over
        # four times the bound is in hand (memory) - is a batch applied unaligned.
        paused_s = self._paused_for(partition)
        reason = None
        if len(records) > self.hold_max:
            reason = f"{len(records)} records in hand, more than {self.hold_max}"
        elif paused_s > self.hold_wait_s:
            reason = f"inputs paused {paused_s:.0f} s"
        crowded = crowded or reason is not None
        aligned = align and not (len(records) > 4 * self.hold_max and partition in self._crowded)
        if crowded:
            self._crowded.add(partition)
        else:
            self._crowded.discard(partition)
        if align and reason is not None:
            held_by = ", ".join(sorted(waiting)) or "no input"
            hand = ", ".join(sorted(in_hand))
            self._note_crowded(partition, f"{reason}; waiting for {held_by}; in hand: {hand}", aligned)
        try:
            result = await handler(
                partition,
                records,
                align=aligned,
                waiting=waiting if aligned and not crowded else (),
                bounded=not crowded,
            )
        finally:  # failed: what was held is still held (a crash re-fetches it anyway)
            for marker in markers:
                self._unacked_messages.discard(marker)
        held = list(getattr(result, "held", ()) or ())
        first_held = self._keep_held(partition, held)
        self._pace(partition, held)
        for tp, recs in parts:  # fetch bookkeeping: gaps in the offsets, what was read
            self._refetch_floor.pop(tp, None)  # read again: now acked, or held (_held_first)
            await self._track_gap(tp, read_offset[tp], recs[0].offset, acks_enabled_for)
            await self._fill_gaps(tp, recs, acks_enabled_for)
            read_offset[tp] = recs[-1].offset
        # (a backlog's hold is offered again with every fetch: these passes stay cheap - no
        # per-record objects - as the hold can be 100,000 records)
        held_ids = set(map(id, held))
        applied: dict[str, list[int]] = {}
        for rec in [r for r in records if id(r) not in held_ids] if held else records:
            offsets = applied.get(rec.topic)
            if offsets is None:
                offsets = applied[rec.topic] = []
            offsets.append(rec.offset)
        for topic, offsets in applied.items():
            offsets.sort()
            self._ack_offsets(TP(topic, partition), offsets)
        for topic in applied.keys() | first_held.keys():
            # everything before the first record still held is acked: that is what commits
            tp = TP(topic, partition)
            self._handled[tp] = read_offset[tp] if topic not in first_held else first_held[topic] - 1
        self.report_backlog(partition)

    def _keep_held(self, partition: int, held: list[Any]) -> dict[str, int]:
        """Keep ``held`` as ``partition``'s hold (counted per topic); returns the first
        (lowest) offset held per topic."""
        first: dict[str, int] = {}
        count: dict[str, int] = {}
        for rec in held:
            topic, offset = rec.topic, rec.offset
            seen = first.get(topic)
            if seen is None:
                first[topic] = offset
                count[topic] = 1
            else:
                count[topic] += 1
                if offset < seen:
                    first[topic] = offset
        if held:
            self._held[partition] = held
            self._held_count[partition] = count
            self._held_first[partition] = first
        else:
            self._held.pop(partition, None)
            self._held_count.pop(partition, None)
            self._held_first.pop(partition, None)
        return first

    def _commit_floor(self, tp: TP) -> int | None:
        """The first offset of ``tp`` fetched and not acked that a commit must stay at or
        below: held back by the handler, or fetched and not handled (to be read again)."""
        first = self._held_first.get(tp.partition)
        floor = None if first is None else first.get(tp.topic)
        for other in (self._unhandled.get(tp, (None,))[0], self._refetch_floor.get(tp)):
            if other is not None and (floor is None or other < floor):
                floor = other
        return floor

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's commit arithmetic (the first run of consecutive acked offsets), never past
        :meth:`_commit_floor`. Faust commits such a run when it begins at most one past the
        committed offset - it reads that offset as the last one processed, where Kafka's is
        the next one to read - so with records acked out of order (the hold) a record held at
        exactly the committed offset, with later ones acked, was committed past and never
        read again: a SIGTERM in a backlog lost the stock arrival held there and 1-5 of 2,145
        new-stock triggers with it (2026-12-08)."""
        floor = self._commit_floor(tp)
        acked = self._acked[tp]
        if floor is None or not acked or max(acked) < floor:
            return super()._new_offset(tp)
        above = [o for o in acked if o >= floor]
        acked[:] = [o for o in acked if o < floor]
        try:
            return super()._new_offset(tp) if acked else None
        finally:
            acked.extend(above)
            acked.sort()

    def read_position(self, tp: TP) -> int | None:
        """Offset of the last record of ``tp`` handed on (None: none since assignment)."""
        return self._read_offset.get(tp)

    def remaining(self, tp: TP, seen_offset: int | None = None) -> int:
        """Records of ``tp`` after the last one read (or ``seen_offset``, if later) up to the
        high watermark; an unknown high watermark counts as 1 (not "nothing to read")."""
        high = self.highwater(tp)
        if high is None or high < 0:
            return 1
        read = self._read_offset.get(tp)
        last = max(-1 if read is None else read, -1 if seen_offset is None else seen_offset)
        return max(0, high - 1 - last)

    def _note_crowded(self, partition: int, reason: str, aligned: bool) -> None:
        """Say (at most once a minute per partition) that a partition's hold gave up waiting."""
        now = time.monotonic()
        last = self._crowded_said.get(partition)
        if last is not None and now - last < 60:
            return
        self._crowded_said[partition] = now
        log.warning(
            "partition %d: %s, held back for inputs or stock arrivals not read yet; applying them %s",
            partition,
            reason,
            "aligned across the inputs in hand only (an arrival not read yet may meet its "
            "audience as it is later)"
            if aligned
            else "unaligned (over four times the bound, after a crowded batch)",
        )

    def report_backlog(self, partition: int) -> dict[str, int]:
        """How much of each of this partition's batch topics is still to be applied (lag to
        the high watermark plus records held back; a topic not fetched yet - e.g. just after
        a restart - counts as having some), told to the app's event clock, which never
        counts a topic with a backlog as idle. Returns it per real topic name."""
        hook = getattr(self.app, "observe_backlog", None)
        held = self._held_count.get(partition, {})
        out: dict[str, int] = {}
        for tp in self.assignment():
            if tp.partition != partition or tp.topic not in self._batch_topics:
                continue
            high = self.highwater(tp)
            if high is None or high < 0:
                lag = 1  # unknown is not "nothing to read"
            else:
                read = self._read_offset.get(tp)
                lag = max(0, high - (read + 1 if read is not None else 0))
            out[tp.topic] = lag + held.get(tp.topic, 0)
            if hook is not None:
                hook(tp.topic, partition, out[tp.topic])
        return out

    async def _finish(self, batch: asyncio.Future, partition: int) -> None:
        """Wait (bounded) for a batch whose drain loop is being cancelled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_batch_grace_s
        applying = getattr(self.app, "batch_applying", None)
        if applying is not None and not batch.done() and applying(partition):
            # still applying in memory: nothing written, no offset acked - processed again
            # after the restart either way, so the stop does not wait for it (a backlog's
            # batches take seconds: SIGTERM stops took 12-22 s under load, fresh-eyes)
            log.info(
                "partition %d: batch abandoned while applying (nothing written; processed again on restart)",
                partition,
            )
            batch.cancel()
            return
        while not batch.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning(
                    "partition %d: batch unfinished %.0f s into the stop; abandoned (processed again on restart)",
                    partition,
                    self.stop_batch_grace_s,
                )
                batch.cancel()
                return
            try:
                await asyncio.wait({batch}, timeout=remaining)
            except asyncio.CancelledError:
                continue  # cancelled again: the deadline still bounds the wait
        if not batch.cancelled() and batch.exception() is not None:
            log.error("partition %d: batch failed during the stop", partition, exc_info=batch.exception())

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
