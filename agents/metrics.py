"""Prometheus metrics. Labels are bounded sets only (topic, outcome, stage, reason code,
trigger type, risk stage, RFM scores and segment, tier, store up to a cap) - never a
customer id or another unbounded value. No ``_created`` series (disabled process-wide).

Gauges about the population (stages, RFM grid, tiers, risk, store funnel) are set at scrape
time from indexes the pipeline keeps incrementally (``Runtime.set_gauges``): a scrape costs
the distinct index keys, never a walk over the customers."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.gate import SUPPRESSIONS
from streams.rfm import SEGMENTS

if TYPE_CHECKING:
    from streams.pipeline import Batch

disable_created_metrics()

# Latency from an event's own time (or its Kafka timestamp) to done, in seconds. Live data
# lands in the first rows (ms .. minutes); a replay of history on the event clock lands in
# the day .. year rows (its event-time lag is the data's age) instead of all in +Inf, so the
# same panel tells "live and keeping up" from "replaying the past" at a glance.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800,
    3600, 2 * 3600, 6 * 3600, 86_400, 7 * 86_400, 30 * 86_400, 365 * 86_400,
)  # fmt: skip
STAGES = ("stranger", "visitor", "prospect", "customer", "member", "advocate", "at_risk", "lapsed", "lost")
OTHER_STORE = "other"
_OVER = " over the last PATRONAGE_METRICS_STORE_HOURS hours on the clock"
# (measure, help) in the order of streams.storefunnel's per-store totals
STORE_GAUGES = (
    ("visits", "Store visits" + _OVER + " (store: up to PATRONAGE_METRICS_MAX_STORES ids, then other)"),
    ("visitors", "Distinct visitors per store and hour, summed" + _OVER),
    ("buyers", "Purchasing visitors (bought at the store within PATRONAGE_FUNNEL_BUY_WINDOW_MIN of a "
     "visit) per store and hour, summed" + _OVER),
    ("orders", "Purchases at the store" + _OVER),
    ("revenue", "Revenue (money units) of the purchases at the store" + _OVER),
)  # fmt: skip


class BulkHistogram(Collector):
    """A labelled histogram observed many values at a time (a batch's records: one bisect
    per value, one lock per batch - ``Histogram.observe`` per record would cost a lock and
    a bucket walk each)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = tuple(float(b) for b in buckets)
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, labels: tuple[str, ...], values: Iterable[float]) -> None:
        bounds = self._bounds
        counts = [0] * (len(bounds) + 1)
        total = 0.0
        for v in values:
            counts[bisect_left(bounds, v)] += 1
            total += v
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = ([0] * (len(bounds) + 1), [0.0])
            held, held_sum = series
            for i, n in enumerate(counts):
                held[i] += n
            held_sum[0] += total

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self._labelnames)
        with self._lock:
            series = [(labels, list(counts), total[0]) for labels, (counts, total) in self._series.items()]
        for labels, counts, total in series:
            running = 0
            buckets = []
            for bound, n in zip((*(repr(b) for b in self._bounds), "+Inf"), counts, strict=True):
                running += n
                buckets.append((bound, float(running)))
            family.add_metric(list(labels), buckets, total)
        yield family


