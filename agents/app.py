"""The Faust app: topics, the customers table, agents, HTTP endpoints. Built by a factory
(``create_app``) so nothing connects at import time and tests build their own."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.partitioner import murmur2
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.batching import BatchingTransport
from agents.clock import Clock, make_clock
from agents.metrics import Metrics
from agents.processor import CUSTOMER_INPUTS, IDENTITY, CustomerProcessor
from agents.settings import Settings
from agents.sink import KafkaSink, Sink
from agents.stock import StockProcessor
from schemas.state import CustomerState
from streams.policy import Policy
from streams.population import Population
from streams.profile import build_profile, summarize

log = logging.getLogger(__name__)

OUTPUT_TOPICS = ("triggers", "lifecycle-changes", "dead-letters")
INPUT_TOPICS = ("purchases", "touchpoints", "stock-arrivals", "customer-updates")
TABLE_NAME = "customers"


def tune_gc() -> None:
    """The worker holds millions of long-lived objects (customer states) and allocates many
    short-lived ones per event. CPython's default thresholds (700, 10, 10) then spend a
    third of the hot path re-scanning the same states; measured in bench/ (README). Larger
    young-generation thresholds keep collection cost per event low; state has no reference
    cycles, so nothing accumulates."""
    gc.set_threshold(100_000, 50, 100)


class KeyPartitioner:
    """The Java client's / aiokafka's default partitioner (murmur2), with a hash cache."""

    def __init__(self, partitions: dict[str, int], cache_size: int = 2_000_000) -> None:
        self.partitions = partitions
        self._hashes: dict[str, int] = {}
        self._cache_size = cache_size

    def __call__(self, topic: str, key: str) -> int:
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= self._cache_size:
                self._hashes.clear()
            h = self._hashes[key] = murmur2(key.encode()) & 0x7FFFFFFF
        return h % self.partitions[topic]


class CustomerTable(faust.Table):
    """The ``customers`` table: values are :class:`CustomerState`, changelog is JSON."""

    on_recovered: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Keys are customer ids as raw UTF-8, exactly as producers key the input topics,
        # so the changelog partition and Faust's table routing agree with the inputs.
        self.key_serializer = "raw"

    def _to_value(self, v: Any) -> Any:
        if isinstance(v, dict):
            return CustomerState.from_dict(v)
        return v

    async def on_recovery_completed(self, active_tps: Any, standby_tps: Any) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        if self.on_recovered is not None:
            self.on_recovered()


@dataclass
class Runtime:
    """Everything one worker holds, wired together (dependencies passed in, not global)."""

    settings: Settings
    policy: Policy
    metrics: Metrics
    clock: Clock
    population: Population
    partitioner: KeyPartitioner
    table: CustomerTable
    processor: CustomerProcessor
    stock: StockProcessor
    topic_names: dict[str, str]
    ready: bool = False
    recoveries: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def store(self) -> dict[str, CustomerState]:
        return self.table.data.data  # the memory store's plain dict

    def on_recovered(self) -> None:
        self.processor.rebuild()
        # Recovered state is long-lived: move it out of the collector's way (see tune_gc).
        gc.collect()
        gc.freeze()
        self.recoveries += 1
        self.ready = True
        self.set_customer_gauges()
        log.info("customers table ready: %d subjects, %d buyers", len(self.store), len(self.population))

    def set_customer_gauges(self) -> None:
        """``patronage_customers{kind}``: known and anonymous subjects (merged ids excluded)."""
        known = anonymous = 0
        for s in self.store.values():
            if s.merged_into is None:
                if s.anonymous:
                    anonymous += 1
                else:
                    known += 1
        self.metrics.customers.labels("known").set(known)
        self.metrics.customers.labels("anonymous").set(anonymous)

    def profile(self, customer_id: str) -> dict[str, Any] | None:
        state = self.store.get(customer_id)
        if state is None or (state.erased_ms is not None and not state.frequency and not state.touch_counts):
            return None
        return build_profile(state, self.population, self.clock.now_ms(), self.policy, self.clock.name)

    def summary(self) -> dict[str, Any]:
        out = summarize(self.store.values(), self.population)
        out["as_of"] = self.clock.now_ms()
        return out


class PatronageApp(faust.App):
    runtime: Runtime
    empty_fetch_backoff_ms: float = 0.0

    def _new_transport(self) -> Any:
        return BatchingTransport(self.conf.broker_consumer, self)

    def batch_dispatch(self) -> tuple[Sequence[str], Any]:
        rt = self.runtime
        if not rt.settings.fast_path:
            return (), None
        names = [rt.topic_names[t] for t in (*CUSTOMER_INPUTS, IDENTITY)]
        return names, rt.processor.handle


def topic_names(settings: Settings) -> dict[str, str]:
    names = {t: settings.topic(t) for t in (*INPUT_TOPICS, *OUTPUT_TOPICS)}
    names[IDENTITY] = settings.internal_topic("identity")
    names["changelog"] = f"{settings.app_id}-{TABLE_NAME}-changelog"
    return names


def create_app(
    settings: Settings, *, sink: Sink | None = None, metrics: Metrics | None = None
) -> PatronageApp:
    """Build the worker app. ``sink`` defaults to the app's own Kafka producer."""
    tune_gc()
    names = topic_names(settings)
    app = PatronageApp(
        settings.app_id,
        broker=settings.broker,
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
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=True,
        web_enabled=True,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        canonical_url=settings.advertised_url,
        datadir=settings.data_dir,
        broker_session_timeout=settings.session_timeout_s,
        consumer_group_instance_id=settings.instance_id or None,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 4),
        broker_rebalance_timeout=max(20.0, settings.session_timeout_s * 2),
        worker_redirect_stdouts=False,
    )
    metrics = metrics or Metrics()
    policy = settings.policy()
    clock = make_clock(settings.clock, settings.allowed_lateness_s)
    population = Population()
    partitions = {name: settings.partitions for name in names.values()}
    partitioner = KeyPartitioner(partitions)

    table = CustomerTable(
        app,
        name=TABLE_NAME,
        default=None,
        beacon=app.tables.beacon,
        partitions=settings.partitions,
        key_type=str,
        help="per-customer RFM, lifecycle, identity and id memory",
    )
    app.tables.add(table)
    sink = sink or KafkaSink(lambda: app.producer._ensure_producer())
    processor = CustomerProcessor(
        policy=policy,
        store=table.data.data,
        population=population,
        clock=clock,
        sink=sink,
        topic_names=names,
        partition_for=partitioner,
        key_partitions=table.data._key_partition,
        metrics=metrics,
    )
    stock = StockProcessor(sink=sink, topic_names=names, partition_for=partitioner, metrics=metrics)
    runtime = Runtime(
        settings=settings,
        policy=policy,
        metrics=metrics,
        clock=clock,
        population=population,
        partitioner=partitioner,
        table=table,
        processor=processor,
        stock=stock,
        topic_names=names,
    )
    table.on_recovered = runtime.on_recovered
    app.runtime = runtime
    app.empty_fetch_backoff_ms = settings.empty_fetch_backoff_ms

    customer_topic = app.topic(
        *(names[t] for t in CUSTOMER_INPUTS),
        names[IDENTITY],
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )
    stock_topic = app.topic(
        names["stock-arrivals"], key_serializer="raw", value_serializer="raw", partitions=settings.partitions
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

    @app.timer(interval=5.0)
    async def observe_lag() -> None:
        """Consumer lag per input topic (records fetched-but-unprocessed or not yet fetched)."""
        consumer = app.consumer
        lag: dict[str, int] = {}
        for tp in consumer.assignment():
            if tp.topic == names["changelog"] or "__assignor" in tp.topic:
                continue
            high = consumer.highwater(tp)
            read = consumer._read_offset.get(tp)
            if high is None or high < 0:
                continue
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, high - ((read + 1) if read is not None else 0))
        for name in (*(names[t] for t in INPUT_TOPICS), names[IDENTITY]):
            metrics.consumer_lag.labels(name).set(lag.get(name, 0))
        if clock.name == "event":
            metrics.event_clock_lag.set(max(0.0, time.time() - clock.now_ms() / 1000))

    for name in (*CUSTOMER_INPUTS, "stock-arrivals"):  # series exist from the start (alerts)
        metrics.events.labels(name, "applied").inc(0)
    _register_web(app, runtime, table)
    return app


def _register_web(app: PatronageApp, runtime: Runtime, table: CustomerTable) -> None:
    @app.page("/healthz/")
    class Health(View):
        async def get(self, request: Request) -> Response:
            status = 200 if runtime.ready else 503
            return self.json({"ready": runtime.ready, "subjects": len(runtime.store)}, status=status)

    @app.page("/metrics/")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            runtime.set_customer_gauges()
            body = generate_latest(runtime.metrics.registry)
            return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/summary/")
    class Summary(View):
        async def get(self, request: Request) -> Response:
            return self.json(runtime.summary())

    @app.page("/profile/{customer_id}/")
    @app.table_route(table=table, match_info="customer_id")
    async def profile(web: Any, request: Request, customer_id: str) -> Response:
        doc = runtime.profile(customer_id)
        if doc is None:
            return web.json({"error": f"unknown customer {customer_id!r}"}, status=404)
        return web.json(doc)
