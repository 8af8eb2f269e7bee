"""The event-loop stall watch names what held the loop (PATRONAGE_STALL_LOG_MS)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from agents.stallwatch import StallWatch


def _hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # a synchronous step: nothing else on the loop runs meanwhile


async def _run(watch: StallWatch, hold_s: float) -> None:
    task = asyncio.ensure_future(watch.beat())
    await asyncio.sleep(0.1)
    _hold_the_loop(hold_s)
    await asyncio.sleep(0.2)  # the beat resumes; the watch reports the stall once
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_held_loop_is_logged_with_the_holder(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agents.stallwatch")
    watch = StallWatch(threshold_ms=40)
    asyncio.run(_run(watch, 0.3))
    stalls = [r.getMessage() for r in caplog.records if "event loop stalled" in r.getMessage()]
    assert len(stalls) == 1 and watch.stalls == 1
    held_ms = int(stalls[0].split("stalled ")[1].split(" ms")[0])
    assert 250 <= held_ms <= 1000
    assert "_hold_the_loop" in stalls[0]  # where it was: the stack of the loop's thread


def test_a_loop_that_keeps_turning_is_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agents.stallwatch")
    watch = StallWatch(threshold_ms=200)
    asyncio.run(_run(watch, 0.01))
    assert watch.stalls == 0
    assert not [r for r in caplog.records if "event loop stalled" in r.getMessage()]
