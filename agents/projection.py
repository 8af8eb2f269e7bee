"""The Redis projection: profiles, audience sets and at-risk sets for other services.

The processor marks the customers a batch changed once their state is durable in the
changelog (``mark``); a background task (``run``) writes the current state of every marked
customer, coalesced (a customer changed by many events is written once) and pipelined
(``projection_batch`` customers per round trip, one Lua script call each, which moves the
customer between audience/at-risk sets atomically and idempotently). Redis being down never
stops processing: marks accumulate (one entry per customer, so memory is bounded by the
customers held), the task retries with backoff, and ``patronage_projection_lag_seconds``
says how far behind Redis is. A partition is projected whole after the worker recovers it
and whenever its ``synced`` marker is missing - a flushed, restarted-empty or new Redis is
rebuilt from the table - or has expired (``projection_refresh_s``: time-relative fields).
Key layout: streams/projection.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.state import CustomerState
from streams.core import Context
from streams.projection import KeyLayout, Projection, clock_moved_on, project

if TYPE_CHECKING:
    from agents.metrics import Metrics
    from agents.settings import Settings

log = logging.getLogger(__name__)
# customers projected between two yields to the event loop while a chunk is built (each
# costs ~0.1 ms of the one thread that also processes the records)
_YIELD_EVERY = 32

# KEYS[1]: the profile hash. ARGV: key base ("<prefix>:v1:"), customer id, audiences as JSON
# {category: score} ("" = remove the customer), at-risk store ("" = none), its score, then the
# hash's field/value pairs as one JSON array of strings [field, value, ...] (one argument, not
# ~35: packing the arguments of a command cost the worker ~30 us per customer, decoding the
# array costs Redis ~2 us). Old memberships are read from the hash itself (_aud, _risk).
PROJECT_LUA = """
local base, id = ARGV[1], ARGV[2]
local old_aud = redis.call('HGET', KEYS[1], '_aud')
local old_risk = redis.call('HGET', KEYS[1], '_risk')
local new_aud = {}
if ARGV[3] ~= '' then new_aud = cjson.decode(ARGV[3]) end
if old_aud and old_aud ~= '' then
  for cat, _ in pairs(cjson.decode(old_aud)) do
    if new_aud[cat] == nil then redis.call('ZREM', base .. 'audience:' .. cat, id) end
  end
end
for cat, score in pairs(new_aud) do redis.call('ZADD', base .. 'audience:' .. cat, score, id) end
if old_risk and old_risk ~= '' and old_risk ~= ARGV[4] then
  redis.call('ZREM', base .. 'at_risk:' .. old_risk, id)
end
if ARGV[4] ~= '' then redis.call('ZADD', base .. 'at_risk:' .. ARGV[4], ARGV[5], id) end
redis.call('DEL', KEYS[1])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], '_aud', ARGV[3], '_risk', ARGV[4], unpack(cjson.decode(ARGV[6])))
end
return 1
"""


def redis_target(url: str) -> str:
    """``host:port/db`` of a Redis URL, without user or password (for logs and messages)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    port = parts.port or 6379
    db = parts.path.lstrip("/") or "0"
    return f"{parts.scheme}://{host}:{port}/{db}"


def redis_url(settings: Settings) -> str:
    """PATRONAGE_REDIS_URL, as ``rediss://`` when PATRONAGE_REDIS_TLS is on."""
    url = settings.redis_url
    if settings.redis_tls and url.startswith("redis://"):
        url = "rediss://" + url[len("redis://") :]
    return url


def connect(settings: Settings) -> aioredis.Redis:
    """An asyncio Redis client from the settings (user, password and TLS from their own
    settings, so no secret needs to be in the URL)."""
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        "health_check_interval": 30,
    }
    if settings.redis_username:
        kwargs["username"] = settings.redis_username
    if settings.redis_password is not None:
        kwargs["password"] = settings.redis_password.get_secret_value()
    url = redis_url(settings)
    if url.startswith("rediss://"):
        kwargs["ssl_cert_reqs"] = "required"
        if settings.redis_tls_ca_file:
            kwargs["ssl_ca_certs"] = settings.redis_tls_ca_file
    return aioredis.Redis.from_url(url, **kwargs)


