"""Stock arrivals: validated, then broadcast to every partition of the internal
``stock-broadcast`` topic, where each customer partition matches the arrival against its own
interest index and gates it with each customer's own state (streams/stock.py,
streams/gate.py). Invalid records go to dead-letters like every other input.

The broadcast is sent (and acknowledged) before the input offsets are committed: a crash
re-broadcasts, and the per-customer memory of handled arrivals makes that a no-op.

An arrival naming both a store and a region teaches every partition that store's region
(for arrivals naming only a region, from that arrival's event time on). The earliest naming
per store also goes, with the broadcast, to the compacted ``<app_id>-store-regions`` topic, which a worker reads whole after every
recovery, before it applies a record (``load_store_regions``): the map learned in memory
alone was gone after a restart, and region-only arrivals read again then reached nobody
(5-9 of 2,145 new-stock triggers lost to one SIGTERM in a backlog, 2026-12-08).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.kafkaauth import aiokafka_options
from agents.metrics import Metrics
from agents.settings import Settings
from agents.sink import OutRecord, Sink, encode, send_dead_letters
from schemas.errors import Rejected
from schemas.events import StockArrival
from schemas.topics import Topic, TopicNames
from streams.clock import Clock
from streams.pipeline import bounds_for, check_ts, dead_letter, decode_object, validate_model
from streams.policy import Policy
from streams.stock import (
    Arrival,
    Regions,
    learn_region,
    learn_regions,
    names_earlier,
    parse_region_record,
    region_record,
)

log = logging.getLogger(__name__)


class StockProcessor:
    def __init__(
        self,
        *,
        sink: Sink,
        topics: TopicNames,
        partition_for: Callable[[str, str], int],
        policy: Policy,
        clock: Clock,
        partitions: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.sink = sink
        self.topics = topics
        self.partition_for = partition_for
        self.policy = policy
        self.clock = clock
        self.partitions = partitions
        self.metrics = metrics
        self.accepted = 0
        self._broadcast = topics.real(Topic.STOCK_BROADCAST)
        # stock-arrivals partition -> newest arrival time broadcast from it (this process)
        self.newest: dict[int, int] = {}
        # broadcast partition -> offset of the last record this process wrote there
        self.sent_offsets: dict[int, int] = {}
        self._regions_topic = topics.real(Topic.STORE_REGIONS)
        # store -> (region, time) of the earliest naming on the store-regions topic (written by
        # this process, or loaded at start): a record is written when an arrival names a store
        # earlier than that (the last record of a store is then the earliest this writer knew)
        self.regions_sent: Regions = {}

    def validate(self, record: Any) -> StockArrival:
        event = validate_model(StockArrival, decode_object(record.value, self.policy.max_value_bytes))
        check_ts(bounds_for(self.policy, self.clock.wall_ms()), event.ts)
        return event

    def broadcast(self, event: StockArrival) -> list[OutRecord]:
        """The arrival, once per customer partition (epoch-ms times, keyed by category)."""
        value = orjson.dumps(
            Arrival(
                event.event_id,
                event.ts,
                event.sku,
                event.category,
                event.qty,
                event.store_id,
                event.region,
                tuple(event.tags),
            ).to_json()
        )
        key = event.category.encode()
        return [OutRecord(self._broadcast, p, key, value) for p in range(self.partitions)]

    def region_record(self, store: str, region: str, ts_ms: int) -> OutRecord:
        """``store``'s region as an arrival at ``ts_ms`` named it, for the store-regions topic."""
        value = orjson.dumps(region_record(store, region, ts_ms))
        return OutRecord(
            self._regions_topic, self.partition_for(self._regions_topic, store), store.encode(), value
        )

    async def handle(self, records: Sequence[Any]) -> None:
        dead: list[OutRecord] = []
        out: list[OutRecord] = []
        learned: Regions = {}  # store -> its earliest naming in these records, if news
        newest: dict[int, int] = {}  # stock partition -> newest arrival time in these records
        topic = Topic.STOCK_ARRIVALS.value
        for record in records:
            try:
                event = self.validate(record)
            except Rejected as exc:
                emit = dead_letter(record, exc, self.clock.wall_ms(), self.policy.dead_letter_max_bytes)
                dead.append(encode(emit, self.topics, self.partition_for))
                if self.metrics is not None:
                    self.metrics.dead_letters.labels(topic, exc.stage.value, exc.reason.value).inc()
                    self.metrics.events.labels(topic, "dead_letter").inc()
            else:
                out.extend(self.broadcast(event))
                store, region = event.store_id, event.region
                if (
                    store is not None
                    and region is not None
                    and names_earlier(self.regions_sent, store, region, event.ts)
                ):
                    learn_region(learned, store, region, event.ts)
                partition = getattr(record, "partition", 0)
                if event.ts > newest.get(partition, -(2**62)):
                    newest[partition] = event.ts
                self.accepted += 1
                if self.metrics is not None:
                    self.metrics.events.labels(topic, "broadcast").inc()
        if out:
            # the store regions go with the broadcast, acked before the input offsets are
            regions = [self.region_record(store, region, ts) for store, (region, ts) in learned.items()]
            await self.sink.send([*regions, *out])
            learn_regions(self.regions_sent, learned)
            offsets = getattr(self.sink, "last_offsets", {})
            for p in range(self.partitions):
                last = offsets.get((self._broadcast, p))
                if last is not None:
                    self.sent_offsets[p] = last
        # only now (the broadcast is on the topic, its offsets known): a customer batch that
        # runs while this one waits for the broker (the stock agent of PATRONAGE_FAST_PATH=false
        # runs beside the customer agent) must not count these arrivals as broadcast
        for partition, ts in newest.items():
            if ts > self.newest.get(partition, -(2**62)):
                self.newest[partition] = ts
        if dead:
            await send_dead_letters(self.sink, dead, self.metrics)


async def load_store_regions(settings: Settings, topic: str, timeout_s: float = 30.0) -> Regions | None:
    """Every store -> (region, time) on the compacted store-regions topic (the earliest naming
    of a store wins, as in the pipeline), read to the end offsets it had when the read began.
    None when it could not be read (logged): the worker then goes on with the configured and
    learned regions only."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=",".join(settings.bootstrap_servers),
        **aiokafka_options(settings),
        group_id=None,
        enable_auto_commit=False,
        client_id=f"{settings.app_id}-store-regions-reader",
        request_timeout_ms=10_000,
    )
    regions: Regions = {}
    try:
        await consumer.start()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return regions
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        todo = {tp for tp in tps if ends[tp] > 0}
        for tp in tps:
            consumer.seek(tp, 0)
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"store regions not read to the end in {timeout_s:.0f} s")
            batches = await consumer.getmany(*todo, timeout_ms=1000)
            for tp, recs in batches.items():
                for rec in recs:
                    if rec.offset >= ends[tp]:
                        break
                    found = parse_region_record(rec.key, rec.value)
                    if found is not None:
                        learn_region(regions, *found)
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
        return regions
    except Exception as exc:  # never stop the worker for it
        log.warning(
            "could not read the store regions from %s (%r): region-only stock arrivals reach customers "
            "of the configured regions and of those learned from arrivals from now on",
            topic,
            exc,
        )
        return None
    finally:
        await consumer.stop()
