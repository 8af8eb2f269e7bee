"""The batching consumer's pieces that need no broker: the empty-fetch backoff shim against
aiokafka's own fetcher shutdown code, the stop guard in a process whose stop hangs, and a
batch being handled when the stop cancels the drain loop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.fetcher import Fetcher
from faust.types import TP
from intervaltree import IntervalTree

from agents.batching import BatchingConsumer


def shimmed_fetcher(backoff_ms: float, has_data: bool = False) -> SimpleNamespace:
    """A stand-in for aiokafka's Fetcher with the backoff shim installed by the consumer."""

    async def proc_fetch_request(assignment: Any, node_id: Any, request: Any) -> bool:
        return has_data  # a broker without long poll answers at once

    fetcher = SimpleNamespace(_proc_fetch_request=proc_fetch_request)
    consumer = SimpleNamespace(
        _fetch_shim_installed=False,
        app=SimpleNamespace(empty_fetch_backoff_ms=backoff_ms),
        _thread=SimpleNamespace(_consumer=SimpleNamespace(_fetcher=fetcher)),
    )
    BatchingConsumer._install_empty_fetch_backoff(consumer)  # type: ignore[arg-type]
    assert consumer._fetch_shim_installed
    return fetcher


async def test_empty_fetch_waits_the_backoff_and_a_fetch_with_data_does_not() -> None:
    fetcher = shimmed_fetcher(50)
    started = time.monotonic()
    assert await fetcher._proc_fetch_request(None, 1, None) is False
    assert time.monotonic() - started >= 0.045
    fetcher = shimmed_fetcher(5000, has_data=True)
    assert await asyncio.wait_for(fetcher._proc_fetch_request(None, 1, None), 1) is True


async def test_stopping_the_fetcher_during_the_backoff_is_clean() -> None:
    """aiokafka's Fetcher.close() cancels every pending fetch task and awaits it without
    suppressing CancelledError: a fetch task must end with a result when cancelled (aiokafka's
    own returns False). Before the fix the shim's backoff sleep let the CancelledError escape
    close(), AIOKafkaConsumer.stop() and the consumer thread's shutdown: SIGTERM then took
    Faust's 60 s shutdown timeout."""
    fetcher = shimmed_fetcher(60_000)
    fetch = asyncio.ensure_future(fetcher._proc_fetch_request(None, 1, None))
    await asyncio.sleep(0.05)
    assert not fetch.done(), "the empty fetch should be in its backoff"
    # the state Fetcher.close() works on: its routine task and the pending fetch tasks
    fetcher._fetch_task = asyncio.ensure_future(asyncio.sleep(3600))
    fetcher._fetch_waiters = set()
    fetcher._pending_tasks = {fetch}
    fetcher._closed = False
    await asyncio.wait_for(Fetcher.close(fetcher), 1)  # type: ignore[arg-type]
    assert fetch.result() is False
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


