"""The one registry of topics: logical names, their roles, and how real names are derived.

Every other module names a topic through :class:`Topic`; the real (cluster) name comes from
:class:`TopicNames` (settings add a prefix, internal topics carry the app id).
"""

from __future__ import annotations

from enum import StrEnum


class Topic(StrEnum):
    # inputs (producers write these)
    PURCHASES = "purchases"
    TOUCHPOINTS = "touchpoints"
    CUSTOMER_UPDATES = "customer-updates"
    STOCK_ARRIVALS = "stock-arrivals"
    # outputs (patronage writes these for others)
    TRIGGERS = "triggers"
    LIFECYCLE_CHANGES = "lifecycle-changes"
    DEAD_LETTERS = "dead-letters"
    # internal (patronage's own; real name "<app_id>-<name>")
    IDENTITY = "identity"
    CHURN_MODEL = "churn-model"
    STOCK_BROADCAST = "stock-broadcast"  # every stock arrival, to every customer partition
    STORE_REGIONS = "store-regions"  # store -> region learned from arrivals naming both
    CHANGELOG = "customers-changelog"


INPUTS: tuple[Topic, ...] = (
    Topic.PURCHASES,
    Topic.TOUCHPOINTS,
    Topic.CUSTOMER_UPDATES,
    Topic.STOCK_ARRIVALS,
)
CUSTOMER_INPUTS: tuple[Topic, ...] = (Topic.PURCHASES, Topic.TOUCHPOINTS, Topic.CUSTOMER_UPDATES)
OUTPUTS: tuple[Topic, ...] = (Topic.TRIGGERS, Topic.LIFECYCLE_CHANGES, Topic.DEAD_LETTERS)
INTERNAL: tuple[Topic, ...] = (
    Topic.IDENTITY,
    Topic.CHURN_MODEL,
    Topic.STOCK_BROADCAST,
    Topic.STORE_REGIONS,
    Topic.CHANGELOG,
)
# keyed by customer id with the same partition count: one worker owns a customer everywhere
# (the stock broadcast too: partition p of it is read with the customers of partition p)
CO_PARTITIONED: tuple[Topic, ...] = (*CUSTOMER_INPUTS, Topic.IDENTITY, Topic.STOCK_BROADCAST, Topic.CHANGELOG)
# the customer processor reads these (in one consumer, batched per partition)
CUSTOMER_PROCESSOR_INPUTS: tuple[Topic, ...] = (*CUSTOMER_INPUTS, Topic.IDENTITY, Topic.STOCK_BROADCAST)
# latest value per key is what matters (table changelog, model parameters, store regions)
COMPACTED: tuple[Topic, ...] = (Topic.CHANGELOG, Topic.CHURN_MODEL, Topic.STORE_REGIONS)
# topics whose records carry an event time that drives the event clock
EVENT_TIME_INPUTS: tuple[Topic, ...] = CUSTOMER_INPUTS

# which field of an input record is its Kafka key (first one present)
KEY_FIELDS: dict[Topic, tuple[str, ...]] = {
    Topic.PURCHASES: ("customer_id",),
    Topic.TOUCHPOINTS: ("customer_id", "anonymous_id"),
    Topic.CUSTOMER_UPDATES: ("customer_id",),
    Topic.STOCK_ARRIVALS: ("category",),
}


class TopicNames:
    """Logical <-> real topic names for one deployment (prefix, app id)."""

    __slots__ = ("_logical", "_real", "app_id", "prefix")

    def __init__(self, prefix: str = "", app_id: str = "patronage") -> None:
        self.prefix = prefix
        self.app_id = app_id
        self._real: dict[Topic, str] = {}
        for t in Topic:
            if t in INTERNAL:  # the changelog too: "<prefix><app_id>-customers-changelog"
                self._real[t] = f"{prefix}{app_id}-{t.value}"
            else:
                self._real[t] = f"{prefix}{t.value}"
        self._logical = {real: t for t, real in self._real.items()}

    def real(self, topic: Topic) -> str:
        return self._real[topic]

    def logical(self, real: str) -> Topic | None:
        """The logical topic of a real name (None for a topic patronage does not know)."""
        return self._logical.get(real)

    def all(self) -> list[str]:
        return [self._real[t] for t in Topic]

    def __getitem__(self, topic: Topic) -> str:
        return self._real[topic]