class StoreLabels:
    """Store id -> metric label: the first ``cap`` stores seen keep their id, later ones are
    counted under ``other`` (the label set stays bounded whatever the data holds)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._labels: dict[str, str] = {}

    def __call__(self, store: str) -> str:
        label = self._labels.get(store)
        if label is None:
            label = store if len(self._labels) < self.cap else OTHER_STORE
            self._labels[store] = label
        return label


class Metrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, *, max_stores: int = 200, store_hours: int = 24
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.store_label = StoreLabels(max_stores)
        self.store_hours = store_hours
        # the standard process (memory, CPU, open fds) and platform (Python version) series
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.events = Counter(
            "patronage_events",
            "Input records processed, by topic and outcome (re-routed events under their own topic)",
            ["topic", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "patronage_dead_letters",
            "Records sent to dead-letters, by topic, stage and reason code",
            ["topic", "stage", "reason"],
            registry=r,
        )
        self.dead_letter_failures = Counter(
            "patronage_dead_letter_failures",
            "Dead letters the broker refused even cut to a minimal record (logged; processing went on)",
            registry=r,
        )
        self.lifecycle_changes = Counter(
            "patronage_lifecycle_changes",
            "Lifecycle transitions emitted, by target stage",
            ["to_stage"],
            registry=r,
        )
        self.triggers = Counter(
            "patronage_triggers",
            "Triggers decided and sent, by type and reason",
            ["type", "reason"],
            registry=r,
        )
        self.outbox_resent = Counter(
            "patronage_outbox_resent",
            "Triggers re-sent after a restart because their send was not confirmed (same records)",
            registry=r,
        )
        self.at_risk = Gauge(
            "patronage_customers_at_risk",
            "Customers in a risk stage now (stage: at_risk, lapsed, lost; alerted: an open churn "
            "alert, i.e. valued customers someone was told about)",
            ["stage", "alerted"],
            registry=r,
        )
        self.dedupe_beyond_horizon = Counter(
            "patronage_dedupe_beyond_horizon",
            "Unknown events at or before the customer's id-memory horizon that were applied "
            "unchecked (PATRONAGE_DEDUPE_BEYOND_HORIZON=apply; the default dead-letters them)",
            registry=r,
        )
        self.duplicate_conflicts = Counter(
            "patronage_duplicate_conflicts",
            "Re-sent event ids whose content differs from the event applied (dead-lettered as "
            "duplicate_conflict)",
            ["topic"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "patronage_batch_seconds",
            "Time to process one batch: decode, apply, emit, changelog and triggers durable",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.batch_stage = Histogram(
            "patronage_batch_stage_seconds",
            "One batch's steps: apply (waiting for the partition's lock, decode, apply), then "
            "waiting for settle (the previous outbox-clearing write), outputs, dead_letters, changelog and "
            "triggers to be acknowledged (tick batches not included)",
            ["stage"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.batch_records = Histogram(
            "patronage_batch_records",
            "Records per processed batch",
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000, 50000),
            registry=r,
        )
        self.tick_seconds = Histogram(
            "patronage_tick_seconds",
            "Time of one partition tick (deadlines due, their outputs durable)",
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=r,
        )
        self.due = Counter(
            "patronage_deadlines_due",
            "Customers popped from the deadline index (by ticks and after batches)",
            registry=r,
        )
        self.changelog_writes = Counter(
            "patronage_changelog_writes", "Customer state records written to the changelog", registry=r
        )
        self.customers = Gauge(
            "patronage_customers", "Subjects held by this worker, by kind", ["kind"], registry=r
        )
        self.consumer_lag = Gauge(
            "patronage_consumer_lag",
            "Records not yet processed in assigned partitions, by logical topic (without PATRONAGE_TOPIC_PREFIX)",
            ["topic"],
            registry=r,
        )
        self.event_clock_lag = Gauge(
            "patronage_event_time_lag_seconds", "Wall time minus the clock's now (event clock)", registry=r
        )
        self.notifications = Counter(
            "patronage_notifications",
            "Notification gate decisions, by trigger type and decision (sent, held_out, pending, "
            "coalesced, deferred_quiet_hours; suppressed: no_consent, cooldown, just_bought, frequency_cap; "
            "duplicate)",
            ["type", "decision"],
            registry=r,
        )
        self.stock_matches = Counter(
            "patronage_stock_matches",
            "Customers a stock arrival reached before the gate, by reason (interest, affinity)",
            ["reason"],
            registry=r,
        )
        self.stock_arrivals = Counter(
            "patronage_stock_arrivals_matched",
            "Broadcast stock arrivals matched in a customer partition (one arrival counts once per partition)",
            registry=r,
        )
        self.stock_stale = Counter(
            "patronage_stock_arrivals_stale",
            "Broadcast stock arrivals offered to nobody in a partition: older than its newest customer "
            "event by more than PATRONAGE_GATE_MAX_ARRIVAL_AGE_DAYS (most often read again after a restart and "
            "offered before it; else re-sent or late stock records)",
            registry=r,
        )
        self.projection_lag = Gauge(
            "patronage_projection_lag_seconds",
            "Age of the oldest customer change Redis does not have yet (0: the projection is current)",
            registry=r,
        )
        self.projection_pending = Gauge(
            "patronage_projection_pending",
            "Customers waiting to be written to Redis (changed, or in a partition being projected whole)",
            registry=r,
        )
        self.projection_errors = Counter(
            "patronage_projection_errors",
            "Failed Redis projection round trips (retried with backoff; processing goes on)",
            registry=r,
        )
        self.projection_writes = Counter(
            "patronage_projection_writes",
            "Customer projections written to Redis (profile hash plus set memberships)",
            registry=r,
        )
        self.suppressed = Counter(
            "patronage_triggers_suppressed",
            "Notifications the gate suppressed, by trigger type and reason (no_consent, cooldown, "
            "just_bought, frequency_cap)",
            ["type", "reason"],
            registry=r,
        )
        self.event_lag = BulkHistogram(
            "patronage_event_lag_seconds",
            "Event time -> processed (state and outputs durable), per input topic, for applied "
            "records; a replay of history on the event clock shows the data's age",
            ["topic"],
            LATENCY_BUCKETS,
            r,
        )
        self.trigger_latency = BulkHistogram(
            "patronage_trigger_latency_seconds",
            "Ingest (the causing record's Kafka timestamp) -> trigger sent (acknowledged), per "
            "trigger type; triggers fired by the clock alone (lapses, released notifications) are not "
            "observed",
            ["type"],
            LATENCY_BUCKETS,
            r,
        )
        self.stage_customers = Gauge(
            "patronage_customers_by_stage",
            "Subjects per lifecycle stage now (kind: known, anonymous; merged ids not counted)",
            ["kind", "stage"],
            registry=r,
        )
        self.rfm_customers = Gauge(
            "patronage_rfm_customers",
            "Buyers per RFM recency and frequency score (1-5) now, against the live population",
            ["r", "f"],
            registry=r,
        )
        self.segment_customers = Gauge(
            "patronage_segment_customers", "Buyers per RFM segment now", ["segment"], registry=r
        )
        self.tier_customers = Gauge(
            "patronage_tier_customers",
            "Buyers per value tier now (core: top PATRONAGE_CHURN_CORE_SHARE by spend; regular)",
            ["tier"],
            registry=r,
        )
        # the store funnel, one gauge per measure (streams/storefunnel.py), all labelled by store
        self.store = {
            measure: Gauge(f"patronage_store_{measure}", doc, ["store"], registry=r)
            for measure, doc in STORE_GAUGES
        }
        # closed uplift exposures and their conversions, per cell (README "Uplift")
        self.uplift_exposures, self.uplift_conversions = (
            Gauge(name, doc, ["type", "segment", "tier", "group"], registry=r)
            for name, doc in (
                (
                    "patronage_uplift_exposures",
                    "Closed uplift exposures (trigger decided, attribution window ended) by trigger type, "
                    "RFM segment and tier at decision time, and group (treated: delivered; control: held out)",
                ),
                (
                    "patronage_uplift_conversions",
                    "Closed uplift exposures converted by a purchase within the window (stock: in the "
                    "notification's category; churn risk: any), same labels as patronage_uplift_exposures",
                ),
            )
        )
        self.uplift_unmeasured = Counter(
            "patronage_uplift_unmeasured",
            "Triggers not measured for uplift: the customer had PATRONAGE_UPLIFT_MAX_OPEN exposures open",
            ["type"],
            registry=r,
        )
        self.offset_regressions = Counter(
            "patronage_offset_regressions",
            "Times the broker's log of a partition went back below the position this worker had "
            "read (acked records lost by the broker, or a truncated log); the worker followed it",
            ["topic"],
            registry=r,
        )
        self.broker_up = Gauge(
            "patronage_broker_up",
            "1 while the worker reaches the broker, 0 while it has lost it (retrying with backoff)",
            registry=r,
        )
        self.broker_unreachable_seconds = Gauge(
            "patronage_broker_unreachable_seconds",
            "Seconds since the worker lost the broker (0 while connected); it exits once this "
            "passes PATRONAGE_BROKER_LOSS_GRACE_S",
            registry=r,
        )
        self.model_loaded = Gauge(
            "patronage_churn_model_loaded",
            "1 when BG/NBD parameters are loaded (P(alive) available)",
            registry=r,
        )

    def _observe_common(self, batch: Batch) -> None:
        stats = batch.stats
        for (topic, outcome), n in stats.outcomes.items():
            self.events.labels(topic, outcome).inc(n)
        for (topic, stage, reason), n in stats.dead_letters.items():
            self.dead_letters.labels(topic, stage, reason).inc(n)
        for stage, n in stats.lifecycle.items():
            self.lifecycle_changes.labels(stage).inc(n)
        for (type_, reason), n in stats.triggers.items():
            self.triggers.labels(type_, reason).inc(n)
        for (type_, decision), n in stats.gate.items():
            self.notifications.labels(type_, decision).inc(n)
            if decision in SUPPRESSIONS:
                self.suppressed.labels(type_, decision).inc(n)
        for reason, n in stats.matched.items():
            self.stock_matches.labels(reason).inc(n)
        if stats.arrivals:
            self.stock_arrivals.inc(stats.arrivals)
        if stats.stale:
            self.stock_stale.inc(len(stats.stale))
        for type_, n in stats.unmeasured.items():
            self.uplift_unmeasured.labels(type_).inc(n)
        if stats.beyond_horizon:
            self.dedupe_beyond_horizon.inc(stats.beyond_horizon)
        for topic, n in stats.conflicts.items():
            self.duplicate_conflicts.labels(topic).inc(n)
        if stats.due:
            self.due.inc(stats.due)
        self.changelog_writes.inc(len(batch.changed))
        # the batch is durable now: its records are processed, its triggers sent
        now_s = time.time()
        for topic, stamps in stats.event_ts.items():
            self.event_lag.observe_many((topic,), (now_s - ts / 1000 for ts in stamps))
        if stats.trigger_ingest:
            by_type: dict[str, list[float]] = {}
            for type_, ingest_ms in stats.trigger_ingest:
                by_type.setdefault(type_, []).append(max(0.0, now_s - ingest_ms / 1000))
            for type_, lags in by_type.items():
                self.trigger_latency.observe_many((type_,), lags)

    def set_population(
        self,
        stages: dict[tuple[str, str], int],
        grid: dict[tuple[int, int], int],
        segment_of: dict[tuple[int, int], str],
        buyers: int,
        core: int,
    ) -> None:
        """The scrape-time gauges about the population (every label combination set, zeros
        included, so a series never vanishes and alerts on it stay defined)."""
        for kind in ("known", "anonymous"):
            self.customers.labels(kind).set(sum(n for (k, _), n in stages.items() if k == kind))
            for stage in STAGES:
                self.stage_customers.labels(kind, stage).set(stages.get((kind, stage), 0))
        segments = dict.fromkeys(SEGMENTS, 0)
        for r in range(1, 6):
            for f in range(1, 6):
                n = grid.get((r, f), 0)
                self.rfm_customers.labels(str(r), str(f)).set(n)
                segments[segment_of[(r, f)]] += n
        for name, n in segments.items():
            self.segment_customers.labels(name).set(n)
        self.tier_customers.labels("core").set(core)
        self.tier_customers.labels("regular").set(buyers - core)

    def set_stores(self, totals: dict[str, tuple[int, int, int, int, int]]) -> None:
        """Store funnel gauges from per-store totals (visits, visitors, buyers, orders, cents);
        stores beyond the cap are summed under ``other``."""
        merged: dict[str, list[int]] = {}
        for store in sorted(totals):
            agg = merged.setdefault(self.store_label(store), [0, 0, 0, 0, 0])
            for i, v in enumerate(totals[store]):
                agg[i] += v
        for gauge in self.store.values():
            gauge.clear()
        for label, values in merged.items():
            for (measure, _doc), value in zip(STORE_GAUGES, values, strict=True):
                self.store[measure].labels(label).set(value / 100 if measure == "revenue" else value)

    def set_uplift(self, totals: Mapping[tuple[str, str, str, str], Sequence[int]]) -> None:
        """The uplift gauges from the kept tallies (closed exposures only); series of keys
        that are gone (partitions moved away) disappear."""
        self.uplift_exposures.clear()
        self.uplift_conversions.clear()
        for (type_, segment, tier, group), (closed, converted, _open) in totals.items():
            self.uplift_exposures.labels(type_, segment, tier, group).set(closed)
            self.uplift_conversions.labels(type_, segment, tier, group).set(converted)

    def observe_batch(self, batch: Batch, seconds: float) -> None:
        self.batch_seconds.observe(seconds)
        self.batch_records.observe(batch.stats.records)
        self._observe_common(batch)

    def observe_tick(self, batch: Batch, seconds: float) -> None:
        self.tick_seconds.observe(seconds)
        self._observe_common(batch)
