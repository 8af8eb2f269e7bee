"""The Faust app: topics, the customers table, agents, HTTP endpoints. Built by a factory
(``create_app``) so nothing connects at import time and tests build their own."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents import kafkaauth, webauth
from agents.batching import BatchingTransport, StopGuard
from agents.brokerwatch import BrokerWatch, quiet_aiokafka_repeats
from agents.clock import make_clock
from agents.delivered import DeliveredTriggers
from agents.metrics import Metrics
from agents.model import ModelLoader
from agents.page import render as render_page
from agents.page import view as page_view
from agents.processor import CustomerProcessor
from agents.projection import RedisProjection
from agents.recovery import BulkChangelog
from agents.settings import Settings
from agents.sink import KafkaSink, Sink
from agents.stallwatch import StallWatch
from agents.stock import StockProcessor, load_store_regions
from schemas.state import CustomerState
from schemas.timestamps import iso_utc
from schemas.topics import CUSTOMER_INPUTS, CUSTOMER_PROCESSOR_INPUTS, INPUTS, Topic, TopicNames
from streams.clock import Clock
from streams.core import Context, log_failure
from streams.page import PageIndexes
from streams.page import at_risk as at_risk_rows
from streams.partitioning import KeyPartitioner, faust_partitioner
from streams.pipeline import CustomerPipeline
from streams.policy import Policy
from streams.profile import build_profile, churn_summary_rows, risk_rows, summarize
from streams.profile import why as why_document
from streams.rfm import segment
from streams.stock import learn_regions
from streams.store import StateStore

log = logging.getLogger(__name__)
# a /metrics scrape sooner than this after the previous one reuses the grid gauges
GAUGES_MIN_INTERVAL_S = 1.0

TABLE_NAME = "customers"
_CLOCK_TOPICS = frozenset((*CUSTOMER_INPUTS, Topic.IDENTITY))


def tune_gc() -> None:
    """The worker holds millions of long-lived objects (customer states) and allocates many
    short-lived ones per event. CPython's default thresholds (700, 10, 10) then spend a
    third of the hot path re-scanning the same states; measured in bench/ (README). Larger
    young-generation thresholds keep collection cost per event low; state has no reference
    cycles, so nothing accumulates."""
    gc.set_threshold(100_000, 50, 100)


class CustomerTable(faust.Table):
    """The ``customers`` table: values are :class:`CustomerState`, changelog is JSON."""

    on_recovered: Any = None

    def __init__(self, *args: Any, changelog_name: str | None = None, **kwargs: Any) -> None:
        self._changelog_name = changelog_name  # Faust's default has no topic prefix
        super().__init__(*args, **kwargs)
        # Keys are customer ids as raw UTF-8, exactly as producers key the input topics,
        # so the changelog partition and Faust's table routing agree with the inputs.
        self.key_serializer = "raw"
        # Values too: recovery decodes each changelog record once, with orjson, in _to_value
        # (Faust's "json" codec went through the stdlib json and its codec registry first)
        self.value_serializer = "raw"

    def _changelog_topic_name(self) -> str:
        return self._changelog_name or super()._changelog_topic_name()

    def clone(self, **kwargs: Any) -> Any:
        return super().clone(changelog_name=self._changelog_name, **kwargs)

    def _to_value(self, v: Any) -> Any:
        if isinstance(v, bytes | bytearray | memoryview):
            return CustomerState.from_json(bytes(v))
        if isinstance(v, dict):
            return CustomerState.from_dict(v)
        return v

    def apply_changelog_records(self, partition: int, records: Sequence[Any]) -> None:
        """Changelog records (aiokafka's, fetched during recovery) into the memory store at
        once, as Faust's ``apply_changelog_batch`` does event by event (agents/recovery.py):
        the last value of a key wins, a tombstone deletes it."""
        data = self.data.data
        key_partition = self.data._key_partition
        # the changelog bytes are kept as they are (cold, streams/store.py): decoded once
        # when the indexes are rebuilt, and again only when the customer is touched
        put = data.put_encoded if isinstance(data, StateStore) else None
        to_value = self._to_value
        for rec in records:
            raw = rec.key
            if raw is None:
                log.warning(
                    "changelog record without a key skipped (partition %d, offset %d)", partition, rec.offset
                )
                continue
            key = raw.decode()
            value = rec.value
            if value is None:
                data.pop(key, None)
                key_partition.pop(key, None)
            else:
                if put is not None:
                    put(key, bytes(value))
                else:
                    data[key] = to_value(value)
                key_partition[key] = partition

    def apply_changelog_batch(self, batch: Any) -> None:
        """Faust's own recovery path (standby partitions, the slow path): the same as the
        bulk path, event by event."""
        for event in batch:
            message = event.message
            self.apply_changelog_records(message.partition, (message,))

    async def on_recovery_completed(self, active_tps: Any, standby_tps: Any) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        if self.on_recovered is not None:
            await self.on_recovered()


@dataclass
class Runtime:
    """Everything one worker holds, wired together (dependencies passed in, not global)."""

    settings: Settings
    policy: Policy
    metrics: Metrics
    clock: Clock
    partitioner: KeyPartitioner
    table: CustomerTable
    pipeline: CustomerPipeline
    processor: CustomerProcessor
    stock: StockProcessor
    topics: TopicNames
    page: PageIndexes
    projection: RedisProjection | None = None
    ready: bool = False
    recoveries: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # faults seen (shown by /healthz): offset regressions followed, per logical topic and
    # the newest one; when the broker was lost (monotonic time; None: connected)
    offset_regressions: dict[str, int] = field(default_factory=dict)
    last_offset_regression: dict[str, Any] | None = None
    broker_lost_since: float | None = None
    # a rebalance in progress: since when the worker waits for the group to hand out the
    # partitions (monotonic; None: it has them); set by GroupWatch
    joining_since: float | None = None
    broker_was_lost: bool = False  # since the last recovery (see rewrite_changelogs)
    _grids_set_at: float = -1e9  # monotonic time the grid gauges were last set

    async def rewrite_changelogs(self) -> None:
        """After the broker was lost and the tables were recovered again: write every state
        held to the changelog again. A broker that lost acknowledged changelog records (noida-db
        on ``kill -9``, see README "Faults") may lack the newest states of customers this worker
        still holds in memory (Faust's memory store overlays the changelog on what it holds);
        re-reading the inputs would not write them again (their events are no-ops by id), so
        the next restart would lose them."""
        self.broker_was_lost = False
        app = self.extra.get("app")
        topic = self.topics.real(Topic.PURCHASES)
        written = 0
        for partition in self.assigned_partitions(app) if app is not None else []:
            written += await self.processor.rewrite_changelog(partition, topic)
        log.warning("the broker was lost: %d customer states written to the changelog again", written)

    def health(self) -> tuple[int, dict[str, Any]]:
        """/healthz: 200 once the tables are recovered and while the broker is reachable;
        503 with a reason otherwise. Offset regressions are reported (processing goes on)."""
        doc: dict[str, Any] = {"ready": self.ready, "subjects": len(self.store)}
        reasons = []
        joining = self.joining_since
        if joining is not None:
            waited = time.monotonic() - joining
            doc["joining_group_s"] = round(waited, 1)
            reasons.append(joining_reason(waited, self.settings))
        elif not self.ready:
            reasons.append("tables not recovered yet")
        lost = self.broker_lost_since
        doc["broker"] = "up" if lost is None else "unreachable"
        if lost is not None:
            away = time.monotonic() - lost
            doc["broker_unreachable_s"] = round(away, 1)
            reasons.append(
                f"broker unreachable for {away:.0f} s (retrying; exit after "
                f"{self.settings.broker_loss_grace_s:.0f} s)"
            )
        if self.offset_regressions:
            doc["offset_regressions"] = dict(self.offset_regressions)
            doc["last_offset_regression"] = self.last_offset_regression
        if reasons:
            doc["reason"] = "; ".join(reasons)
        return (503 if reasons else 200), doc

    @property
    def store(self) -> Mapping[str, CustomerState]:
        """Every customer, for reading (a cold one is decoded and stays cold)."""
        data = self.table.data.data
        return data.reader() if isinstance(data, StateStore) else data

    async def on_recovered(self) -> None:
        # No automatic collection while the recovered state and its indexes are built (the
        # bulk changelog path paused it too): they are all long-lived and hold no cycles,
        # so each young collection only walked a growing heap of survivors. Then they are
        # moved out of the collector's way for good (see tune_gc). No collection before the
        # freeze either: gc.collect(1) walked every object allocated since the last older
        # collection - 26 % of a 100,000-customer restart's main thread (py-spy).
        gc.disable()
        try:
            unreadable = self.pipeline.rebuild()
        finally:
            gc.freeze()
            gc.enable()
        if unreadable:  # no customer ids in logs
            log.error(
                "%d customer state(s) in the changelog could not be read (corrupt, or a newer state "
                "version) and were left out",
                len(unreadable),
            )
        self.recoveries += 1
        await self.load_store_regions()
        try:
            await self.processor.resend_outbox()
        except Exception as exc:  # the next recovery tries again; never block readiness on it
            log_failure(log, exc, "re-sending unconfirmed triggers")
        if self.projection is not None:
            app = self.extra.get("app")
            self.projection.recovered(self.assigned_partitions(app) if app is not None else [])
        if self.broker_was_lost:
            await self.rewrite_changelogs()
        self.ready = True
        self.set_gauges()
        log.info(
            "customers table ready: %d subjects, %d buyers, %d deadlines",
            len(self.store),
            len(self.pipeline.population),
            len(self.pipeline.deadlines),
        )

    async def load_store_regions(self) -> None:
        """The store -> region pairs kept on the store-regions topic into the pipeline's map,
        before any record is applied (agents/stock.py)."""
        loaded = await load_store_regions(self.settings, self.topics.real(Topic.STORE_REGIONS))
        if loaded is None:
            return
        learn_regions(self.stock.regions_sent, loaded)
        added = learn_regions(self.pipeline.regions, loaded)
        log.info("store regions: %d on the topic, %d new to this worker", len(loaded), added)

    def set_gauges_at_most_every(self, seconds: float) -> None:
        """``set_gauges`` for a scrape; the population and store-funnel grids only if they
        were set ``seconds`` ago or longer (they cost their distinct index keys - milliseconds
        at two years of store-funnel hours - on the thread that processes the records: a
        client polling /metrics many times a second must not slow processing; Prometheus
        scrapes every 15 s). The other gauges are always current."""
        now = time.monotonic()
        grids = now - self._grids_set_at >= seconds
        if grids:
            self._grids_set_at = now
        self.set_gauges(grids=grids)

    def set_gauges(self, grids: bool = True) -> None:
        """The scrape-time gauges, from the pipeline's incremental indexes (no walk over the
        customers): subjects per kind and stage, the RFM grid, segments and tiers, risk, the
        store funnel, uplift, the Redis projection. ``grids``: the population and store-funnel
        gauges too (the R x F grid and the funnel cost their distinct keys; the rest is O(1))."""
        pipeline = self.pipeline
        population = pipeline.population
        if grids:
            self.metrics.set_population(
                pipeline.stage_counts(),
                population.rf_grid(),
                {(r, f): segment(r, f) for r in range(1, 6) for f in range(1, 6)},
                len(population),
                population.core_count(self.policy.churn.core_share),
            )
            self.metrics.set_stores(pipeline.store_totals(self.metrics.store_hours))
        counts = self.pipeline.risk_counts()
        for stage in ("at_risk", "lapsed", "lost", "none"):
            for alerted in (True, False):
                self.metrics.at_risk.labels(stage, str(alerted).lower()).set(counts.get((stage, alerted), 0))
        self.metrics.model_loaded.set(0 if self.pipeline.model is None else 1)
        if self.projection is not None:
            self.metrics.projection_lag.set(round(self.projection.lag_seconds(), 3))
            self.metrics.projection_pending.set(self.projection.backlog())
        self.metrics.set_uplift(self.pipeline.uplift.totals())

    def uplift(self) -> list[dict[str, Any]]:
        """Treated vs control per (trigger type, RFM segment, tier) over this worker's
        partitions: counts, rates, uplift and its 95 % interval (streams/uplift.py)."""
        return self.pipeline.uplift_rows()

    async def handle_batch(
        self,
        partition: int,
        records: Sequence[Any],
        align: bool = False,
        waiting: Sequence[str] = (),
        bounded: bool = True,
    ) -> Any:
        """The fast path's handler for one partition's records: stock arrivals are broadcast
        first (acked before their offsets are), then the customer records are applied -
        holding back those newer than the newest arrival applied here while arrivals are
        still on their way (see CustomerPipeline.apply_steps ``stock_until``); ``bounded``
        False: not those (the hold overflowed), only the inputs in hand aligned."""
        stock_name = self.topics.real(Topic.STOCK_ARRIVALS)
        stock = [r for r in records if r.topic == stock_name]
        if stock:
            await self.stock.handle(stock)
            records = [r for r in records if r.topic != stock_name]
        # not bounded: the partition's hold overflowed (see BatchingConsumer._handle_and_ack)
        until = self.stock_until(partition, records) if bounded else None
        return await self.processor.handle(partition, records, align, waiting, stock_until=until)

    def stock_until(self, partition: int, records: Sequence[Any]) -> int | None:
        """How far ``partition``'s customer records may be applied while stock arrivals are
        still on their way (None: none are). Arrivals come per stock partition in time order,
        so one not broadcast yet is no older than the newest already broadcast from its
        partition; broadcast records not read yet here (beyond this batch, or written by this
        worker and not fetched back yet) may be of any time, so then nothing newer than what
        the partition has applied goes. Stock partitions another worker reads are not seen."""
        consumer = self.extra.get("consumer")
        remaining = getattr(consumer, "remaining", None)
        if remaining is None:
            return None
        stock_name = self.topics.real(Topic.STOCK_ARRIVALS)
        broadcast = self.topics.real(Topic.STOCK_BROADCAST)
        seen = max((r.offset for r in records if r.topic == broadcast), default=None)
        try:
            assignment = consumer.assignment()
        except Exception:
            return None
        bound: int | None = None
        unread = False
        for tp in assignment:
            if tp.topic == stock_name and remaining(tp) > 0:
                newest = self.stock.newest.get(tp.partition, -(2**62))
                bound = newest if bound is None else min(bound, newest)
            elif tp.topic == broadcast and tp.partition == partition:
                sent = self.stock.sent_offsets.get(partition)
                read = consumer.read_position(tp)
                last = max(-1 if read is None else read, -1 if seen is None else seen)
                unread = remaining(tp, seen) > 0 or (sent is not None and last < sent)
        if unread:
            applied = self.pipeline.applied_until(partition)
            bound = applied if bound is None else min(bound, applied)
        return bound

    def partition_of(self, customer_id: str) -> int:
        return self.pipeline.home_partition(customer_id)

    def contexts(self) -> Callable[[str], Context]:
        """subject -> its partition's context, each partition's built once (for one read of
        many customers: the page, the summary)."""
        built: dict[int, Context] = {}

        def context_of(subject: str) -> Context:
            p = self.partition_of(subject)
            ctx = built.get(p)
            if ctx is None:
                ctx = built[p] = self.pipeline.context(p)
            return ctx

        return context_of

    def profile(self, customer_id: str) -> dict[str, Any] | None:
        state = self.store.get(customer_id)
        if state is None or (state.erased_ms is not None and not state.frequency and not state.touch_counts):
            return None
        partition = self.partition_of(customer_id)
        ctx = self.pipeline.context(partition)
        return build_profile(state, ctx, self.clock.name)

    def why(self, customer_id: str, category: str) -> dict[str, Any]:
        state = self.store.get(customer_id)
        ctx = self.pipeline.context(self.partition_of(customer_id))
        return why_document(state, customer_id, category, ctx, self.pipeline.regions)

    def summary(self) -> dict[str, Any]:
        out = summarize(self.store.values(), self.pipeline.population)
        out["as_of"] = iso_utc(self.clock.now_ms())
        pending = overdue = 0
        for subject, state in self.store.items():
            if state.notify and state.notify.get("pend"):
                now = self.clock.now_ms(self.partition_of(subject))
                for p in state.notify["pend"].values():
                    pending += 1
                    overdue += p["due"] <= now
        out["notifications"] = {"pending": pending, "overdue": overdue}
        out["at_risk"] = risk_rows(self.pipeline.risk_counts())
        # who the page and Redis' at_risk:<store> sets list (valued in a risk stage, or an
        # open alert): the rows above count every customer in a risk stage, valued or not
        out["at_risk_listed"] = at_risk_rows(
            self.pipeline.risk.members(), self.store, self.contexts(), store=None, limit=0
        )["matched"]
        app = self.extra.get("app")
        # every count above is of this worker's partitions only
        out["partitions"] = self.assigned_partitions(app) if app is not None else []
        out["partitions_total"] = self.settings.partitions
        return out

    def store_funnel(self, hours: int = 24) -> list[dict[str, Any]]:
        """Per store and hour (newest first) for the last ``hours`` hours on the clock: visits,
        visitors, buyers, conversion, orders, revenue, avg_basket (streams/storefunnel.py)."""
        return self.pipeline.store_funnel(hours)

    def assigned_partitions(self, app: faust.App) -> list[int]:
        purchases = self.topics.real(Topic.PURCHASES)
        try:
            assignment = app.consumer.assignment()
        except Exception:
            return []
        return sorted(tp.partition for tp in assignment if tp.topic == purchases)


class PatronageApp(faust.App):
    runtime: Runtime
    empty_fetch_backoff_ms: float = 5.0
    hold_max_records: int = 100_000
    hold_wait_s: float = 300.0
    pausable_topics: frozenset[str] = frozenset()
    stall_log_ms: float = 0.0
    # changelog records of partitions being recovered, applied per fetch (agents/recovery.py)
    bulk_changelog: BulkChangelog | None = None

    async def on_start(self) -> None:
        await super().on_start()
        # from the very start (an app.task would begin only once the app is fully started,
        # which waits for the broker): says so when the broker is lost, exits after the grace
        watch = self.runtime.extra.get("broker_watch") if hasattr(self, "runtime") else None
        if watch is not None:
            self.add_future(watch.run())
        if self.stall_log_ms > 0:  # PATRONAGE_STALL_LOG_MS: where the loop is held (latency)
            self.add_future(StallWatch(self.stall_log_ms).beat())

    def _new_transport(self) -> Any:
        return BatchingTransport(self.conf.broker_consumer, self)

    def observe_backlog(self, topic: str, partition: int, records: int) -> None:
        """The batching consumer's report: records of an input still to be applied."""
        logical = self.runtime.topics.logical(topic)
        if logical in _CLOCK_TOPICS:  # stock arrivals and their broadcast hold no clock back
            self.runtime.clock.backlog(partition, logical.value, records)

    def batch_applying(self, partition: int) -> bool:
        """The batching consumer's question at a stop: is ``partition``'s batch still applying
        records in memory (nothing of it written yet)?"""
        return hasattr(self, "runtime") and partition in self.runtime.processor.applying

    def forget_held(self) -> None:
        """The batching consumer dropped every held record (a rebalance): the pipeline
        forgets them decoded (they are fetched again, as new records)."""
        if hasattr(self, "runtime"):
            self.runtime.pipeline.forget_held()

    async def on_offset_regression(
        self, topic: str, partition: int, read: int, now: int, high: int | None, batch: bool
    ) -> None:
        """The batching consumer followed a partition whose log went back below what it had
        read (see BatchingConsumer._follow_regression): count it, show it in /healthz, and
        write that partition's states to the changelog again (the broker may have lost the
        newest of them as well)."""
        rt = self.runtime
        known = rt.topics.logical(topic)
        logical = topic if known is None else known.value
        rt.metrics.offset_regressions.labels(logical).inc()
        rt.offset_regressions[logical] = rt.offset_regressions.get(logical, 0) + 1
        rt.last_offset_regression = {
            "topic": logical,
            "partition": partition,
            "read_offset": read,
            "resumed_at": now,
            "log_end": high,
            "at": iso_utc(int(time.time() * 1000)),
        }
        if batch and known in CUSTOMER_PROCESSOR_INPUTS:
            written = await rt.processor.rewrite_changelog(partition, topic)
            log.warning(
                "partition %d: %d customer states written to the changelog again after the regression",
                partition,
                written,
            )

    def batch_dispatch(self) -> tuple[Sequence[str], Any]:
        rt = self.runtime
        if not rt.settings.fast_path:
            return (), None
        rt.extra["consumer"] = self.consumer
        topics = [rt.topics.real(t) for t in (*CUSTOMER_PROCESSOR_INPUTS, Topic.STOCK_ARRIVALS)]
        return topics, rt.handle_batch


def create_app(
    settings: Settings, *, sink: Sink | None = None, metrics: Metrics | None = None
) -> PatronageApp:
    """Build the worker app. ``sink`` defaults to the app's own Kafka producer."""
    tune_gc()
    topics = settings.topics
    assert topics.real(Topic.CHANGELOG) == f"{settings.topic_prefix}{settings.app_id}-{TABLE_NAME}-changelog"
    app = PatronageApp(
        settings.app_id,
        broker=settings.broker,
        # PATRONAGE_KAFKA_* (agents/kafkaauth.py): SASL and/or TLS, None for plaintext
        broker_credentials=kafkaauth.faust_credentials(settings),
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        key_serializer="raw",
        value_serializer="raw",
        processing_guarantee="at_least_once",
        table_standby_replicas=0,
        broker_commit_interval=1.0,
        broker_max_poll_records=settings.batch_max_records,
        # bigger fetches -> bigger batches -> fewer changelog writes per event (coalescing)
        consumer_max_fetch_size=4 * 1024 * 1024,
        # big producer batches: a batch cycle writes thousands of changelog records and
        # triggers per partition; 16 KB batches made that a round trip per ~20 records
        producer_max_batch_size=900_000,
        producer_max_request_size=1_000_000,
        # table routing (which worker holds a key) partitions keys as the producers do
        producer_partitioner=faust_partitioner(settings.key_partitioner),
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=True,
        web_enabled=True,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        # PATRONAGE_WEB_TOKEN: every endpoint but /healthz needs it (agents/webauth.py)
        web_application_options={"middlewares": webauth.middlewares(settings.web_token)},
        canonical_url=settings.advertised_url,
        datadir=settings.data_dir,
        broker_session_timeout=settings.session_timeout_s,
        consumer_group_instance_id=settings.instance_id or None,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 4),
        broker_rebalance_timeout=max(20.0, settings.session_timeout_s * 2),
        worker_redirect_stdouts=False,
    )
    metrics = metrics or Metrics(
        max_stores=settings.metrics_max_stores, store_hours=settings.metrics_store_hours
    )
    policy = settings.policy()
    clock = make_clock(
        settings.clock,
        settings.allowed_lateness_s,
        settings.event_clock_idle_s,
        settings.event_clock_max_ahead_s,
    )
    partitioner = KeyPartitioner(
        {name: settings.partitions for name in topics.all()}, kind=settings.key_partitioner
    )
    identity_topic = topics.real(Topic.IDENTITY)

    table = CustomerTable(
        app,
        name=TABLE_NAME,
        default=None,
        beacon=app.tables.beacon,
        partitions=settings.partitions,
        key_type=str,
        help="per-customer RFM, lifecycle, churn, identity and id memory",
        changelog_name=topics.real(Topic.CHANGELOG),
    )
    app.tables.add(table)
    # dense customer states: PATRONAGE_HOT_STATES decoded, the rest as changelog bytes
    states = StateStore(settings.hot_states)
    table.data.data = states
    sink = sink or KafkaSink(lambda: app.producer._ensure_producer())
    page_indexes = PageIndexes(settings.page_recent)
    pipeline = CustomerPipeline(
        policy=policy,
        store=states,
        clock=clock,
        topics=topics,
        partition_of=lambda subject: partitioner(identity_topic, subject),
        key_partitions=table.data._key_partition,
        extra_indexes=page_indexes.all(),
    )
    processor = CustomerProcessor(
        pipeline=pipeline,
        sink=sink,
        topics=topics,
        partition_for=partitioner,
        metrics=metrics,
        delivered=DeliveredTriggers(
            settings.bootstrap_servers,
            topics.real(Topic.TRIGGERS),
            f"{settings.app_id}-trigger-reader",
            options=kafkaauth.aiokafka_options(settings),
        ),
    )
    stock = StockProcessor(
        sink=sink,
        topics=topics,
        partition_for=partitioner,
        policy=policy,
        clock=clock,
        partitions=settings.partitions,
        metrics=metrics,
    )
    runtime = Runtime(
        settings=settings,
        policy=policy,
        metrics=metrics,
        clock=clock,
        partitioner=partitioner,
        table=table,
        pipeline=pipeline,
        processor=processor,
        stock=stock,
        topics=topics,
        page=page_indexes,
    )
    if settings.projection_enabled:
        runtime.projection = RedisProjection(
            settings,
            store=states.reader(),  # reads only: a cold customer stays cold
            partition_of=pipeline.home_partition,
            context=pipeline.context,
            clock_name=clock.name,
            metrics=metrics,
        )
        processor.on_durable = runtime.projection.mark

        @app.task
        async def project_to_redis() -> None:
            """Writes changed customers to Redis (agents/projection.py); never blocks processing."""
            assert runtime.projection is not None
            await runtime.projection.run()

    runtime.extra["app"] = app
    app.bulk_changelog = BulkChangelog(app, topics.real(Topic.CHANGELOG), table.apply_changelog_records)
    table.on_recovered = runtime.on_recovered
    app.runtime = runtime
    app.empty_fetch_backoff_ms = settings.empty_fetch_backoff_ms
    app.hold_max_records = settings.hold_max_records
    app.hold_wait_s = settings.hold_wait_s
    # what the hold's backpressure may pause: the customer inputs, never what a hold waits
    # for (the stock broadcast, identity hops)
    app.pausable_topics = frozenset(topics.real(t) for t in CUSTOMER_INPUTS)
    app.stall_log_ms = settings.stall_log_ms

    customer_topic = app.topic(
        *(topics.real(t) for t in CUSTOMER_PROCESSOR_INPUTS),
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )
    stock_topic = app.topic(
        topics.real(Topic.STOCK_ARRIVALS),
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )

    @app.agent(customer_topic, name="customers")
    async def customers(stream: faust.StreamT) -> None:
        """Slow path (PATRONAGE_FAST_PATH=false, tests): same processor, Faust's batching."""
        async for events in stream.take_events(settings.batch_max_records, within=0.05):
            by_partition: dict[int, list[Any]] = {}
            for event in events:
                by_partition.setdefault(event.message.partition, []).append(event.message)
            for partition, messages in by_partition.items():
                await processor.handle(partition, messages)

    @app.agent(stock_topic, name="stock-arrivals")
    async def stock_arrivals(stream: faust.StreamT) -> None:
        async for events in stream.take_events(1000, within=0.1):
            await stock.handle([e.message for e in events])

    @app.timer(interval=settings.tick_interval_s)
    async def tick() -> None:
        """The clock for absence: each assigned partition pops its due deadlines."""
        if not runtime.ready:
            return
        consumer = app.consumer
        for partition in runtime.assigned_partitions(app):
            if processor.lock(partition).locked():
                # a batch of it is in flight, and a batch ends by ticking its partition to now:
                # waiting for its lock would only hold up the other partitions' ticks (and make
                # the next batch wait behind this tick's writes)
                continue
            try:
                if settings.fast_path and hasattr(consumer, "report_backlog"):
                    consumer.report_backlog(partition)  # a quiet input is idle only when read
                await processor.tick(partition)
            except Exception as exc:
                log_failure(log, exc, "tick of partition %d", partition, then="; trying again next interval")

    loader = ModelLoader(settings, topics.real(Topic.CHURN_MODEL))

    async def load_model() -> None:
        """BG/NBD parameters from the compacted churn-model topic (latest record wins)."""
        model = await loader.latest()
        if model is not None and model != pipeline.model:
            pipeline.model = model
            log.info("churn model loaded: %s (%s, fitted %s)", model.params, model.unit, model.fitted_at)
            if runtime.projection is not None:  # every profile's P(alive) changed
                runtime.projection.refresh_all("a new churn model")
        metrics.model_loaded.set(0 if pipeline.model is None else 1)

    app.timer(interval=settings.churn_model_refresh_s, name="refresh-churn-model")(load_model)
    app.task(load_model)  # once at start, without waiting for the first interval

    @app.timer(interval=5.0)
    async def observe_lag() -> None:
        """Consumer lag per input topic (records fetched-but-unprocessed or not yet fetched)."""
        consumer = app.consumer
        changelog = topics.real(Topic.CHANGELOG)
        lag: dict[str, int] = {}
        for tp in consumer.assignment():
            if tp.topic == changelog or "__assignor" in tp.topic:
                continue
            high = consumer.highwater(tp)
            read = consumer._read_offset.get(tp)
            if high is None or high < 0:
                continue
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, high - ((read + 1) if read is not None else 0))
        # labelled with the logical topic, as patronage_events_total (alerts join the two on
        # topic; the real names carry PATRONAGE_TOPIC_PREFIX)
        for topic in (*INPUTS, Topic.IDENTITY):
            metrics.consumer_lag.labels(topic.value).set(lag.get(topics.real(topic), 0))
        if clock.name == "event":
            metrics.event_clock_lag.set(max(0.0, time.time() - clock.now_ms() / 1000))

    def broker_state(lost_since: float | None, away_s: float) -> None:
        runtime.broker_lost_since = lost_since
        if lost_since is not None:
            runtime.broker_was_lost = True
        metrics.broker_up.set(0 if lost_since is not None else 1)
        metrics.broker_unreachable_seconds.set(away_s)

    app.sensors.add(GroupWatch(runtime))

    @app.task
    async def report_a_long_join() -> None:
        """A join that does not end (noida-db never evicts a member that died without
        PATRONAGE_INSTANCE_ID): one warning a minute saying so, never silence."""
        warned = 0.0
        while not app.should_stop:
            await asyncio.sleep(5.0)
            joining = runtime.joining_since
            if joining is None:
                warned = 0.0
                continue
            waited = time.monotonic() - joining
            if waited >= join_warn_after_s(settings) and time.monotonic() - warned >= 60.0:
                warned = time.monotonic()
                log.warning("%s", joining_reason(waited, settings))

    quiet_aiokafka_repeats()
    watch = BrokerWatch(settings.bootstrap_servers, settings.broker_loss_grace_s, on_change=broker_state)
    runtime.extra["broker_watch"] = watch

    def broker_gone() -> str | None:
        if watch.lost_since is None:
            return None
        return f"the broker is unreachable ({time.monotonic() - watch.lost_since:.0f} s)"

    StopGuard.quick_exit = broker_gone
    metrics.broker_up.set(1)

    for topic in INPUTS:  # series exist from the start (alerts)
        metrics.events.labels(topic.value, "applied").inc(0)
    for topic in (*CUSTOMER_PROCESSOR_INPUTS, Topic.STOCK_ARRIVALS):
        metrics.offset_regressions.labels(topic.value).inc(0)
    _register_web(app, runtime, table)
    return app


