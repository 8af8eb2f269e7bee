"""Prometheus metrics. Labels are bounded sets only (topic, outcome, stage, reason code,
trigger type, risk stage) - never a customer id or another unbounded value."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from streams.pipeline import Batch


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
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
            "Events older than the customer's id memory (applied, duplicate check impossible)",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "patronage_batch_seconds",
            "Time to process one batch: decode, apply, emit, changelog and triggers durable",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
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
            "Records not yet processed in assigned partitions",
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
            "event by more than PATRONAGE_GATE_MAX_ARRIVAL_AGE_DAYS (re-sent or late stock records)",
            registry=r,
        )
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
        if stats.due:
            self.due.inc(stats.due)
        self.changelog_writes.inc(len(batch.changed))

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