class RedisProjection:
    def __init__(
        self,
        settings: Settings,
        *,
        store: dict[str, CustomerState],
        partition_of: Callable[[str], int],
        context: Callable[[int], Context],
        clock_name: str,
        metrics: Metrics | None = None,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.settings = settings
        self.keys = KeyLayout(settings.redis_prefix)
        self.store = store
        self.partition_of = partition_of
        self.context = context
        self.clock_name = clock_name
        self.metrics = metrics
        self.client = client or connect(settings)
        self._script = self.client.register_script(PROJECT_LUA)
        self.target = redis_target(redis_url(settings))
        # customer -> wall time (monotonic) of the oldest change not projected yet
        self.pending: dict[str, float] = {}
        self.inflight: dict[str, float] = {}  # taken from ``pending``, being written now
        self.resync: dict[int, float] = {}  # partition -> since when it waits to be projected whole
        self.resync_left: dict[int, int] = {}  # partition being projected whole -> customers left
        self.assigned: set[int] = set()
        self._wake = asyncio.Event()
        self._down_since: float | None = None
        self.written = 0
        # the partition clock the profiles were last all written with, and at the last check
        # (streams.projection.clock_moved_on)
        self.projected_clock: dict[int, int] = {}
        self.seen_clock: dict[int, int] = {}

    # --- called by the processor and the runtime ------------------------------------------
    def mark(self, subjects: Iterable[str]) -> None:
        """These customers' states are durable with changes Redis does not have yet."""
        now = time.monotonic()
        pending = self.pending
        for subject in subjects:
            if subject not in pending:
                pending[subject] = now
        self._wake.set()

    def recovered(self, partitions: Iterable[int]) -> None:
        """The worker (re)built these partitions from the changelog: what Redis has of them may
        be older (changes marked before a crash are lost with the process), so project them whole."""
        self.assigned = set(partitions)
        now = time.monotonic()
        for p in self.assigned:
            self.resync.setdefault(p, now)
        for p in list(self.resync):
            if p not in self.assigned:
                del self.resync[p]
        self._wake.set()

    def refresh_all(self, why: str) -> None:
        """Project every assigned partition whole (e.g. a new churn model: every P(alive))."""
        now = time.monotonic()
        for p in self.assigned:
            self.resync.setdefault(p, now)
        if self.assigned:
            log.info("re-projecting %d partitions into Redis: %s", len(self.assigned), why)
        self._wake.set()

    def check_clocks(self) -> None:
        """Partitions whose clock moved on by ``projection_clock_step_s`` since their profiles
        were written (a replay just caught up) are projected whole."""
        step_ms = int(self.settings.projection_clock_step_s * 1000)
        now = {p: self.context(p).now_ms for p in self.assigned if p not in self.resync}
        for p in clock_moved_on(self.projected_clock, self.seen_clock, now, step_ms):
            log.info("partition %d: its clock moved on since its profiles were written; re-projecting", p)
            self.resync.setdefault(p, time.monotonic())

    def lag_seconds(self) -> float:
        """Age of the oldest change Redis does not have (0: caught up)."""
        oldest = min(self.pending.values(), default=None)
        if self.inflight:
            first = min(self.inflight.values())
            oldest = first if oldest is None else min(oldest, first)
        if self.resync:
            first = min(self.resync.values())
            oldest = first if oldest is None else min(oldest, first)
        return 0.0 if oldest is None else max(0.0, time.monotonic() - oldest)

    def backlog(self) -> int:
        """Customers waiting to be written. A partition waiting to be projected whole counts
        as its share of the customers held until its turn comes (then exactly): counting it
        exactly would hash every customer id at each scrape."""
        waiting = len(self.pending) + len(self.inflight)
        if self.resync:
            share = len(self.store) // max(1, len(self.assigned))
            waiting += sum(self.resync_left.get(p, share) for p in self.resync)
        return waiting

    # --- the background task --------------------------------------------------------------
    async def run(self, stopping: Callable[[], bool] = lambda: False) -> None:
        """Write until cancelled; errors back off (``redis_timeout_s`` .. 30 s) and retry."""
        backoff = 0.0
        check_every = 5.0
        next_check = 0.0
        while not stopping():
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=backoff or check_every)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                if time.monotonic() >= next_check:
                    self.check_clocks()
                    await self.check_markers()
                    next_check = time.monotonic() + check_every
                await self.flush()
                await self.flush_resync()
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed(exc)
                backoff = min(30.0, max(self.settings.redis_timeout_s, backoff * 2 or 1.0))
                continue
            if self._down_since is not None:
                log.warning(
                    "Redis %s reachable again after %.0f s; projection catching up (%d customers waiting)",
                    self.target,
                    time.monotonic() - self._down_since,
                    self.backlog(),
                )
                self._down_since = None
            backoff = 0.0

    def _failed(self, exc: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.projection_errors.inc()
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "Redis %s: %s; processing goes on, the projection retries and catches up "
                "(patronage_projection_lag_seconds)",
                self.target,
                exc.__class__.__name__ + (f": {exc}" if str(exc) else ""),
            )

    async def check_markers(self) -> None:
        """A partition without its ``synced`` marker (Redis flushed or new, or the marker
        expired after ``projection_refresh_s``) is projected whole."""
        todo = sorted(p for p in self.assigned if p not in self.resync)
        if not todo:
            return
        # as a context manager: a pipeline cancelled on stop gives its connection back
        # (else redis-py reports "Unclosed Pipeline client" at exit)
        async with self.client.pipeline(transaction=False) as pipe:
            for p in todo:
                pipe.exists(self.keys.synced(p))
            found = await pipe.execute()
        now = time.monotonic()
        for p, there in zip(todo, found, strict=True):
            if not there and p in self.assigned:
                log.info("Redis has no projection of partition %d (new, flushed or due for refresh)", p)
                self.resync.setdefault(p, now)

    async def flush(self) -> None:
        """Write every marked customer (current state), ``projection_batch`` per round trip."""
        size = self.settings.projection_batch
        pending = self.pending
        while pending:
            # taken out before they are projected: a change marked while the chunk is being
            # written (processing runs in the pauses) is marked anew and written next round
            chunk: dict[str, float] = {}
            for subject in pending:
                chunk[subject] = pending[subject]
                if len(chunk) >= size:
                    break
            for subject in chunk:
                del pending[subject]
            self.inflight = chunk
            try:
                await self._write(list(chunk))
            except BaseException:
                for subject, since in chunk.items():  # still to be written, as old as they were
                    pending[subject] = min(since, pending.get(subject, since))
                raise
            finally:
                self.inflight = {}

    async def flush_resync(self) -> None:
        """Project partitions waiting to be projected whole, then set their marker."""
        for partition in sorted(self.resync):
            clock_ms = self.context(partition).now_ms
            subjects = []
            for n, s in enumerate(list(self.store), 1):
                if not n % 4096:
                    await asyncio.sleep(0)  # a million customers: seconds of hashing
                if self._partition(s) == partition:
                    subjects.append(s)
            size = self.settings.projection_batch
            self.resync_left[partition] = len(subjects)
            try:
                for i in range(0, len(subjects), size):
                    if partition not in self.resync:  # revoked meanwhile
                        break
                    await self._write(subjects[i : i + size])
                    self.resync_left[partition] = max(0, len(subjects) - i - size)
                    await self.flush()  # fresh changes first: they are what readers wait for
            finally:
                self.resync_left.pop(partition, None)
            if self.resync.pop(partition, None) is not None:
                self.projected_clock[partition] = clock_ms
                ttl = self.settings.projection_refresh_s
                marker = self.keys.synced(partition)
                if ttl > 0:
                    await self.client.set(marker, str(int(time.time() * 1000)), px=int(ttl * 1000))
                else:
                    await self.client.set(marker, str(int(time.time() * 1000)))
                log.info("partition %d projected whole into Redis (%d customers)", partition, len(subjects))

    def _partition(self, subject: str) -> int:
        return self.partition_of(subject)

    async def _write(self, subjects: list[str]) -> None:
        if not subjects:
            return
        contexts: dict[int, Context] = {}
        keys = self.keys
        base = keys.base
        max_aud = self.settings.projection_max_audiences
        async with self.client.pipeline(transaction=False) as pipe:
            for n, subject in enumerate(subjects, 1):
                if not n % _YIELD_EVERY:
                    await asyncio.sleep(0)  # processing goes first: never hold the loop long
                partition = self._partition(subject)
                ctx = contexts.get(partition)
                if ctx is None:
                    ctx = contexts[partition] = self.context(partition)
                proj = project(subject, self.store.get(subject), ctx, self.clock_name, max_aud)
                await self._script(keys=[keys.profile(subject)], args=_args(base, proj), client=pipe)
            await pipe.execute()
        self.written += len(subjects)
        if self.metrics is not None:
            self.metrics.projection_writes.inc(len(subjects))

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception:  # closing a broken connection: nothing left to do
            log.debug("closing the Redis client failed", exc_info=True)


def _args(base: str, proj: Projection) -> list[str | bytes]:
    if proj.fields is None:
        return [base, proj.subject, "", "", "0"]
    store, since = proj.at_risk if proj.at_risk is not None else ("", 0)
    pairs = [x for item in proj.fields.items() for x in item]
    return [base, proj.subject, orjson.dumps(proj.audiences).decode(), store, str(since), orjson.dumps(pairs)]