# A process shaped like a worker: the loop's signal handlers start a graceful stop (mode's
# Worker), here one that hangs with the main thread blocked, as a stop hung on the consumer
# thread does (mode's WorkerThread.stop() is a blocking Event.wait).
HUNG_STOP = """
import asyncio, signal, sys, threading
from agents.batching import StopGuard

async def main():
    loop = asyncio.get_running_loop()
    def graceful_stop():
        print("graceful stop", flush=True)
        threading.Event().wait()
    loop.add_signal_handler(signal.SIGTERM, graceful_stop)
    loop.add_signal_handler(signal.SIGINT, graceful_stop)
    assert StopGuard(budget_s=float(sys.argv[1])).install()
    print("ready", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def hung_stop(budget_s: float) -> subprocess.Popen:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", HUNG_STOP, str(budget_s)],
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["TERM-TERM", "TERM-INT"])
def test_a_second_signal_ends_a_hung_stop_at_once_with_every_threads_stack(second: int) -> None:
    proc = hung_stop(budget_s=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "graceful stop\n"  # the loop's handler still runs
    started = time.monotonic()
    proc.send_signal(second)
    _, err = proc.communicate(timeout=10)
    assert time.monotonic() - started < 5
    assert proc.returncode == 128 + second
    assert f"forced exit ({signal.Signals(second).name} while stopping)" in err
    assert "Current thread" in err and "graceful_stop" in err  # the stack of the hung stop


def test_a_stop_still_hung_after_the_budget_is_ended() -> None:
    proc = hung_stop(budget_s=1)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert 0.9 < time.monotonic() - started < 5
    assert out == "graceful stop\n"
    assert proc.returncode == 1
    assert "forced exit (still stopping 1 s after SIGTERM)" in err and "graceful_stop" in err


def bare_consumer(grace_s: float) -> BatchingConsumer:
    """A BatchingConsumer with just the offset bookkeeping the batch dispatch touches."""
    c = BatchingConsumer.__new__(BatchingConsumer)
    c.__dict__.update(
        _gap=defaultdict(IntervalTree),
        _acked=defaultdict(list),
        _acked_index=defaultdict(set),
        _read_offset=defaultdict(lambda: None),
        _committed_offset=defaultdict(lambda: None),
        _unacked_messages=set(),
        _waiting_for_ack=None,
        _n_acked=0,
        _handled={},
        _held={},
        _held_count={},
        _held_first={},
        _refetch_floor={},
        _unhandled={},
        hold_max=100_000,
        hold_wait_s=10.0,
        _crowded=set(),
        _crowded_said={},
        _paced={},
        _offered={},
        stop_batch_grace_s=grace_s,
        app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True)),
    )
    c._to_message = lambda tp, rec: (tp, rec.offset)  # type: ignore[method-assign]
    c.assignment = lambda: set()  # type: ignore[method-assign]
    c.pause_partitions = lambda tps: None  # type: ignore[method-assign]
    c.resume_partitions = lambda tps: None  # type: ignore[method-assign]
    return c


async def dispatch_cancelled_mid_batch(grace_s: float, handler_s: float) -> tuple[BatchingConsumer, bool]:
    """Cancel the drain loop while the handler waits (for broker acks), as a stop does."""
    consumer = bare_consumer(grace_s)
    tp = TP("purchases", 0)
    records = [SimpleNamespace(topic="purchases", partition=0, offset=o) for o in (5, 6, 7)]
    done = asyncio.Event()

    async def handler(
        partition: int, recs: Any, align: bool = False, waiting: Any = (), bounded: bool = True
    ) -> None:
        await asyncio.sleep(handler_s)
        done.set()

    drain = asyncio.ensure_future(consumer._dispatch(handler, 0, [(tp, records)], lambda topic: True))
    await asyncio.sleep(0.02)
    drain.cancel()
    await asyncio.sleep(0.02)
    drain.cancel()  # Faust may cancel again while it waits
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(drain, 5)
    return consumer, done.is_set()


async def test_a_stop_lets_the_batch_being_handled_finish_and_acks_its_offsets() -> None:
    consumer, finished = await dispatch_cancelled_mid_batch(grace_s=5, handler_s=0.2)
    tp = TP("purchases", 0)
    assert finished
    assert consumer._acked[tp] == [5, 6, 7] and consumer._read_offset[tp] == consumer._handled[tp] == 7
    assert not consumer._unacked_messages


async def test_a_batch_still_unfinished_after_the_grace_is_abandoned_unacked() -> None:
    started = time.monotonic()
    consumer, finished = await dispatch_cancelled_mid_batch(grace_s=0.2, handler_s=30)
    assert time.monotonic() - started < 2
    assert not finished
    assert not consumer._acked[TP("purchases", 0)]
    assert not consumer._unacked_messages


async def test_a_stop_abandons_at_once_a_batch_still_applying_in_memory() -> None:
    """Nothing of a batch is written while it applies its records: a stop need not wait for
    it (a backlog's batches take seconds; SIGTERM stops took 12-22 s under load). Once it
    writes (the handler says it no longer applies), the stop waits for it as before."""
    for applying, expect_finished in ((True, False), (False, True)):
        consumer = bare_consumer(5)
        consumer.app.batch_applying = lambda partition, applying=applying: applying  # type: ignore[attr-defined]
        tp = TP("purchases", 0)
        records = [SimpleNamespace(topic="purchases", partition=0, offset=o) for o in (5, 6)]
        done = asyncio.Event()

        async def handler(
            partition: int, recs: Any, align: bool = False, waiting: Any = (), bounded: bool = True
        ) -> None:
            await asyncio.sleep(0.3)
            done.set()  # noqa: B023 (awaited within this iteration)

        drain = asyncio.ensure_future(consumer._dispatch(handler, 0, [(tp, records)], lambda topic: True))
        await asyncio.sleep(0.02)
        drain.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(drain, 5)
        assert done.is_set() is expect_finished  # abandoned: the stop returned before the handler
        assert consumer._acked[tp] == ([5, 6] if expect_finished else [])


async def test_records_not_handled_in_a_rebalance_are_fetched_again_from_the_right_offset() -> None:
    """Fetched before Faust's end-of-rebalance seek: from the offset it sought (it rewound
    them). Fetched after it, or no committed offset to seek to: from the first not handled."""
    consumer = bare_consumer(grace_s=1)
    a, b, c = TP("purchases", 0), TP("purchases", 1), TP("touchpoints", 0)
    sought: dict[TP, int] = {}

    async def seek(tp: TP, offset: int) -> None:
        sought[tp] = offset

    consumer.__dict__.update(_seeks=0, _seeked={}, _unhandled={}, _fetched_at_seek=0, seek=seek)
    consumer.assignment = lambda: {a, b, c}  # type: ignore[method-assign]
    recs = [SimpleNamespace(offset=o) for o in (40, 41)]
    consumer._not_handled(a, recs)  # fetched in the rebalance, before its seek
    consumer._not_handled(b, recs)
    consumer._seeks, consumer._seeked = 1, {a: 37, b: None}  # the seek: a committed at 37, b never
    consumer._fetched_at_seek = 1
    consumer._not_handled(c, [SimpleNamespace(offset=9)])  # fetched after it, not handled
    consumer._not_handled(a, [SimpleNamespace(offset=37)])
    await consumer._refetch_unhandled()
    assert sought == {a: 37, b: 40, c: 9}
    assert not consumer._unhandled


async def test_records_held_beyond_the_event_time_horizon_are_acked_only_once_applied() -> None:
    consumer = bare_consumer(grace_s=1)
    tp = TP("purchases", 0)
    first = [SimpleNamespace(topic="purchases", partition=0, offset=o) for o in (5, 6, 7)]
    calls: list[tuple[list[int], bool]] = []

    async def handler(
        partition: int, recs: Any, align: bool = False, waiting: Any = (), bounded: bool = True
    ) -> Any:
        calls.append(([r.offset for r in recs], align))
        return SimpleNamespace(held=[r for r in recs if r.offset == 7] if len(calls) == 1 else [])

    await consumer._dispatch(handler, 0, [(tp, first)], lambda topic: True)
    assert consumer._acked[tp] == [5, 6] and consumer._handled[tp] == 6  # 7 waits, unacked
    assert [r.offset for r in consumer._held[0]] == [7]
    later = [SimpleNamespace(topic="purchases", partition=0, offset=8)]
    await consumer._dispatch(handler, 0, [(tp, later)], lambda topic: True)
    assert calls == [([5, 6, 7], True), ([7, 8], True)]  # offered again, first
    assert consumer._acked[tp] == [5, 6, 7, 8] and consumer._handled[tp] == 8 and not consumer._held


async def test_records_held_back_count_as_backlog_until_a_batch_has_applied_them() -> None:
    """The event clock counts an input with records still to be applied as busy, however long
    it has been quiet. Records held back used to be taken out of the consumer's count while
    the batch that offers them again ran: its own last tick (and the tick timer, while the
    batch waited for the broker) saw a partition with nothing to read, idle for seconds, and
    its clock followed the newest event of another partition past them."""
    consumer = bare_consumer(grace_s=1)
    tp = TP("purchases", 0)
    consumer.assignment = lambda: {tp}  # type: ignore[method-assign]
    consumer.highwater = lambda tp: 9  # type: ignore[method-assign]
    consumer._batch_topics = frozenset({"purchases"})
    during: list[int] = []

    async def handler(
        partition: int, recs: Any, align: bool = False, waiting: Any = (), bounded: bool = True
    ) -> Any:
        during.append(consumer.report_backlog(0)["purchases"])  # what the clock hears meanwhile
        return SimpleNamespace(held=[r for r in recs if r.offset == 7] if len(during) == 1 else [])

    first = [SimpleNamespace(topic="purchases", partition=0, offset=o) for o in (5, 6, 7)]
    await consumer._dispatch(handler, 0, [(tp, first)], lambda topic: True)
    assert consumer.report_backlog(0) == {"purchases": 2}  # offset 8 unread, 7 held
    await consumer._dispatch(handler, 0, [], lambda topic: True, align=False)  # the inputs went quiet
    assert during == [9, 2]  # 7 is still to be applied while the batch that applies it runs
    assert consumer.report_backlog(0) == {"purchases": 1} and not consumer._held

    async def failing(
        partition: int, recs: Any, align: bool = False, waiting: Any = (), bounded: bool = True
    ) -> Any:
        raise RuntimeError("broker gone")

    consumer._keep_held(0, [first[2]])
    with pytest.raises(RuntimeError):
        await consumer._dispatch(failing, 0, [], lambda topic: True, align=False)
    assert consumer._held[0] == [first[2]]  # not applied: still held, still counted


async def test_an_input_with_records_held_back_is_in_hand_not_waiting() -> None:
    """Held touchpoints have a known newest time (the handler's horizon covers them); only an
    input with records to read and none in hand is waiting. Counting the held ones as waiting
    clamped every batch to the partition's clock and held everything back until the hold
    overflowed (then applied unaligned: deadlines ahead of purchases not fetched yet)."""
    consumer = bare_consumer(grace_s=1)
    tps = {TP("purchases", 0), TP("touchpoints", 0), TP("customer-updates", 0)}
    consumer.assignment = lambda: tps  # type: ignore[method-assign]
    consumer.highwater = lambda tp: 100  # type: ignore[method-assign]
    consumer._batch_topics = frozenset(tp.topic for tp in tps)
    consumer._keep_held(0, [SimpleNamespace(topic="touchpoints", partition=0, offset=3)])
    seen: list[Any] = []

    async def handler(
        partition: int, recs: Any, align: bool = False, waiting: Any = (), bounded: bool = True
    ) -> Any:
        seen.append((sorted({r.topic for r in recs}), sorted(waiting), bounded))
        return SimpleNamespace(held=[])

    purchases = [SimpleNamespace(topic="purchases", partition=0, offset=o) for o in (5, 6)]
    await consumer._dispatch(handler, 0, [(TP("purchases", 0), purchases)], lambda topic: True)
    assert seen == [(["purchases", "touchpoints"], ["customer-updates"], True)]


async def test_a_crowded_hold_keeps_the_inputs_in_hand_aligned_and_pauses_them() -> None:
    consumer = bare_consumer(grace_s=1)
    consumer.hold_max = 8  # inputs paused from 2 held back
    consumer.app.pausable_topics = frozenset({"purchases", "touchpoints"})
    paused: set[TP] = set()
    consumer.pause_partitions = paused.update  # type: ignore[method-assign]
    consumer.resume_partitions = paused.difference_update  # type: ignore[method-assign]
    calls: list[tuple[int, bool, Any, bool]] = []
    keep: list[int] = []  # how many of the last records the handler holds back, per call

    async def handler(
        partition: int, recs: Any, align: bool = False, waiting: Any = (), bounded: bool = True
    ) -> Any:
        calls.append((len(recs), align, tuple(waiting), bounded))
        n = keep.pop(0)
        return SimpleNamespace(held=list(recs[len(recs) - n :]) if n else [])

    def fetch(topic: str, first: int, n: int) -> Any:
        return [
            (
                TP(topic, 0),
                [SimpleNamespace(topic=topic, partition=0, offset=o) for o in range(first, first + n)],
            )
        ]

    keep.append(1)
    await consumer._dispatch(handler, 0, fetch("purchases", 0, 3), lambda topic: True)
    assert calls[-1] == (3, True, (), True) and not paused  # 1 held: fetching goes on
    keep.append(3)
    await consumer._dispatch(handler, 0, fetch("touchpoints", 0, 5), lambda topic: True)
    assert calls[-1] == (6, True, (), True)
    assert paused == {TP("touchpoints", 0)}  # held back: not handed out (nor fetched) again for now
    keep.append(2)
    await consumer._dispatch(handler, 0, fetch("purchases", 3, 6), lambda topic: True)
    # 9 in hand, more than 8: crowded - the bounds from outside dropped, the inputs in hand aligned
    assert calls[-1] == (9, True, (), False)
    assert paused == {TP("purchases", 0)}
    keep.append(0)
    await consumer._dispatch(handler, 0, [], lambda topic: True, crowded=True)  # the inputs went quiet
    assert calls[-1] == (2, True, (), False) and not paused and not consumer._held


async def test_a_hold_that_did_not_help_is_applied_unaligned_beyond_four_times_the_bound() -> None:
    consumer = bare_consumer(grace_s=1)
    consumer.hold_max = 2
    calls: list[bool] = []

    async def handler(
        partition: int, recs: Any, align: bool = False, waiting: Any = (), bounded: bool = True
    ) -> Any:
        calls.append(align)
        return SimpleNamespace(held=list(recs))  # nothing it can apply

    recs = [SimpleNamespace(topic="purchases", partition=0, offset=o) for o in range(9)]
    await consumer._dispatch(handler, 0, [(TP("purchases", 0), recs)], lambda topic: True)
    more = [SimpleNamespace(topic="purchases", partition=0, offset=9)]
    await consumer._dispatch(handler, 0, [(TP("purchases", 0), more)], lambda topic: True)
    assert calls == [True, False]  # 9 > 8 on a first crowded batch: aligned; still so next: not
