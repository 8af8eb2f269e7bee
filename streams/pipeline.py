"""The customer pipeline: all customer logic behind two entry points, no I/O.

- ``apply(partition, records)``: incoming records (any mix of purchases, touchpoints,
  customer-updates and internal identity records of one partition) -> :class:`Batch`;
- ``tick(partition, now_ms)``: time passing -> :class:`Batch` (risk deadlines, stalled
  prospects), popping only the customers that are due.

A :class:`Batch` holds what to send (lifecycle changes, identity hops, dead letters), the
states that changed (the caller writes each to the changelog once), the triggers decided
(sent *after* the changelog: they are in each state's outbox, so a crash re-sends the very
same record), and counts for metrics. The caller (agents/processor.py, or
:class:`streams.testing.PipelineHarness` in tests) encodes, sends, writes and acks.

Decoding is a ``{topic: (decode, step)}`` table; every bad record becomes a dead letter with
a stable reason code, never an exception out of here.
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Collection, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Any, NamedTuple, Protocol, TypeVar, cast

import orjson
from pydantic import BaseModel, ValidationError

from schemas.errors import Reason, Rejected, Stage
from schemas.events import (
    CustomerUpdate,
    Purchase,
    PurchaseLike,
    StockArrival,
    Touchpoint,
    describe_validation_error,
)
from schemas.fast import fast_purchase, fast_touchpoint
from schemas.outputs import dead_letter_record
from schemas.state import CustomerState
from schemas.timestamps import DAY_MS, TsBounds, iso_utc
from schemas.topics import CUSTOMER_INPUTS, EVENT_TIME_INPUTS, Topic, TopicNames
from streams import churn, gate, identity, storefunnel, uplift
from streams import customer as steps
from streams import stock as stocks
from streams.clock import Clock
from streams.core import ChurnModel, Context, Emit, Outcome, Step, log_failure
from streams.indexes import CountIndex, DeadlineIndex, StateIndex
from streams.lifecycle import RISK_STAGES, stage_only
from streams.policy import Policy
from streams.population import PartitionedPopulation
from streams.profile import stage_key
from streams.store import OUTBOX_MARK, states_with

log = logging.getLogger(__name__)
PRIOR_DRIFT = 0.05  # relative change of the churn prior that re-indexes every deadline
# customers whose deadline is indexed again per batch or tick after the prior drifted (the
# whole table at once held the processing loop for 663 ms at 50,000 customers)
REPRIOR_SLICE = 500


class RecordLike(Protocol):
    """What the pipeline needs of a Kafka record (aiokafka records and Faust messages fit)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(slots=True)
class BatchStats:
    records: int = 0
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, outcome)
    dead_letters: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (topic, stage, reason)
    lifecycle: Counter[str] = field(default_factory=Counter)  # to_stage
    triggers: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, reason)
    beyond_horizon: int = 0
    conflicts: Counter[str] = field(default_factory=Counter)  # duplicate_conflict dead letters by topic
    due: int = 0  # customers popped from the deadline index
    gate: Counter[tuple[str, str]] = field(default_factory=Counter)  # (trigger type, gate decision)
    matched: Counter[str] = field(default_factory=Counter)  # stock audience by reason
    arrivals: int = 0  # stock arrivals matched
    stale: list[str] = field(default_factory=list)  # ids of arrivals too old to offer
    # event times of the records applied, per topic (event time -> processed latency)
    event_ts: dict[str, list[int]] = field(default_factory=dict)
    # (trigger type, Kafka timestamp ms of the record that caused it) for triggers decided
    # while applying a record (ingest -> trigger sent latency); clock-fired ones are not here
    trigger_ingest: list[tuple[str, int]] = field(default_factory=list)
    exposures: Counter[tuple[str, str]] = field(default_factory=Counter)  # uplift (type, group)
    unmeasured: Counter[str] = field(default_factory=Counter)  # triggers beyond the open bound, by type


@dataclass(slots=True)
class Batch:
    partition: int
    emits: list[Emit] = field(default_factory=list)
    changed: dict[str, CustomerState | None] = field(default_factory=dict)
    triggers: list[Emit] = field(default_factory=list)
    stats: BatchStats = field(default_factory=BatchStats)
    held: list[Any] = field(default_factory=list)  # records not applied yet (apply(align=True))

    def __bool__(self) -> bool:
        return bool(self.emits or self.changed or self.triggers)


_NON_FINITE = re.compile(rb"-?(?:NaN|Infinity|inf|nan)\b")


def decode_object(raw: bytes | None, max_bytes: int = 1 << 20) -> dict[str, Any]:
    """An input record's value as a JSON object, or Rejected at the decode stage (a value
    longer than ``max_bytes`` is not parsed at all: ``too_large``)."""
    if raw is None:
        raise Rejected(Stage.DECODE, Reason.EMPTY_VALUE, "empty value (tombstone) on an input topic")
    if len(raw) > max_bytes:
        raise Rejected(
            Stage.DECODE,
            Reason.TOO_LARGE,
            f"value of {len(raw)} bytes is above PATRONAGE_MAX_VALUE_BYTES={max_bytes}",
        )
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        detail = f"invalid JSON: {exc}"
        if "infinity when parsed" in str(exc):  # orjson on 1e999: valid grammar, no double holds it
            detail = (
                f"invalid JSON: a number beyond a 64-bit float's range (about ±1.8e308) at char "
                f"{exc.pos}; NaN and Infinity are not accepted either"
            )
        elif (word := _NON_FINITE.match(raw, exc.pos)) is not None:  # orjson: "unexpected character"
            detail = (
                f"invalid JSON: {word.group().decode()} at char {exc.pos}: JSON has no NaN or Infinity "
                "(send a number, or leave the field out)"
            )
        elif "UTF-8" in str(exc):  # orjson: "str is not valid UTF-8: surrogates not allowed"
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                detail = f"invalid JSON: the value is not UTF-8 text (byte {bad.start}: {raw[bad.start : bad.start + 1]!r})"
        raise Rejected(Stage.DECODE, Reason.INVALID_JSON, detail) from None
    if not isinstance(obj, dict):
        raise Rejected(
            Stage.DECODE, Reason.NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}"
        )
    return obj