def _register_web(app: PatronageApp, runtime: Runtime, table: CustomerTable) -> None:
    from schemas.timestamps import parse_until_ms

    @app.page("/healthz/")
    class Health(View):
        async def get(self, request: Request) -> Response:
            status, doc = runtime.health()
            return self.json(doc, status=status)

    @app.page("/metrics/")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            runtime.set_gauges_at_most_every(GAUGES_MIN_INTERVAL_S)
            body = generate_latest(runtime.metrics.registry)
            return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    # the same pages without the trailing slash (scrapers and people type both)
    app.page("/healthz")(Health)
    app.page("/metrics")(MetricsView)

    @app.page("/summary/")
    class Summary(View):
        async def get(self, request: Request) -> Response:
            return self.json(runtime.summary())

    def routed_or_503(view: Any) -> Any:
        """A customer held by another worker that does not answer (stopped, and not yet
        replaced in the group: see README "Faults") gets a 503 saying so, not Faust's 500."""
        import aiohttp

        @functools.wraps(view)
        async def wrapped(web: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
            try:
                return await view(web, request, *args, **kwargs)
            except (aiohttp.ClientError, OSError) as exc:
                return web.json(
                    {
                        "error": "the worker holding this customer's partition does not answer "
                        f"({exc.__class__.__name__}); it may be stopped and not yet replaced in the group"
                    },
                    status=503,
                )

        return wrapped

    @app.page("/profile/{customer_id}/")
    @routed_or_503
    @app.table_route(table=table, match_info="customer_id")
    async def profile(web: Any, request: Request, customer_id: str) -> Response:
        stub = runtime.store.get(customer_id)
        if stub is not None and stub.merged_into is not None:
            # a merged anonymous id: the customer it became (the client follows the redirect,
            # to whichever worker holds that customer)
            from aiohttp import web as aioweb

            target = "/profile/" + urllib.parse.quote(stub.merged_into, safe="") + "/"
            merged_from = urllib.parse.quote(customer_id, safe="")
            raise aioweb.HTTPTemporaryRedirect(target, headers={"X-Patronage-Merged-From": merged_from})
        doc = runtime.profile(customer_id)
        if doc is None:
            return web.json({"error": f"unknown customer {customer_id!r}"}, status=404)
        return web.json(doc)

    @app.page("/why/{customer_id}/")
    @routed_or_503
    @app.table_route(table=table, match_info="customer_id")
    async def why(web: Any, request: Request, customer_id: str) -> Response:
        category = request.query.get("category")
        if not category:
            return web.json({"error": "add ?category=<category>"}, status=400)
        return web.json(runtime.why(customer_id, category))

    @app.page("/store-funnel/")
    class StoreFunnel(View):
        """{"rows": [...]}: per store and hour, newest first; ?hours=N (default 24, at most
        PATRONAGE_FUNNEL_RETENTION_H). This worker's partitions."""

        async def get(self, request: Request) -> Response:
            raw = request.query.get("hours", "24")
            if not raw.isdigit() or int(raw) < 1:
                return self.json({"error": f"hours must be a positive integer, got {raw!r}"}, status=400)
            since, now_ms, rows = runtime.pipeline.store_funnel_window(int(raw))
            return self.json({"since": iso_utc(since), "as_of": iso_utc(now_ms), "rows": rows})

    @app.page("/uplift/")
    class Uplift(View):
        """Treated vs control per trigger type x segment x tier (this worker's partitions)."""

        async def get(self, request: Request) -> Response:
            return self.json({"rows": runtime.uplift(), "window_days": runtime.policy.uplift.window_days})

    # without the trailing slash too (the same views)
    app.page("/store-funnel")(StoreFunnel)
    app.page("/summary")(Summary)
    app.page("/uplift")(Uplift)
    app.page("/profile/{customer_id}")(profile)
    app.page("/why/{customer_id}")(why)

    class Page(View):
        """The page for the people who act (agents/page.py); ?store=S filters the at-risk list."""

        async def get(self, request: Request) -> Response:
            store = request.query.get("store") or None
            doc = page_view(runtime, runtime.assigned_partitions(app), store)
            return self.html(render_page(doc, store))  # text/html; charset=utf-8

    for path in ("/", "/page", "/page/"):
        app.page(path)(Page)

    @app.page("/churn-model/summary/")
    class ChurnSummary(View):
        """(x, t_x, T, customers) rows for fitting BG/NBD from the live table (this worker's
        partitions), as of ?until=<date (its end), ISO or epoch ms> (default: the clock's now)."""

        async def get(self, request: Request) -> Response:
            unit = request.query.get("unit", "days")
            until_raw = request.query.get("until")
            try:
                until = runtime.clock.now_ms() if until_raw is None else parse_until_ms(until_raw)
                rows = churn_summary_rows(runtime.store.values(), until, unit)
            except ValueError as exc:
                return self.json({"error": str(exc)}, status=400)
            return self.json({"unit": unit, "until": until, "rows": rows})


class GroupWatch(faust.Sensor):
    """Marks the time a worker waits for the consumer group's assignment (Faust's rebalance
    start to the assignment's return), for /healthz and a warning when it does not end."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime

    def on_rebalance_start(self, app: Any) -> dict[str, Any]:
        if self.runtime.joining_since is None:
            self.runtime.joining_since = time.monotonic()
        return super().on_rebalance_start(app)

    def on_rebalance_return(self, app: Any, state: dict[str, Any]) -> None:
        self.runtime.joining_since = None

    def on_rebalance_end(self, app: Any, state: dict[str, Any]) -> None:
        self.runtime.joining_since = None


def join_warn_after_s(settings: Settings) -> float:
    """A join longer than the rebalance timeout (twice the session timeout, at least 20 s)
    plus a session timeout is not a normal rebalance any more."""
    return max(20.0, settings.session_timeout_s * 2) + settings.session_timeout_s


def joining_reason(waited_s: float, settings: Settings) -> str:
    """/healthz's and the log's words for a worker still waiting for its partitions."""
    reason = f"joining the consumer group: no partitions assigned yet ({waited_s:.0f} s)"
    if waited_s >= join_warn_after_s(settings) and not settings.instance_id:
        reason += (
            "; a worker that was killed (kill -9) without PATRONAGE_INSTANCE_ID may still be a "
            "member: real Kafka drops it after PATRONAGE_SESSION_TIMEOUT_S, noida-db never does "
            "(restart the broker, or give each worker a PATRONAGE_INSTANCE_ID; see README Faults)"
        )
    return reason
