"""Event-loop stall watch (``PATRONAGE_STALL_LOG_MS``, off by default).

Everything a worker does for its partitions runs on one event loop, so any step that keeps
the loop for long (a big batch, a scrape computing gauges, the collector) delays every
record behind it: latency. A coroutine beats every few milliseconds; a thread notices when
the beat is older than the threshold and logs where the loop's thread is at that moment
(its stack), and how long the stall lasted once it ends. A diagnostic for latency work:
the thread wakes every threshold/4, so keep the threshold at tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import time
import traceback

log = logging.getLogger(__name__)


class StallWatch:
    def __init__(self, threshold_ms: float) -> None:
        self.threshold_s = threshold_ms / 1000
        self._beat = time.monotonic()
        self._thread_id = threading.get_ident()
        self.stalls = 0
        self._stop = threading.Event()
        self.gc_s = 0.0  # seconds in the cyclic garbage collector so far
        self._gc_started = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_s += time.perf_counter() - self._gc_started

    async def beat(self) -> None:
        """Runs on the loop to watch (started from it: its thread is the one sampled)."""
        self._thread_id = threading.get_ident()
        threading.Thread(target=self._watch, name="stall-watch", daemon=True).start()
        interval = self.threshold_s / 4
        gc.callbacks.append(self._on_gc)
        try:
            while True:
                self._beat = time.monotonic()
                await asyncio.sleep(interval)
        finally:
            gc.callbacks.remove(self._on_gc)
            self._stop.set()

    def _watch(self) -> None:
        stalled_since: float | None = None
        gc_before = 0.0
        samples: list[str] = []
        while not self._stop.wait(self.threshold_s / 4):
            age = time.monotonic() - self._beat
            if age > self.threshold_s:
                if stalled_since is None:
                    stalled_since = self._beat
                    gc_before = self.gc_s
                    samples = []
                if len(samples) < 3:
                    frame = sys._current_frames().get(self._thread_id)
                    if frame is not None:
                        stack = traceback.format_stack(frame)[-14:]
                        samples.append(f"after {age * 1000:.0f} ms:\n" + "".join(stack))
            elif stalled_since is not None:
                self.stalls += 1
                log.warning(
                    "event loop stalled %.0f ms (%.0f ms of it in the garbage collector); where it was:\n%s",
                    (self._beat - stalled_since) * 1000,
                    (self.gc_s - gc_before) * 1000,
                    "\n".join(samples),
                )
                stalled_since = None
