"""Prometheus metrics. Labels are bounded sets only (topic, outcome, stage) - never ids."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "patronage_events",
            "Input records processed, by topic and outcome",
            ["topic", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "patronage_dead_letters",
            "Records sent to dead-letters, by topic and stage",
            ["topic", "stage"],
            registry=r,
        )
        self.lifecycle_changes = Counter(
            "patronage_lifecycle_changes",
            "Lifecycle transitions emitted, by target stage",
            ["to_stage"],
            registry=r,
        )
        self.dedupe_beyond_horizon = Counter(
            "patronage_dedupe_beyond_horizon",
            "Events older than the customer's id memory (applied, duplicate check impossible)",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "patronage_batch_seconds",
            "Time to process one batch: decode, apply, emit, changelog durable",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.batch_records = Histogram(
            "patronage_batch_records",
            "Records per processed batch",
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000, 50000),
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