M = TypeVar("M", bound=BaseModel)


def validate_model(model: type[M], obj: dict[str, Any]) -> M:
    """``model.model_validate(obj)``, or Rejected with the reason code and the field named."""
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        reason, detail = describe_validation_error(exc)
        raise Rejected(Stage.VALIDATE, reason, detail) from None


def bounds_for(policy: Policy, wall_ms: int) -> TsBounds:
    return TsBounds(policy.ts_floor_ms, wall_ms + policy.ts_max_future_ms, policy.ts_seconds_below_ms)


def check_ts(bounds: TsBounds, ts_ms: int) -> None:
    reason = bounds.check(ts_ms)
    if reason is not None:
        raise Rejected(Stage.VALIDATE, reason, "ts: " + bounds.explain(ts_ms, reason))


@dataclass(slots=True)
class _Work:
    """One ``apply`` call in progress."""

    partition: int
    batch: Batch
    ctx: Context
    touched: dict[str, CustomerState | None] = field(default_factory=dict)
    newest: dict[str, int] = field(default_factory=dict)  # topic -> newest applied event time
    last: str | None = None  # the subject the record just applied changed
    ingest_ms: int | None = None  # Kafka timestamp of the record being applied
    record: RecordLike | None = None  # the record being applied (the origin of its hops)


class _Ready(NamedTuple):
    """A decoded, valid record waiting for its turn (event-time order within the batch)."""

    label: str  # topic for metrics (a re-routed event counts under its own topic)
    ts: int
    run: Callable[[_Work], Outcome]  # applies it, in the batch being applied


_FIRST = -(2**63)  # re-routing does not touch state: first, whatever its time
Handler = Callable[[dict[str, Any], _Work], _Ready]
_ORDER = itemgetter(0, 1)  # (event time, position in the batch)
_TS = itemgetter(0)
_ALIGNED = frozenset(t.value for t in EVENT_TIME_INPUTS)
_BROADCAST = Topic.STOCK_BROADCAST.value


def _horizon(ready: list[tuple[int, int, Any, _Ready]]) -> int | None:
    """The oldest of the newest event times of the input topics in the batch (None: fewer
    than two topics, nothing to align)."""
    newest: dict[str, int] = {}
    for ts, _seq, _record, prepared in ready:
        if prepared.label in _ALIGNED and ts != _FIRST and ts > newest.get(prepared.label, _FIRST):
            newest[prepared.label] = ts
    return min(newest.values()) if len(newest) > 1 else None


def _money(cents: int) -> str:
    """Cents as a decimal amount, exactly (a float would round a huge one)."""
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"{sign}{whole}.{rest:02d}"


