"""Fault handling that needs no broker: following an offset regression in the batching
consumer's bookkeeping (with Faust's own commit arithmetic), the broker watch's decisions on
a hand-moved clock, the thinning of aiokafka's reconnect errors, and `wait`'s view of a group
whose commits lie past a log's end."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from kafka import TopicPartition

from agents.admin import Progress
from agents.brokerwatch import EXIT_BROKER_LOST, BrokerWatch, RepeatFilter
from tests.unit.test_batching import bare_consumer


def rec(topic: str, offset: int, partition: int = 0) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=partition, offset=offset)


async def test_an_offset_regression_moves_read_and_committed_offsets_back_so_the_new_log_commits() -> None:
    """The worker had read and committed purchases[0] up to 100; the broker comes back with 80
    records and new ones from 80 on. After following the regression the records of the new
    log are acked and Faust's commit arithmetic commits them (below the old commit); without
    it, acks below the old commit are dropped and nothing of the new log would ever commit."""
    tp, other = TP("purchases", 0), TP("touchpoints", 0)
    c = bare_consumer(1.0)
    told: list[tuple[Any, ...]] = []

    async def on_offset_regression(*args: Any) -> None:
        told.append(args)

    c.app.on_offset_regression = on_offset_regression
    c.highwater = lambda tp: 85  # type: ignore[method-assign]
    c._batch_topics = frozenset({"purchases", "touchpoints"})
    c.regressions = {}
    c._unhandled = {}
    c._read_offset[tp] = 100
    c._committed_offset[tp] = 101
    c._acked[tp].extend([102, 103])
    c._acked_index[tp].update([102, 103])
    c._gap[tp].addi(104, 106)
    c._held[0] = [rec("purchases", 105), rec("touchpoints", 7)]

    # without following: the acks of the new log fall below the old commit and are dropped
    c._ack_offsets(tp, [0, 1, 2])
    assert 0 not in c._acked_index[tp]

    await c._follow_regression(tp, 0, 100)
    assert c._read_offset[tp] is None  # as a seek to offset 0: everything fetched is fresh
    assert c._committed_offset[tp] is None
    assert not c._acked[tp] and not c._acked_index[tp] and not c._gap[tp]
    assert [r.topic for r in c._held[0]] == ["touchpoints"], "held records of the old log dropped"
    assert told == [("purchases", 0, 100, 0, 85, True)]
    assert c.regressions == {tp: 1}

    c._ack_offsets(tp, list(range(0, 90)))
    new = FaustConsumer._new_offset(c, tp)  # type: ignore[arg-type]
    assert new == 90
    assert FaustConsumer._should_commit(c, tp, new)  # type: ignore[arg-type]
    assert c._read_offset.get(other) is None  # other partitions untouched


async def test_a_regression_to_a_later_log_start_commits_from_there() -> None:
    tp = TP("purchases", 1)
    c = bare_consumer(1.0)
    c.highwater = lambda tp: 40  # type: ignore[method-assign]
    c._batch_topics = frozenset({"purchases"})
    c.regressions = {}
    c._unhandled = {}
    c._read_offset[tp] = 70
    c._committed_offset[tp] = 71
    await c._follow_regression(tp, 30, 70)  # a log that starts at 30 (retention)
    assert c._read_offset[tp] == 30 and c._committed_offset[tp] == 30
    c._ack_offsets(tp, [30, 31, 32])
    assert FaustConsumer._new_offset(c, tp) == 33  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watch(grace_s: float = 30.0) -> tuple[BrokerWatch, Clock, list[Any], list[Any]]:
    clock = Clock()
    changes: list[Any] = []
    exits: list[Any] = []
    w = BrokerWatch(
        ["127.0.0.1:9092"],
        grace_s,
        on_change=lambda since, away: changes.append((since, away)),
        clock=clock,
        exit=lambda line, code: exits.append((line, code)),
    )
    return w, clock, changes, exits


def test_the_broker_watch_says_once_when_the_broker_is_lost_backs_off_and_resumes(caplog: Any) -> None:
    w, clock, changes, exits = watch()
    caplog.set_level(logging.INFO, "agents.brokerwatch")
    assert w.observe(True) == 1.0 and changes[-1] == (None, 0.0)
    delays = []
    for _ in range(6):
        delays.append(w.observe(False))
        clock.now += delays[-1]
    assert delays == [2.0, 2.0, 2.0, 2.0, 2.0, 2.0], "backs off, at most 2 s between probes"
    assert changes[-1] == (1000.0, 10.0)
    lost = [r.getMessage() for r in caplog.records if "unreachable; retrying" in r.getMessage()]
    assert len(lost) == 1 and "within 30 s" in lost[0]
    assert any("still unreachable after 10 s" in r.getMessage() for r in caplog.records)
    assert w.observe(True) == 1.0
    assert changes[-1] == (None, 0.0) and w.lost_since is None
    assert any("reachable again after 12.0 s" in r.getMessage() for r in caplog.records)
    assert not exits


def test_the_broker_watch_exits_with_one_line_once_the_grace_is_over() -> None:
    w, clock, _, exits = watch(grace_s=5)
    w.observe(False)
    clock.now += 4.9
    assert w.observe(False) <= 0.1 + 1e-9, "the next probe comes at the end of the grace"
    assert not exits
    clock.now += 0.1
    w.observe(False)
    assert len(exits) == 1
    line, code = exits[0]
    assert code == EXIT_BROKER_LOST == 3
    assert "\n" not in line and "unreachable for 5 s" in line and "PATRONAGE_BROKER_LOSS_GRACE_S=5" in line


def test_repeated_reconnect_errors_go_through_once_per_kind_per_interval() -> None:
    clock = Clock()
    f = RepeatFilter(10.0, clock=clock)

    def record(msg: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("aiokafka", level, __file__, 1, msg, ("x",), None)

    assert f.filter(record("Unable connect to node %s"))
    assert sum(f.filter(record("Unable connect to node %s")) for _ in range(50)) == 0
    assert f.filter(record("Unable to update metadata from %s"))  # another kind
    assert f.filter(record("debug chatter %s", logging.INFO))
    clock.now += 10
    again = record("Unable connect to node %s")
    assert f.filter(again)
    assert "[50 more like this in the last 10 s]" in again.getMessage()


def test_wait_is_not_caught_up_while_committed_offsets_lie_past_a_logs_end() -> None:
    a, b = TopicPartition("purchases", 0), TopicPartition("purchases", 1)
    progress = Progress(end={a: 287, b: 50}, committed={a: 354, b: 50})
    assert progress.remaining == 0  # what `wait` used to look at alone: "caught up"
    assert progress.ahead == {a: (354, 287)}
    assert Progress(end={a: 400, b: 50}, committed={a: 400, b: 50}).ahead == {}


def test_a_record_held_at_the_committed_offset_is_never_committed_past() -> None:
    """A backlog run lost stock arrivals at a SIGTERM: the arrival at broadcast offset 229 was
    held back (newer than the batch's horizon) while older arrivals after it were applied and
    acked; Faust commits a run of acked offsets that begins one past the committed offset, so
    it committed 319 and the restarted worker never read the arrival again."""
    tp, other = TP("stock-broadcast", 1), TP("purchases", 1)
    c = bare_consumer(1.0)
    c._committed_offset[tp] = 229
    c._ack_offsets(tp, range(230, 319))
    c._keep_held(1, [rec("stock-broadcast", 229, 1), rec("purchases", 7, 1)])
    assert FaustConsumer._new_offset(c, tp) == 319  # type: ignore[arg-type]  # Faust alone: past it
    c._acked[tp].extend(range(230, 319))  # (Faust's arithmetic removed them)
    assert c._new_offset(tp) is None  # nothing before the held record is left to commit
    assert sorted(c._acked[tp]) == list(range(230, 319)), "acks above the held record are kept"
    c._keep_held(1, [rec("purchases", 7, 1)])  # the arrival applied and acked: all of it commits
    c._ack_offsets(tp, [229])
    assert c._new_offset(tp) == 319
    # a fresh group (no commit yet): held at the first offset, later ones acked
    c._committed_offset[other] = None
    c._ack_offsets(other, range(8, 20))
    assert c._new_offset(other) is None
    c._ack_offsets(other, range(0, 7))
    assert c._new_offset(other) == 7  # up to the held record, not past it
    c._committed_offset[other] = 7  # (what Faust's commit records)
    c._keep_held(1, [])
    c._ack_offsets(other, [7])
    assert c._new_offset(other) == 20


def test_records_fetched_and_not_handled_hold_the_commit_until_they_are_read_again() -> None:
    tp = TP("touchpoints", 2)
    c = bare_consumer(1.0)
    c._committed_offset[tp] = 50
    c._ack_offsets(tp, [50, 51, 53, 54])
    c._unhandled[tp] = (52, 0)
    assert c._new_offset(tp) == 52
    c._committed_offset[tp] = 52
    del c._unhandled[tp]
    c._refetch_floor[tp] = 52  # sought back to it, not read yet
    assert c._new_offset(tp) is None
    c._refetch_floor.pop(tp)
    c._ack_offsets(tp, [52])
    assert c._new_offset(tp) == 55
