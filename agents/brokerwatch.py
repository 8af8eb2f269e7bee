"""Watching the broker: a worker that loses it says so, retries, and gives up only after a grace.

aiokafka reconnects by itself (with backoff) and Faust's loops simply wait, so without this a
worker whose broker is gone looks alive: it hangs silently, /healthz says 200 and nothing in
the metrics moves. :class:`BrokerWatch` probes the bootstrap servers (a TCP connect, every
second while they answer, backing off to ``max_delay_s`` (2 s) while they do not) and:

- on loss: one warning line, ``patronage_broker_up`` 0, ``patronage_broker_unreachable_seconds``
  growing, /healthz 503 with the reason; a reminder line every ``remind_s``;
- on return within the grace: one line with how long it was away; processing resumes by itself
  (aiokafka reconnects; offsets and state are as they were);
- after ``grace_s`` without the broker: one error line and exit code 3 (no traceback: nothing
  can be committed or flushed without the broker, so there is nothing to stop gracefully).

A stop signal while the broker is gone exits at once (see ``StopGuard.quick_exit``): a
graceful stop would wait for commits and flushes that cannot happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

log = logging.getLogger(__name__)

EXIT_BROKER_LOST = 3


async def tcp_probe(servers: Sequence[str], timeout_s: float = 1.0) -> bool:
    """True if any bootstrap server ``host:port`` accepts a TCP connection.

    The connect runs in a thread with a socket timeout: its verdict is real time. An asyncio
    connect with ``wait_for`` timed out whenever the event loop was busy longer than the
    timeout (a large batch, a two-year replay's mid-batch tick): a busy worker said the
    broker was lost and /healthz answered 503."""
    return await asyncio.to_thread(_connects, list(servers), timeout_s)


def _connects(servers: list[str], timeout_s: float) -> bool:
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


def _flush_output() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()


def exit_now(line: str, code: int) -> None:
    """Write one line to stderr and end the process (logging handlers flushed first)."""
    _flush_output()
    os.write(2, (line.rstrip("\n") + "\n").encode())
    os._exit(code)


def exit_fast(code: int) -> None:
    """End a worker that has stopped: output flushed, no interpreter teardown (freeing every
    customer state object by object took seconds)."""
    _flush_output()
    os._exit(code)


class BrokerWatch:
    def __init__(
        self,
        servers: Sequence[str],
        grace_s: float,
        *,
        on_change: Callable[[float | None, float], None],
        probe: Callable[[Sequence[str]], Awaitable[bool]] = tcp_probe,
        clock: Callable[[], float] = time.monotonic,
        exit: Callable[[str, int], None] = exit_now,
        interval_s: float = 1.0,
        max_delay_s: float = 2.0,
        remind_s: float = 10.0,
    ) -> None:
        """``on_change(lost_since, away_s)`` is called after every probe: ``lost_since`` the
        clock's time the broker was lost (None: reachable), ``away_s`` how long so far."""
        self.servers = list(servers)
        self.grace_s = grace_s
        self.on_change = on_change
        self.probe = probe
        self.clock = clock
        self.exit = exit
        self.interval_s = interval_s
        self.max_delay_s = max_delay_s
        self.remind_s = remind_s
        self.lost_since: float | None = None
        self._delay = interval_s
        self._reminded = 0.0

    def observe(self, reachable: bool) -> float:
        """Take one probe's result; returns the seconds until the next probe."""
        now = self.clock()
        where = ", ".join(self.servers)
        if reachable:
            if self.lost_since is not None:
                log.warning("broker %s reachable again after %.1f s; resuming", where, now - self.lost_since)
            self.lost_since = None
            self._delay = self.interval_s
            self.on_change(None, 0.0)
            return self._delay
        if self.lost_since is None:
            self.lost_since = self._reminded = now
            log.warning(
                "broker %s unreachable; retrying with backoff, exiting if it is not back within %.0f s "
                "(PATRONAGE_BROKER_LOSS_GRACE_S)",
                where,
                self.grace_s,
            )
        away = now - self.lost_since
        self.on_change(self.lost_since, away)
        if away >= self.grace_s:
            self.exit(
                f"patronage: broker {where} unreachable for {away:.0f} s "
                f"(PATRONAGE_BROKER_LOSS_GRACE_S={self.grace_s:g}); exiting with code {EXIT_BROKER_LOST}",
                EXIT_BROKER_LOST,
            )
            return self._delay
        if now - self._reminded >= self.remind_s:
            self._reminded = now
            log.warning("broker %s still unreachable after %.0f s; retrying", where, away)
        self._delay = min(self.max_delay_s, self._delay * 2)
        # never sleep past the end of the grace
        return max(0.05, min(self._delay, self.grace_s - away))

    async def run(self) -> None:
        while True:
            delay = self.observe(await self.probe(self.servers))
            await asyncio.sleep(delay)


class RepeatFilter(logging.Filter):
    """Lets a message (by its format string) through once per ``every_s`` seconds.

    While the broker is gone, aiokafka logs every failed reconnect of every client (consumer,
    producer, coordinator) - dozens of ERROR lines a second, drowning the one line that says
    what is going on. The first of each kind still goes through; then a repeat at most every
    ``every_s`` seconds, saying how many were held back."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self.clock = clock
        self._last: dict[object, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.msg)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.every_s:
            self._last[key] = (last[0], last[1] + 1)
            return False
        held = 0 if last is None else last[1]
        self._last[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} [{held} more like this in the last {self.every_s:.0f} s]"
        if len(self._last) > 1000:
            self._last.clear()
        return True


AIOKAFKA_LOGGERS = (
    "aiokafka",
    "aiokafka.conn",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.producer.sender",
    "aiokafka.producer.producer",
)


def quiet_aiokafka_repeats(every_s: float = 10.0) -> None:
    """Install :class:`RepeatFilter` on aiokafka's loggers (once per process)."""
    for name in AIOKAFKA_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(RepeatFilter(every_s))