class CustomerPipeline:
    """Owns the rules; the caller owns the store (a Faust table's dict, or a plain dict)."""

    def __init__(
        self,
        *,
        policy: Policy,
        store: MutableMapping[str, CustomerState],
        clock: Clock,
        topics: TopicNames,
        partition_of: Callable[[str], int],
        key_partitions: MutableMapping[str, int] | None = None,
        population: PartitionedPopulation | None = None,
        extra_indexes: Sequence[StateIndex] = (),
    ) -> None:
        """``partition_of(subject)`` is the partition that owns a subject (murmur2 of the id
        over the co-partitioned topics' partition count). ``extra_indexes`` are kept up to
        date and rebuilt like the built-in ones (e.g. the page's, streams.page)."""
        self.policy = policy
        self.store = store
        # a StateStore (streams/store.py) turns customers beyond its hot bound cold here
        self._trim: Callable[[], int] | None = getattr(store, "trim", None)
        # subjects whose state had an outbox at the last rebuild, while nothing was applied
        # since (pending_outbox then decodes only those, not every cold customer)
        self._outboxes: list[str] | None = None
        self.clock = clock
        self.topics = topics
        self.partition_of = partition_of
        self.key_partitions = key_partitions
        # customers are ranked against their own partition's buyers (see PartitionedPopulation)
        self.population = population if population is not None else PartitionedPopulation()
        self.model: ChurnModel | None = None
        self.deadlines = DeadlineIndex(self._next_deadline)
        # customers at risk now, per (risk stage, tier-independent "alerted")
        self.risk = CountIndex(_risk_class)
        # subjects per (known | anonymous, lifecycle stage), for the metrics
        self.stages = CountIndex(lambda state: _stage_class(state, policy))
        # store funnel: per (store, hour) sums of the customers' recent visits and purchases
        self.funnel = storefunnel.StoreFunnelIndex(policy.funnel.buy_window_ms, policy.funnel.retention_ms)
        # uplift tallies (treated vs control, per trigger type x segment x tier)
        self.uplift = uplift.UpliftIndex()
        # stock fan-out: category -> candidates, co-purchase counts, store -> region
        self.interests = stocks.InterestIndex(policy.interest)
        self.affinity = stocks.AffinityIndex(policy.interest)
        self.regions: stocks.Regions = stocks.configured_regions(policy.interest.store_regions)
        self._applied_until: dict[int, int] = {}  # partition -> newest event time applied
        # partition -> the records it held back last time, decoded and validated:
        # id(record) -> (record, prepared). Offered again (the same objects), they are not
        # decoded again: a backlog's hold is offered again with every fetch, and preparing
        # all of it each time held the event loop for 0.4-2.6 s per batch
        self._prepared: dict[int, dict[int, tuple[RecordLike, _Ready]]] = {}
        # partition -> newest customer event time applied since start: what "new" stock is
        # measured against; before anything is applied, the newest restored from the store
        self._customer_newest: dict[int, int] = {}
        self._restored_newest: dict[int, int] = {}
        # co-purchase counts only when affinity is switched on for some category
        affinity_on = bool(policy.interest.affinity_categories)
        self.indexes: tuple[StateIndex, ...] = (
            self.population,
            self.deadlines,
            self.risk,
            self.stages,
            self.funnel,
            self.uplift,
            self.interests,
            *((self.affinity,) if affinity_on else ()),
            *extra_indexes,
        )
        self._extra_indexes = tuple(extra_indexes)
        self._stock_indexes: tuple[StateIndex, ...] = (
            (self.interests, self.affinity) if affinity_on else (self.interests,)
        )
        self._prior_days = self._indexed_prior = policy.churn.prior_interval_days
        self._reprior: list[str] = []  # subjects whose deadline awaits the drifted prior
        self._table: dict[Topic, Handler] = {
            Topic.PURCHASES: self._input(Topic.PURCHASES, self._purchase, steps.on_purchase),
            Topic.TOUCHPOINTS: self._input(Topic.TOUCHPOINTS, self._touchpoint, steps.on_touchpoint),
            Topic.CUSTOMER_UPDATES: self._input(
                Topic.CUSTOMER_UPDATES, self._update, steps.on_customer_update
            ),
            Topic.IDENTITY: self._identity,
            Topic.STOCK_BROADCAST: self._stock,
        }
        self._bounds = bounds_for(policy, clock.wall_ms())
        self._identity_topic = topics.real(Topic.IDENTITY)

    # --- entry points ---------------------------------------------------------------------
    def apply(
        self,
        partition: int,
        records: Sequence[RecordLike],
        batch: Batch | None = None,
        *,
        align: bool = False,
    ) -> Batch:
        """Apply ``records`` of ``partition`` in event-time order; then tick the partition to
        the clock's new now. See :meth:`apply_steps`."""
        batch = batch if batch is not None else Batch(partition)
        for _ in self.apply_steps(partition, records, batch, align=align):
            pass
        return batch

    def apply_steps(
        self,
        partition: int,
        records: Sequence[RecordLike],
        batch: Batch,
        *,
        align: bool = False,
        waiting: Collection[str] = (),
        stock_until: int | None = None,
        chunk: int = 5000,
    ) -> Iterator[None]:
        """:meth:`apply`, yielding every ``chunk`` records (the async shell gives the event
        loop a turn there).

        Two passes: decode and validate every record (bad ones become dead letters), then
        apply the good ones sorted by event time (stable), so rules that look at "what
        happened next" see the batch as it happened, whatever order the topics were fetched in.

        ``align``: hold back records newer than the *horizon* - the oldest of the newest
        event times of the input topics present in the batch - in ``batch.held`` (not
        applied; the caller offers them again with its next records and acks them only
        then). A fetch can bring months of one topic and weeks of another; aligned, the
        topics advance together, as Kafka Streams does by picking the record with the
        smallest timestamp across a task's partitions. ``waiting`` names input topics (real
        names) that have records still to read but none in this batch: their times are
        unknown, so nothing beyond the partition's clock is applied until they come.

        ``stock_until``: stock arrivals are still on their way to this partition, none of
        them older than this (the caller's bound, see agents/app.py): nothing newer is
        applied yet, so an arrival is matched against the customers as they were at its
        time - a replay or a backlog gives the same audience as live."""
        self._outboxes = None
        if self._trim is not None:  # nothing holds a state here (see streams/store.py)
            self._trim()
        work = _Work(partition, batch, self.context(partition))
        self._bounds = bounds_for(self.policy, self.clock.wall_ms())
        stats = batch.stats
        logical = self.topics.logical
        table = self._table
        ready: list[tuple[int, int, RecordLike, _Ready]] = []
        prepared_before = self._prepared.pop(partition, None) or {}
        for seq, record in enumerate(records):
            if seq and not seq % chunk:
                yield
            known = prepared_before.get(id(record))
            if known is not None and known[0] is record:
                ready.append((known[1].ts, seq, record, known[1]))
                continue
            topic = logical(record.topic)
            label = topic.value if topic is not None else record.topic
            try:
                handler = table.get(topic) if topic is not None else None
                if handler is None:
                    raise Rejected(
                        Stage.PROCESS, Reason.UNKNOWN_TOPIC, f"topic {record.topic!r} is not a customer input"
                    )
                prepared = handler(decode_object(record.value, self.policy.max_value_bytes), work)
                ready.append((prepared.ts, seq, record, prepared))
                continue
            except Rejected as exc:
                self._reject(record, label, exc, batch)
            except Exception as exc:  # a bug must not stop the worker or lose the record
                self._crashed(record, label, exc, batch)
            stats.outcomes[(label, Outcome.DEAD_LETTER.value)] += 1
        ready.sort(key=_ORDER)
        self._take_current_prior(work)  # it may have moved while the decoding yielded
        if not self.clock.started(partition):
            # an event clock before its first event: its now is real time, a placeholder
            # (a replay of history would look years late); the batch starts at its oldest record
            first = next((item[0] for item in ready if item[0] != _FIRST), None)
            if first is not None:
                work.ctx = replace(work.ctx, now_ms=first)
        oldest_held: int | None = None
        if align:
            horizon = _horizon(ready)
            logical = self.topics.logical
            if any((t := logical(name)) is not None and t.value in _ALIGNED for name in waiting):
                # A partition with no time of its own applies nothing until the waiting input
                # is in hand: its oldest record may be newer than that input's first records
                # (clamped at the oldest record, a restart from no commits applied the purchase
                # at offset 0 before the customer's earlier touchpoint: stranger -> customer
                # instead of stranger -> visitor -> customer, fresh-eyes 2026-12-08)
                now = self.clock.now_ms(partition) if self.clock.started(partition) else work.ctx.now_ms - 1
                horizon = now if horizon is None else min(horizon, now)
            if stock_until is not None:
                horizon = stock_until if horizon is None else min(horizon, stock_until)
            if horizon is not None:
                cut = bisect_right(ready, horizon, key=_TS)
                if cut < len(ready):
                    oldest_held = ready[cut][0]
                    batch.held.extend(item[2] for item in ready[cut:])
                    self._prepared[partition] = {id(item[2]): (item[2], item[3]) for item in ready[cut:]}
                del ready[cut:]
        # records in hand but held back are data still to read: the partition's clock (this
        # batch's last tick, and the timer's until the next batch) stays at or before them
        self.clock.pending(partition, oldest_held)
        stats.records += len(records) - len(batch.held)
        # As if live: a deadline that falls between two records fires between them (a tick
        # at the later record's time), so how the records were batched changes nothing.
        deadlines = self.deadlines
        population = self.population
        due_at = deadlines.next_deadline(partition)
        # an arrival must see the audience as of its time: with arrivals in the batch, the
        # stock indexes follow each record (else once, at the end of the batch)
        stock_indexes = self._stock_indexes if any(item[3].label == _BROADCAST for item in ready) else ()
        for n, (ts, _seq, record, prepared) in enumerate(ready):
            if n and not n % chunk:
                yield
                self._take_current_prior(work)
            if due_at is not None and ts >= due_at and ts != _FIRST:
                self.tick(partition, now_ms=ts, batch=batch, base=work.ctx)
                due_at = deadlines.next_deadline(partition)
            work.last = None
            work.ingest_ms = _ingest_ms(record)
            work.record = record
            try:
                outcome = prepared.run(work)
            except Rejected as exc:
                outcome = Outcome.DEAD_LETTER
                self._reject(record, prepared.label, exc, batch)
            except Exception as exc:
                outcome = Outcome.DEAD_LETTER
                self._crashed(record, prepared.label, exc, batch)
            stats.outcomes[(prepared.label, outcome.value)] += 1
            if outcome is Outcome.APPLIED and ts != _FIRST:
                event_ts = stats.event_ts.get(prepared.label)
                if event_ts is None:
                    event_ts = stats.event_ts[prepared.label] = []
                event_ts.append(ts)
            if work.last is not None:  # its next deadline counts from now on
                last_state = self.store.get(work.last)
                deadlines.update(partition, work.last, last_state)
                # and it counts among the buyers now: a deadline firing later in this batch
                # ranks its customer against the population as of that moment (indexed only
                # at the batch's end, a batch spanning months ranked against too few buyers:
                # most "core" tiers of a backlog's alerts were wrong against a batch count)
                population.update(partition, work.last, last_state)
                due_at = deadlines.next_deadline(partition)
                for index in stock_indexes:
                    index.update(partition, work.last, last_state)
        if ready and ready[-1][0] != _FIRST and ready[-1][0] > self._applied_until.get(partition, _FIRST):
            self._applied_until[partition] = ready[-1][0]
        for topic_name, ts in work.newest.items():
            self.clock.observe(partition, topic_name, ts)
        if work.newest:
            self._customer_newest[partition] = self._stream_time(partition, work)
        self._reindex(partition, work.touched, deadlines=False)  # kept current record by record
        batch.changed.update(work.touched)
        self.tick(partition, batch=batch)

    def forget_held(self, partition: int | None = None) -> None:
        """The caller dropped what ``partition`` (None: every partition) held back (a
        rebalance: those records are fetched again as new objects): forget them decoded."""
        if partition is None:
            self._prepared.clear()
        else:
            self._prepared.pop(partition, None)

    def _reject(self, record: RecordLike, label: str, exc: Rejected, batch: Batch) -> None:
        batch.emits.append(self._dead_letter(record, exc))
        batch.stats.dead_letters[(label, exc.stage.value, exc.reason.value)] += 1
        if exc.reason is Reason.DUPLICATE_CONFLICT:
            batch.stats.conflicts[label] += 1

    def _crashed(self, record: RecordLike, label: str, exc: Exception, batch: Batch) -> None:
        # the message and traceback only at debug: they may quote the record (a customer id)
        log_failure(
            log,
            exc,
            "processing %s[%s]@%s",
            record.topic,
            record.partition,
            record.offset,
            then=" (sent to dead-letters; details at debug level)",
        )
        self._reject(
            record, label, Rejected(Stage.PROCESS, Reason.INTERNAL_ERROR, f"internal error: {exc!r}"), batch
        )

    def _advance_funnel(self) -> None:
        """The store funnel keeps the hours from the retention before a lower bound of the
        clock's now on: reports date their hours from ``now_ms()``, which can fall back (a
        test found the 24-hour store gauges empty when the floor followed it)."""
        self.funnel.advance(self.clock.least_now())

    def _take_current_prior(self, work: _Work) -> None:
        """A batch's context takes the worker's current churn prior. Another partition's
        batch or tick may move it while this batch yields; the deadline index always uses
        the current one, so a batch judging with an older prior found due customers "not
        due yet" and put them back at the same past time: 5.9M pops per 100k purchases
        (2026-12-07)."""
        if work.ctx.prior_days != self._prior_days:
            work.ctx = replace(work.ctx, prior_days=self._prior_days)

    def tick(
        self,
        partition: int,
        now_ms: int | None = None,
        batch: Batch | None = None,
        base: Context | None = None,
    ) -> Batch:
        """Apply what the clock alone changed in ``partition`` up to ``now_ms`` (default: the
        clock's now). Cost: the due customers only."""
        self._outboxes = None
        if batch is None:
            batch = Batch(partition)
            if self._trim is not None:  # a tick of its own, not inside a batch: nothing held
                self._trim()
        now = self.clock.now_ms(partition) if now_ms is None else now_ms
        # inside a batch: the batch's context at this time (the prior is refreshed per batch).
        # A due customer is judged with the prior its deadline was indexed with, the current
        # one: judged with an older, longer one it is "not due yet", goes back into the index
        # at the same past time and is popped again at every later record of the batch
        ctx = (
            self.context(partition, now)
            if base is None
            else Context(base.policy, now, base.population, base.model, self._prior_days)
        )
        if base is None:  # a batch's end or the timer's tick, not one between two records
            self._advance_funnel()
        due = self.deadlines.pop_due(partition, now)
        batch.stats.due += len(due)
        touched: dict[str, CustomerState | None] = {}
        for subject in due:
            state = self.store.get(subject)
            if state is None:
                continue
            emits = churn.advance(state, ctx)
            released = gate.release(state, now, self.policy)
            if released.decisions:
                emits.extend(released.emits)
                batch.stats.gate.update(released.decisions)
            closed = uplift.close(state, now)  # windows that ended by now are final
            if emits:
                self._expose(state, emits, ctx, batch)
            if emits or released.changed or closed:
                touched[subject] = state
                self._route(emits, batch)
            else:  # the deadline moved (the prior changed): index it again
                self.deadlines.update(partition, subject, state)
        self._reindex(partition, touched, clock_only=True)
        batch.changed.update(touched)
        return batch

    def _refresh_prior(self, reindex: bool = True) -> None:
        """The churn prior from the live population; when it drifted more than 5 % from the
        one the deadlines were indexed with, index every deadline again (rare once the
        population is warm), ``REPRIOR_SLICE`` customers per batch or tick so the loop is
        never held for the whole table; once that pass is through, none fires more than
        5 % of an interval late. (A deadline indexed too early is harmless: when it is due
        the customer is assessed with the current prior and indexed again.)"""
        floor = self.policy.churn.prior_interval_days
        prior = self.population.median_interval_days(self.policy.churn.prior_min_customers)
        # never below the configured prior: early in a history the customers with enough
        # gaps are the frequent buyers, and a short prior would alarm on everyone else
        self._prior_days = floor if prior is None else max(floor, prior)
        indexed = self._indexed_prior
        if not reindex:
            self._indexed_prior = self._prior_days
            self._reprior = []
        elif abs(self._prior_days - indexed) > PRIOR_DRIFT * indexed:
            self._indexed_prior = self._prior_days
            self._reprior = list(self.store)  # ids only: states are read slice by slice
        if reindex and self._reprior:
            self._reprior_slice(REPRIOR_SLICE)

    def _reprior_slice(self, limit: int) -> None:
        """Index the deadlines of up to ``limit`` customers still waiting for the new prior."""
        todo = self._reprior
        read = getattr(self.store, "peek", self.store.get)  # a cold customer stays cold
        for subject in todo[-limit:]:
            state = read(subject)
            if state is not None:
                self.deadlines.update(self.home_partition(subject), subject, state)
        del todo[-limit:]

    def context(self, partition: int, now_ms: int | None = None) -> Context:
        self._refresh_prior()
        return Context(
            policy=self.policy,
            now_ms=self.clock.now_ms(partition) if now_ms is None else now_ms,
            population=self.population.of(partition),
            model=self.model,
            prior_days=self._prior_days,
        )

    def confirm_sent(self, batch: Batch) -> None:
        """The batch's triggers are acknowledged by the broker: empty those outboxes."""
        for emit in batch.triggers:
            state = self.store.get(emit.key)
            if state is not None:
                state.outbox.clear()

    def pending_outbox(self) -> list[tuple[int, str, list[dict[str, Any]]]]:
        """(partition, subject, triggers) decided but perhaps never sent (after a crash)."""
        out = []
        hint = self._outboxes
        if hint is not None:  # nothing applied since the rebuild, which saw every state
            found: Iterator[tuple[str, CustomerState]] = (
                (s, st) for s in hint if (st := self.store.get(s)) is not None
            )
        else:
            found = states_with(self.store, OUTBOX_MARK)
        for subject, state in found:
            if state.outbox:
                out.append((self.home_partition(subject), subject, list(state.outbox)))
        return out

    def rebuild(self) -> list[str]:
        """Re-derive every index and the clock floor from the store (after assignment).

        One pass, each state read once: with a :class:`~streams.store.StateStore` a cold
        customer is decoded for it and dropped again (it stays cold). Deadlines depend on
        the population's churn prior, known only at the end: the pass keeps each one's
        terms (``churn.deadline_terms``) and they are indexed after it. A value that cannot
        be decoded (corrupt, or a state version this release cannot read) is removed from
        the store and its subject returned (the caller logs it); the rest is rebuilt."""
        for index in self.indexes:
            index.clear()
        store = self.store
        encoded_items = getattr(store, "encoded_items", None)
        items = encoded_items() if encoded_items is not None else store.items()
        decode = CustomerState.from_json
        home = self.home_partition
        population = self.population.update
        others = tuple(
            index.update
            for index in (
                self.risk,
                self.stages,
                self.uplift,
                *self._stock_indexes,
                *self._extra_indexes,
            )
        )
        # the store funnel keeps only hours from the clock's now minus the retention; that now
        # is known after the pass, but a lower bound of it along the way (the clock's
        # least_now_after_restore of the newest event seen), so what lies before that is left
        # out at once (holding it all until the end kept the restart's peak memory as it was)
        funnel_of = self.funnel.contribution_of
        funnels: list[tuple[int, str, tuple[Any, ...]]] = []
        least_now = self.clock.least_now_after_restore
        now_bound = -(2**62)
        keep = self.policy.funnel.retention_ms
        terms_of = self._deadline_terms
        floors: dict[int, int] = {}
        pending: list[tuple[int, str, int | None, churn.DeadlineTerms | None]] = []
        unreadable: list[str] = []
        outboxes: list[str] = []
        for subject, value in items:
            if value.__class__ is bytes:
                try:
                    state = decode(value, False)  # a view to index: no id memories
                except Exception:
                    unreadable.append(subject)
                    continue
            else:
                state = value
            p = home(subject)
            population(p, subject, state)
            last = state.last_event_ms
            if last is not None and last > floors.get(p, -(2**62)):
                floors[p] = last
            for update in others:
                update(p, subject, state)
            if last is not None and (bound := least_now(last)) > now_bound:
                now_bound = bound
            if state.funnel is not None:
                flat = funnel_of(state, now_bound - keep)
                if flat:
                    funnels.append((p, subject, flat))
            if state.outbox:
                outboxes.append(subject)
            fixed, terms = terms_of(state)
            if fixed is not None or terms is not None:
                pending.append((p, subject, fixed, terms))
        self._outboxes = outboxes  # what pending_outbox needs, until something is applied
        self.population.settle()  # the ranks sorted now, not in the first tick after a restart
        for subject in unreadable:
            del store[subject]
            if self.key_partitions is not None:
                self.key_partitions.pop(subject, None)
        self._refresh_prior(reindex=False)  # deadlines depend on the recovered population's prior
        prior = self._prior_days
        deadline_from = self._deadline_from
        self.deadlines.load(
            (p, subject, at)
            for p, subject, fixed, terms in pending
            if (at := deadline_from(fixed, terms, prior)) is not None
        )
        for p, ms in floors.items():
            self.clock.restore(p, ms)
            if ms > self._restored_newest.get(p, _FIRST):
                self._restored_newest[p] = ms
        self._advance_funnel()
        load = self.funnel.load
        for p, subject, flat in funnels:
            load(p, subject, flat)
        return unreadable

    def applied_until(self, partition: int) -> int:
        """The newest event time applied in ``partition`` since start (``-2**63``: none)."""
        return self._applied_until.get(partition, _FIRST)

    def uplift_rows(self) -> list[dict[str, Any]]:
        """Treated vs control per (trigger type, segment, tier), from the kept tallies."""
        return uplift.rows(self.uplift.totals())

    def risk_counts(self) -> dict[Any, int]:
        """Customers per (risk stage or "none", open churn alert) right now."""
        return self.risk.counts()

    def stage_counts(self) -> dict[Any, int]:
        """Subjects per ("known" | "anonymous", lifecycle stage) right now (merged anonymous
        ids and erased strangers not counted, as in the summary)."""
        out: dict[Any, int] = {}
        for cls, n in self.stages.counts().items():
            kind, stage, _base = cast(tuple[str, str, str], cls)
            out[(kind, stage)] = out.get((kind, stage), 0) + n
        return out

    def store_funnel(self, hours: int) -> list[dict[str, Any]]:
        """``/store-funnel`` rows for the ``hours`` hours up to the clock's now (at most the
        funnel retention: older hours may be incomplete), newest hour first."""
        return self.store_funnel_window(hours)[2]

    def store_funnel_window(self, hours: int) -> tuple[int, int, list[dict[str, Any]]]:
        """(first hour's start ms, the clock's now ms, the rows): what ``store_funnel`` answers
        and the window it answered for, read at one clock reading."""
        now_ms = self.clock.now_ms()
        since = self._funnel_since(hours, now_ms)
        return since, now_ms, storefunnel.rows(self.funnel.cells(since), iso_utc)

    def store_totals(self, hours: int) -> dict[str, tuple[int, int, int, int, int]]:
        """Per store over the last ``hours`` hours (the clock's now included): visits,
        visitors, buyers, orders, revenue cents (visitors and buyers summed per hour)."""
        return self.funnel.per_store(self._funnel_since(hours))

    def _funnel_since(self, hours: int, now_ms: int | None = None) -> int:
        hours = max(1, min(hours, self.policy.funnel.retention_ms // storefunnel.HOUR_MS))
        now_ms = self.clock.now_ms() if now_ms is None else now_ms
        return storefunnel.hour_of(now_ms) - (hours - 1) * storefunnel.HOUR_MS

    # --- decode + validate per topic ------------------------------------------------------
    def _purchase(self, obj: dict[str, Any]) -> PurchaseLike:
        ev: PurchaseLike = fast_purchase(obj) or validate_model(Purchase, obj)
        check_ts(self._bounds, ev.ts)
        cap = self.policy.max_amount_cents
        if ev.amount_cents > cap:
            raise Rejected(
                Stage.VALIDATE,
                Reason.AMOUNT_OUT_OF_RANGE,
                f"amount: {_money(ev.amount_cents)} is above PATRONAGE_MAX_AMOUNT ({_money(cap)})",
            )
        for i, it in enumerate(ev.items):
            if it.price * 100 > cap:
                raise Rejected(
                    Stage.VALIDATE,
                    Reason.AMOUNT_OUT_OF_RANGE,
                    f"items.{i}.price: {it.price:.6g} is above PATRONAGE_MAX_AMOUNT ({_money(cap)})",
                )
        return ev

    def _touchpoint(self, obj: dict[str, Any]) -> Any:
        ev = fast_touchpoint(obj) or validate_model(Touchpoint, obj)
        check_ts(self._bounds, ev.ts)
        return ev

    def _update(self, obj: dict[str, Any]) -> Any:
        ev = validate_model(CustomerUpdate, obj)
        check_ts(self._bounds, ev.ts)
        return ev

    def _input(
        self, topic: Topic, decode: Callable[[dict[str, Any]], Any], step: Callable[..., Step]
    ) -> Handler:
        name = topic.value

        def handle(obj: dict[str, Any], work: _Work) -> _Ready:
            ev = decode(obj)
            subject = ev.subject
            if self.partition_of(subject) != work.partition:
                # Keyed differently from the customer id: carry it to the customer's partition.
                def reroute(work: _Work) -> Outcome:
                    hop = identity.redirect_record(subject, topic, obj)
                    self._stamp_origin((hop,), work)
                    work.batch.emits.append(hop)
                    return Outcome.REROUTED

                return _Ready(name, _FIRST, reroute)

            def run(work: _Work) -> Outcome:
                result = step(self.store.get(subject), ev, work.ctx)
                if result.outcome is not Outcome.DUPLICATE and ev.ts > work.newest.get(name, -(2**62)):
                    work.newest[name] = ev.ts
                self._commit(subject, result, work)
                return result.outcome

            return _Ready(name, ev.ts, run)

        return handle

    def _identity(self, obj: dict[str, Any], work: _Work) -> _Ready:
        rec = identity.parse(obj)
        if rec.kind == "event":
            handler = self._table.get(Topic(rec.topic)) if rec.topic in _CUSTOMER_INPUT_NAMES else None
            if handler is None or rec.event is None:
                raise Rejected(
                    Stage.VALIDATE, Reason.INVALID_FIELD, f"identity event record for topic {rec.topic!r}"
                )
            return handler(rec.event, work)  # counted under the event's own topic
        anon, customer, event_id, ts = rec.anon, rec.customer, rec.event_id, rec.ts
        assert anon is not None and customer is not None and event_id is not None and ts is not None

        def run(work: _Work) -> Outcome:
            if rec.kind == "link":
                subject = anon
                result = identity.on_link(self.store.get(subject), anon, customer, event_id, ts)
            else:
                subject = customer
                result = identity.on_merge(
                    self.store.get(subject), customer, anon, rec.snapshot, event_id, ts, work.ctx
                )
            self._commit(subject, result, work)
            return result.outcome

        return _Ready(Topic.IDENTITY.value, ts, run)

    def _stock(self, obj: dict[str, Any], work: _Work) -> _Ready:
        """A broadcast stock arrival: its audience in this partition, each through the gate."""
        ev = validate_model(StockArrival, obj)
        arrival = stocks.Arrival(
            ev.event_id, ev.ts, ev.sku, ev.category, ev.qty, ev.store_id, ev.region, tuple(ev.tags)
        )
        partition = work.partition

        def run(work: _Work) -> Outcome:
            if arrival.store_id is not None and arrival.region is not None:
                stocks.learn_region(self.regions, arrival.store_id, arrival.region, arrival.ts_ms)
            stats = work.batch.stats
            max_age = self.policy.gate.max_arrival_age_days
            if max_age > 0 and arrival.ts_ms < self._stream_time(partition, work) - max_age * DAY_MS:
                stats.stale.append(arrival.event_id)  # not news any more: nobody is told
                return Outcome.APPLIED
            stats.arrivals += 1
            item = arrival.item()
            policy = self.policy
            changed = work.batch.changed
            extra = self._extra_indexes
            for match in stocks.audience(
                partition, arrival, self.store.get, self.interests, self.affinity, self.regions
            ):
                stats.matched[match.reason] += 1
                found = match.interest
                basis: dict[str, Any] = {
                    "category": found.category,
                    "score": found.score,
                    "spend_share": found.spend_share,
                    "occasions_in_window": found.occasions_in_window,
                }
                if match.lift is not None:
                    basis["lift"] = match.lift
                state = match.state
                notify = state.notify
                had_pending = bool(notify and notify["pend"])
                result = gate.offer(
                    match.state,
                    gate.Offer(
                        gate.NEW_STOCK,
                        arrival.event_id,
                        arrival.ts_ms,
                        arrival.category,
                        item,
                        match.reason,
                        basis,
                    ),
                    policy,
                )
                stats.gate.update(result.decisions)
                if result.emits:  # released at once (no coalescing window): measured
                    self._expose(state, result.emits, work.ctx, work.batch)
                    self.uplift.update(partition, match.subject, state)
                if result.changed:
                    # only the gate's memory (and uplift's) changed: the changelog, the
                    # deadline index if a notification or an exposure is (or was) open, the
                    # extra indexes (the page's recent suppressions)
                    changed[match.subject] = state
                    if had_pending or state.notify["pend"] or result.emits:  # type: ignore[index]
                        self.deadlines.update(partition, match.subject, state)
                    for index in extra:
                        index.update(partition, match.subject, state)
                if result.emits:
                    self._route(result.emits, work.batch, work.ingest_ms)
            return Outcome.APPLIED

        return _Ready(Topic.STOCK_BROADCAST.value, ev.ts, run)

    def _stream_time(self, partition: int, work: _Work) -> int:
        """The newest customer event time applied in ``partition`` since start (this batch
        included; before anything is, the newest restored). Stock arrivals are judged "new"
        against it - not against the clock, which is real time before the first event - so
        a replay offers each arrival at its own time. Not against the restored states after
        a restart: they are ahead of the records read again from the committed offsets, and
        arrivals read again among those were offered to nobody as too old (a fresh-eyes run
        lost 33 of 1,481 new-stock triggers to one ``kill -9``)."""
        newest = self._customer_newest.get(partition)
        if newest is None:
            newest = _FIRST if work.newest else self._restored_newest.get(partition, _FIRST)
        for ts in work.newest.values():
            if ts > newest:
                newest = ts
        return newest

    def _next_deadline(self, state: CustomerState) -> int | None:
        """The earliest of the churn deadline, a pending notification's due time and the end
        of an open uplift exposure's window."""
        fixed, terms = self._deadline_terms(state)
        return self._deadline_from(fixed, terms, self._prior_days)

    def _deadline_terms(self, state: CustomerState) -> tuple[int | None, churn.DeadlineTerms | None]:
        """What :meth:`_next_deadline` needs of the state: the earliest time that does not
        depend on the churn prior (a stalled prospect's, a pending notification's due time,
        the end of an open uplift window) and the cadence deadline's terms."""
        terms = churn.deadline_terms(state, self.policy.churn)
        fixed = terms if isinstance(terms, int) else None
        for other in (
            gate.next_due(state) if state.notify else None,
            uplift.next_end(state) if state.uplift else None,
        ):
            if other is not None and (fixed is None or other < fixed):
                fixed = other
        return fixed, (terms if isinstance(terms, tuple) else None)

    def _deadline_from(
        self, fixed: int | None, terms: churn.DeadlineTerms | None, prior_days: float
    ) -> int | None:
        at = churn.deadline_at(terms, prior_days, self.policy.churn)
        if fixed is not None and (at is None or fixed < at):
            at = fixed
        return at

    def _expose(self, state: CustomerState, emits: list[Emit], ctx: Context, batch: Batch) -> None:
        """Record the uplift exposure of each measured trigger just decided for ``state``,
        with the customer's segment and tier at this moment."""
        stats = batch.stats
        for emit in emits:
            value = emit.value
            if value is None:  # a tombstone
                continue
            type_ = value.get("type")
            if emit.topic is not Topic.TRIGGERS or type_ not in uplift.TYPES or emit.key != state.subject:
                continue
            scores = ctx.population.scores(state)
            ts_ms = state.last_triggers[type_][1]  # set with the record, epoch ms
            segment = uplift.NONE if scores is None else scores.segment
            tier = churn.tier(state, ctx) or uplift.NONE
            # the record says which group it is measured in (decided once, kept in the outbox)
            value["details"]["segment"] = segment
            value["details"]["tier"] = tier
            if uplift.expose(state, value, ts_ms, segment, tier, self.policy.uplift):
                stats.exposures[(type_, uplift.group_of(value))] += 1
            else:
                stats.unmeasured[type_] += 1

    # --- bookkeeping ----------------------------------------------------------------------
    def _commit(self, subject: str, step: Step, work: _Work) -> None:
        if step.outcome is not Outcome.DUPLICATE and step.state is not None:
            self.store[subject] = step.state
            if self.key_partitions is not None:
                self.key_partitions[subject] = work.partition
            work.touched[subject] = step.state
            work.last = subject
        if step.beyond_horizon:
            work.batch.stats.beyond_horizon += 1
        if step.emits:
            if step.state is not None and step.outcome is not Outcome.DUPLICATE:
                self._expose(step.state, step.emits, work.ctx, work.batch)
            self._stamp_origin(step.emits, work)
            self._route(step.emits, work.batch, work.ingest_ms)

    def _stamp_origin(self, emits: Sequence[Emit], work: _Work) -> None:
        """Identity hops carry the input record behind them (kept from hop to hop)."""
        record = work.record
        if record is None:
            return
        origin = None
        for emit in emits:
            if emit.topic is Topic.IDENTITY and emit.value is not None:
                if origin is None:
                    origin = self._origin_of(record)
                emit.value["origin"] = origin

    def _origin_of(self, record: RecordLike) -> dict[str, Any]:
        """The input record behind ``record``: itself, or what the identity hop carries."""
        if record.topic == self._identity_topic:
            origin = identity.origin_of(record.value)
            if origin is not None:
                return origin
        return position(record)

    def _route(self, emits: list[Emit], batch: Batch, ingest_ms: int | None = None) -> None:
        stats = batch.stats
        for emit in emits:
            if emit.topic is Topic.TRIGGERS and emit.value is not None:
                batch.triggers.append(emit)
                stats.triggers[(emit.value["type"], emit.value["reason"])] += 1
                if ingest_ms is not None:
                    stats.trigger_ingest.append((emit.value["type"], ingest_ms))
            else:
                if emit.topic is Topic.LIFECYCLE_CHANGES and emit.value is not None:
                    stats.lifecycle[emit.value["to_stage"]] += 1
                batch.emits.append(emit)

    def _reindex(
        self,
        partition: int,
        touched: dict[str, CustomerState | None],
        *,
        clock_only: bool = False,
        deadlines: bool = True,
    ) -> None:
        """Bring the indexes up to date for ``touched``. ``clock_only``: what the clock changed
        (risk, alerts, notifications) - never RFM, so the rank index is left alone (a tick in
        the middle of a batch would otherwise re-rank customers whose purchases the batch's
        end re-indexes anyway, dropping the rank tables every time)."""
        if not touched:
            return
        for index in self.indexes:
            if (clock_only and index is self.population) or (not deadlines and index is self.deadlines):
                continue
            update = index.update
            for subject, state in touched.items():
                update(partition, subject, state)

    def home_partition(self, subject: str) -> int:
        """The partition a subject is held in (the table knows; else the key partitioner)."""
        if self.key_partitions is not None:
            p = self.key_partitions.get(subject)
            if p is not None:
                return p
        return self.partition_of(subject)

    def _dead_letter(self, record: RecordLike, exc: Rejected) -> Emit:
        origin = self._origin_of(record) if record.topic == self._identity_topic else None
        return dead_letter(record, exc, self.clock.wall_ms(), self.policy.dead_letter_max_bytes, origin)


def position(record: RecordLike) -> dict[str, Any]:
    """Where a record was read (the dead letter's and an identity hop's ``origin`` shape)."""
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


def dead_letter(
    record: RecordLike, exc: Rejected, wall_ms: int, max_bytes: int, origin: dict[str, Any] | None = None
) -> Emit:
    """The dead letter for an input record: where it came from, the original bytes (cut to
    ``max_bytes``), the reason code and the detail. Keyed by the original key.

    ``origin``: the input record behind an identity hop (re-routed, or forwarded to a merged
    id's customer): the dead letter names it, and the hop that failed as ``via``."""
    where = position(record)
    via = None
    if origin is not None and origin != where:
        where, via = origin, where
    value = dead_letter_record(
        topic=where["topic"],
        partition=where["partition"],
        offset=where["offset"],
        key=record.key,
        value=record.value,
        reason=exc.reason,
        error=exc.detail,
        stage=exc.stage,
        at=iso_utc(wall_ms) or "",
        max_bytes=max_bytes,
        via=via,
    )
    key = "" if record.key is None else record.key[:1000].decode("utf-8", "replace")
    return Emit(Topic.DEAD_LETTERS, key, value)


_CUSTOMER_INPUT_NAMES = {t.value for t in CUSTOMER_INPUTS}
assert set(EVENT_TIME_INPUTS) <= set(CUSTOMER_INPUTS)


def _ingest_ms(record: Any) -> int | None:
    """A record's Kafka timestamp in epoch ms (aiokafka: int ms; Faust messages: float s)."""
    ts = getattr(record, "timestamp", None)
    if isinstance(ts, float):
        return int(ts * 1000)
    return ts if isinstance(ts, int) and ts > 0 else None


def _stage_class(state: CustomerState, policy: Policy) -> tuple[str, str, str] | None:
    """(known | anonymous, stage, base stage: the stage reached before a risk stage) of a
    subject the summary counts (merged ids and erased strangers are not)."""
    if stage_key(state) is None:
        return None
    base = stage_only(state, policy) if state.stage in RISK_STAGES else state.stage
    return ("anonymous" if state.anonymous else "known", state.stage, base)


def _risk_class(state: CustomerState) -> tuple[str, bool] | None:
    if state.risk is None and state.alert is None:
        return None
    return (state.risk or "none", state.alert is not None)
