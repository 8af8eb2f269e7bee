"""The batching consumer's pieces that need no broker: the empty-fetch backoff shim against
aiokafka's own fetcher shutdown code."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from aiokafka.consumer.fetcher import Fetcher

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
