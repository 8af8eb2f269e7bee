"""Configuration from the environment (prefix ``PATRONAGE_``), validated at start-up."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Annotated, Literal, TypeVar

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.timestamps import SECONDS_GUARD_BELOW_MS
from schemas.topics import Topic, TopicNames
from streams.policy import ChurnPolicy, FunnelPolicy, GatePolicy, InterestPolicy, Policy, UpliftPolicy

_CHURN = ChurnPolicy()
_INTEREST = InterestPolicy()
_GATE = GatePolicy()
_FUNNEL = FunnelPolicy()
_UPLIFT = UpliftPolicy()
TRIGGER_TYPES = ("new_stock_for_interest", "churn_risk", "won_back", "stalled_prospect")
CHANNELS = ("push", "email", "sms", "in_store")


# a comma-separated list in the environment ("core,regular"), not JSON
NameSet = Annotated[frozenset[str], NoDecode]


_QUIET = re.compile(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d")
T = TypeVar("T")


def _parse_pairs(text: str, name: str, cast: Callable[[str], T]) -> list[tuple[str, T]]:
    """'a=1,b=2' -> [("a", cast("1")), ("b", cast("2"))]; a clear error naming the setting."""
    out: list[tuple[str, T]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, raw = part.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ValueError(f"{name}: expected name=value pairs separated by commas (got {part!r})")
        try:
            out.append((key.strip(), cast(raw.strip())))
        except ValueError:
            raise ValueError(f"{name}: bad value in {part!r}") from None
    return out


def local_port(variable: str) -> int:
    """The local stack's port from ``KAFKA_PORT`` / ``REDIS_PORT`` / ``PATRONAGE_WEB_PORT``
    (unset or empty: 9092 / 6379 / 6066): what ``make up`` binds and every command defaults to."""
    return int(os.environ.get(variable) or LOCAL_PORTS[variable])


LOCAL_PORTS = {"KAFKA_PORT": 9092, "REDIS_PORT": 6379, "PATRONAGE_WEB_PORT": 6066}


class Settings(BaseSettings):
    """Every option, its environment variable and default. ``patronage settings`` prints them."""

    model_config = SettingsConfigDict(env_prefix="PATRONAGE_", frozen=True, extra="ignore")

    broker: str = Field(
        default_factory=lambda: f"kafka://127.0.0.1:{local_port('KAFKA_PORT')}",
        description="Kafka bootstrap servers, Faust URL form; several separated by ';' "
        "(default: the local stack's, 127.0.0.1:$KAFKA_PORT, else 9092)",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="how every Kafka client of patronage connects (worker, CLI, replay): PLAINTEXT, "
        "SSL (TLS), SASL_PLAINTEXT or SASL_SSL (README: Security)",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism for SASL_PLAINTEXT / SASL_SSL"
    )
    kafka_sasl_username: str = Field("", description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (secret: never printed or logged)"
    )
    kafka_tls_ca_file: str = Field(
        "",
        description="SSL / SASL_SSL: CA bundle that signed the brokers' certificates (empty: the system's)",
    )
    kafka_tls_cert_file: str = Field(
        "", description="SSL / SASL_SSL: client certificate (PEM) for mutual TLS (empty: none)"
    )
    kafka_tls_key_file: str = Field("", description="... and its private key (PEM)")
    kafka_tls_check_hostname: bool = Field(
        True, description="SSL / SASL_SSL: the broker certificate must name the host connected to"
    )
    redis_url: str = Field(
        default_factory=lambda: f"redis://127.0.0.1:{local_port('REDIS_PORT')}/0",
        description="Redis for profile projection (default: the local stack's, 127.0.0.1:$REDIS_PORT, else 6379)",
    )
    redis_username: str = Field("", description="Redis ACL user (empty: the default user)")
    redis_password: SecretStr | None = Field(
        None, description="Redis password (secret: never printed or logged; overrides one in the URL)"
    )
    redis_tls: bool = Field(False, description="connect to Redis over TLS (same as a rediss:// URL)")
    redis_tls_ca_file: str = Field(
        "", description="CA bundle to verify Redis' TLS certificate (empty: the system's)"
    )
    redis_prefix: str = Field(
        "patronage",
        pattern=r"^[^\s:]+$",
        description="first part of every Redis key: <prefix>:v1:... (README: the key layout)",
    )
    redis_timeout_s: float = Field(
        2.0, gt=0, le=60, description="Redis connect and command timeout (then: retried, processing goes on)"
    )
    projection_enabled: bool = Field(
        True, description="project profiles, audiences and at-risk sets into Redis (README: Redis)"
    )
    projection_batch: int = Field(
        500, ge=1, le=100_000, description="customers written per pipelined Redis round trip"
    )
    projection_clock_step_s: float = Field(
        86400.0,
        ge=0,
        description="re-project a partition whole once its clock has moved this far past the "
        "clock its profiles were written with, as soon as the clock is steady again (a replay "
        "writes profiles with the clock of the moment; after it, their recency and scores would "
        "wait for the hourly refresh); 0: off",
    )
    projection_refresh_s: float = Field(
        3600.0,
        ge=0,
        description="re-project every customer this often (time-relative fields: recency, RFM "
        "scores against the population, P(alive)); 0: only when they change",
    )
    projection_max_audiences: int = Field(
        16,
        ge=0,
        le=64,
        description="a customer's best interest categories that put them into audience sets (0: none)",
    )
    app_id: str = Field("patronage", description="consumer group id and prefix of internal topics")
    partitions: int = Field(
        4, ge=1, le=1024, description="partitions for topics patronage creates (inputs must match)"
    )
    replication_factor: int = Field(1, ge=1, description="replication for topics patronage creates")
    key_partitioner: Literal["murmur2", "crc32"] = Field(
        "murmur2",
        description="how the producers of the input topics map keys to partitions: murmur2 (Java, "
        "aiokafka, kafka-python, librdkafka murmur2_random) or crc32 (librdkafka's default: kcat, "
        "confluent-kafka); a mismatch works but sends ~3 of 4 events through the identity topic",
    )
    topic_prefix: str = Field("", description="prefix for every topic name (multi-tenant clusters)")
    web_host: str = Field(
        "127.0.0.1",
        description="worker HTTP bind address (the page, profile API, /metrics); loopback by default, "
        "0.0.0.0 to serve other machines (containers set it)",
    )
    web_token: SecretStr | None = Field(
        None,
        description="access token: when set, every HTTP endpoint but /healthz (the page, the API, "
        "/metrics) needs 'Authorization: Bearer <token>'; the CLI sends it (secret: never printed "
        "or logged; empty: no token)",
    )
    web_port: int = Field(LOCAL_PORTS["PATRONAGE_WEB_PORT"], ge=1, le=65535, description="worker HTTP port")
    page_rows: int = Field(
        50, ge=1, le=5000, description="the page: valued customers at risk listed per view (newest first)"
    )
    page_recent: int = Field(
        50,
        ge=1,
        le=5000,
        description="the page: newest triggers and newest gate suppressions kept and listed (each)",
    )
    page_store_funnel_hours: int = Field(
        24, ge=1, le=24 * 31, description="the page: hours of store funnel shown"
    )
    clock: Literal["event", "wall"] = Field(
        "event",
        description="'event': now = per partition, the oldest of the inputs' newest event times "
        "(replays, backfills); 'wall': real time",
    )
    allowed_lateness_s: float = Field(
        0.0, ge=0, description="event clock: now = newest event time minus this lateness"
    )
    event_clock_idle_s: float = Field(
        5.0,
        gt=0,
        description="event clock: an input topic that sent nothing to a partition for this many wall "
        "seconds stops holding that partition's clock back",
    )
    event_clock_max_ahead_s: float = Field(
        0.0,
        ge=0,
        description="event clock: how far past the wall clock it may read; an event time ahead of "
        "real time (a producer's fast clock, accepted up to PATRONAGE_TS_MAX_FUTURE_S) then cannot fire "
        "deadlines early",
    )
    tick_interval_s: float = Field(
        0.5, gt=0, le=60, description="how often each partition's deadlines are checked (wall seconds)"
    )
    currency: str = Field("EUR", pattern=r"^[A-Z]{3}$", description="currency of purchase amounts")
    ts_floor: date = Field(
        date(1970, 1, 1), description="earliest plausible event time (older: dead letter ts_out_of_range)"
    )
    ts_max_future_s: float = Field(
        86_400.0, ge=0, description="how far past the wall clock an event time may lie (clock skew)"
    )
    ts_seconds_below_ms: int = Field(
        SECONDS_GUARD_BELOW_MS,
        ge=0,
        description="epoch values below this (1973-03-03 in ms) are taken for seconds: dead letter "
        "ts_in_seconds; 0 turns the guard off",
    )
    max_amount: float = Field(
        1e11, gt=0, description="largest plausible purchase amount or item price, major units"
    )
    dead_letter_max_bytes: int = Field(
        65_536,
        ge=256,
        le=262_144,
        description="bytes of the original key and value a dead letter keeps (then cut; size and "
        "SHA-256 of the whole value are kept)",
    )
    max_value_bytes: int = Field(
        1 << 20,
        ge=1024,
        description="an input value longer than this (bytes) is dead-lettered unparsed, reason "
        "too_large; a valid event is a few KB (1,000 items ~ 100 KB)",
    )
    batch_max_records: int = Field(
        50_000,
        ge=1,
        description="max records one fetch hands to the batch processor (only reached under backlog; "
        "bigger batches coalesce more changelog writes)",
    )
    hold_max_records: int = Field(
        100_000,
        ge=1,
        description="event-time alignment: records a partition may hold back (fetched, waiting for its other "
        "inputs or for stock arrivals to be read) before the bounds from outside the batch are dropped and "
        "only the inputs in hand stay aligned; four times this: applied unaligned (memory, ~1 KB a record)",
    )
    hold_wait_s: float = Field(
        300.0,
        gt=0,
        description="event-time alignment: while a partition holds back a quarter of PATRONAGE_HOLD_MAX_RECORDS "
        "or more, its inputs are paused so that fetches bring what the hold waits for (an input with records "
        "to read and none in hand, stock arrivals not read yet); after this many seconds paused it stops "
        "waiting for them (logged; the inputs in hand stay aligned). Giving up early fires deadlines ahead "
        "of records not read yet",
    )
    hot_states: int = Field(
        100_000,
        ge=0,
        description="customer states kept decoded in memory (~10-16 KB each); every other customer is held as "
        "its changelog bytes (~1 KB) and decoded when touched. A restart starts with all of them encoded",
    )
    fast_path: bool = Field(
        True, description="process input partitions in batches inside the consumer (see README)"
    )
    session_timeout_s: float = Field(
        10.0,
        ge=3,
        le=300,
        description="consumer group session timeout: how fast a dead worker's partitions move",
    )
    broker_loss_grace_s: float = Field(
        60.0,
        ge=1,
        le=86400,
        description="a worker that cannot reach the broker retries (log, metric, /healthz 503) and, "
        "after this many seconds without it, exits with code 3 and one line saying why",
    )
    instance_id: str | None = Field(
        None,
        description="static group membership id (e.g. worker-0, a StatefulSet pod name): a restarted "
        "worker with the same id takes its partitions back without waiting for a session timeout",
    )
    web_advertised_host: str | None = Field(
        None,
        description="host other workers use to reach this one's HTTP API (default: web_host, or the "
        "machine's hostname when web_host is 0.0.0.0); set to the pod IP on Kubernetes",
    )
    empty_fetch_backoff_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="wait after a fetch that returned nothing, before the next one to that broker: "
        "brokers without long poll (noida-db) answer an empty fetch at once, and an idle worker "
        "then spins most of a core. Real Kafka already waits fetch.max.wait.ms for data, so the "
        "5 ms default adds nothing there; 0: off",
    )
    stall_log_ms: float = Field(
        0.0,
        ge=0,
        description="log a warning with the processing thread's stack when its event loop is held "
        "longer than this (a latency diagnostic; 0: off; use tens of ms)",
    )
    data_dir: str = Field(".run/worker", description="worker local data directory")
    log_level: Literal["debug", "info", "warn", "error"] = Field("info", description="log level")
    member_min_purchases: int = Field(3, ge=1, description="lifecycle: purchases to be a member")
    purchase_id_cap: int = Field(
        512, ge=8, description="idempotency: newest purchase ids remembered per customer (20 bytes each)"
    )
    touch_id_cap: int = Field(
        512, ge=8, description="idempotency: newest touchpoint ids remembered per customer (20 bytes each)"
    )
    dedupe_beyond_horizon: Literal["dead_letter", "apply"] = Field(
        "dead_letter",
        description="an unknown event at or before the customer's id-memory horizon: dead-letter it "
        "(reason beyond_dedupe_horizon; never double-counts) or apply it (counted in "
        "patronage_dedupe_beyond_horizon_total; a replay of forgotten events counts twice)",
    )
    # --- churn (streams/policy.py ChurnPolicy; README "Churn risk") ---
    churn_at_risk_factor: float = Field(
        _CHURN.at_risk_factor, gt=0, description="at_risk after silence > this x the usual interval"
    )
    churn_lapsed_factor: float = Field(
        _CHURN.lapsed_factor, gt=0, description="lapsed after silence > this x the usual interval"
    )
    churn_lost_factor: float = Field(
        _CHURN.lost_factor, gt=0, description="lost after silence > this x the usual interval"
    )
    churn_at_risk_min_days: float = Field(
        _CHURN.at_risk_min_days, ge=0, description="never at_risk before this many silent days"
    )
    churn_lapsed_min_days: float = Field(
        _CHURN.lapsed_min_days, ge=0, description="never lapsed before this many silent days"
    )
    churn_lost_min_days: float = Field(
        _CHURN.lost_min_days, ge=0, description="never lost before this many silent days"
    )
    churn_prior_interval_days: float = Field(
        _CHURN.prior_interval_days,
        gt=0,
        description="usual interval assumed until the population has enough history of its own",
    )
    churn_prior_weight: float = Field(
        _CHURN.prior_weight, ge=0, description="pseudo-gaps of the population prior in a usual interval"
    )
    churn_prior_min_customers: int = Field(
        _CHURN.prior_min_customers,
        ge=1,
        description="customers with >= 3 gaps needed before the live median replaces the fixed prior",
    )
    churn_core_share: float = Field(
        _CHURN.core_share, gt=0, le=1, description="top share of buyers by spend that is tier 'core'"
    )
    churn_alert_tiers: NameSet = Field(
        _CHURN.alert_tiers, description="tiers whose risk raises a churn trigger (comma list: core,regular)"
    )
    churn_alert_min_purchases: int = Field(
        _CHURN.alert_min_purchases, ge=1, description="... or customers with at least this many purchases"
    )
    churn_complaint_max_rating: int = Field(
        _CHURN.complaint_max_rating, ge=0, le=5, description="a rating <= this counts as a complaint"
    )
    churn_experience_drop: float = Field(
        _CHURN.experience_drop,
        gt=0,
        description="fall of the peak-end score below its best that raises risk (reason experience)",
    )
    churn_experience_floor: float = Field(
        _CHURN.experience_floor, gt=0, le=5, description="... when the score ends below this"
    )
    churn_stalled_ask_types: NameSet = Field(
        _CHURN.ask_types, description="touchpoint types that count as asking (comma list)"
    )
    churn_stalled_min_asks: int = Field(
        _CHURN.stalled_min_asks, ge=1, description="asks without a purchase that make a stalled prospect"
    )
    churn_stalled_after_days: float = Field(
        _CHURN.stalled_after_days, ge=0, description="... counted once the first ask is this old"
    )
    churn_default_recipient: str = Field(
        _CHURN.default_recipient, min_length=1, description="team for churn alerts without owner or store"
    )
    churn_sales_recipient: str = Field(
        _CHURN.sales_recipient, min_length=1, description="team for stalled prospects without owner or store"
    )
    max_stores: int = Field(
        _CHURN.max_stores,
        ge=1,
        description="stores remembered per customer, most frequented kept (churn recipient, stock location)",
    )
    churn_holdout: float = Field(
        _CHURN.holdout_share,
        ge=0,
        lt=1,
        description="control group: share of churn-risk alerts held out (deliver: false), drawn from a "
        "hash of (experiment, customer, episode); 0 = none",
    )
    churn_model_refresh_s: float = Field(
        30.0, gt=0, description="how often workers re-read the BG/NBD parameters from the churn-model topic"
    )

    # --- interest (streams/policy.py InterestPolicy; README "New stock for your interest") ---
    interest_min_occasions: int = Field(
        _INTEREST.min_occasions,
        ge=1,
        description="interested: at least this many orders with the category ...",
    )
    interest_window_days: float = Field(
        _INTEREST.occasion_window_days, gt=0, description="... within this many days before the arrival ..."
    )
    interest_min_spend_share: float = Field(
        _INTEREST.min_spend_share,
        ge=0,
        le=1,
        description="... and at least this recency-weighted share of the customer's spend",
    )
    interest_half_life_days: float = Field(
        _INTEREST.half_life_days, gt=0, description="recency weighting of spend, orders and touches"
    )
    interest_max_categories: int = Field(
        _INTEREST.max_categories, ge=1, description="categories tracked per customer (the rest: 'other')"
    )
    interest_touch_types: NameSet = Field(
        _INTEREST.touch_types, description="touchpoint types that add to the interest score (never create it)"
    )
    interest_touch_weight: float = Field(_INTEREST.touch_weight, ge=0, description="score per decayed touch")
    interest_touch_max: float = Field(_INTEREST.touch_max, ge=0, description="largest touch bonus")
    interest_affinity_categories: NameSet = Field(
        _INTEREST.affinity_categories,
        description="categories whose arrivals also reach customers of high-lift categories (comma list, "
        "'*' = all; empty = affinity off)",
    )
    interest_affinity_min_lift: float = Field(
        _INTEREST.affinity_min_lift, gt=0, description="affinity: lift(A -> B) needed"
    )
    interest_affinity_min_support: int = Field(
        _INTEREST.affinity_min_support, ge=1, description="affinity: customers who bought both A and B"
    )
    interest_affinity_max_categories: int = Field(
        _INTEREST.affinity_max_categories, ge=2, description="affinity: categories counted (bounded memory)"
    )
    store_regions: str = Field(
        "",
        description="store -> region for region-addressed arrivals ('s1=north,s2=south'); also learned "
        "from arrivals naming both",
    )
    # --- the notification gate (GatePolicy; README "The notification gate") ---
    gate_channel_order: str = Field(
        ",".join(_GATE.channels), description="channels in preference order (the first consented one is used)"
    )
    gate_consent_default: bool = Field(
        _GATE.consent_default, description="use a channel the customer never gave or refused consent for"
    )
    gate_quiet_hours: str = Field(
        "21:00-08:00", description="quiet hours, customer's local time, HH:MM-HH:MM (equal: none)"
    )
    gate_default_timezone: str = Field(
        _GATE.default_timezone, description="time zone of customers without one"
    )
    gate_cooldown_days: float = Field(_GATE.cooldown_days, ge=0, description="per category")
    gate_cap_per_day: int = Field(
        _GATE.cap_per_day, ge=0, description="customer-facing messages per rolling 24 h"
    )
    gate_cap_per_week: int = Field(
        _GATE.cap_per_week, ge=0, description="customer-facing messages per rolling 7 days"
    )
    gate_just_bought_days: float = Field(
        _GATE.just_bought_days, ge=0, description="an order with the category this recently suppresses"
    )
    gate_coalesce_s: float = Field(
        _GATE.coalesce_s, ge=0, description="arrivals within this window become one notification (0: none)"
    )
    gate_max_items: int = Field(_GATE.max_items, ge=1, description="items listed in one notification")
    gate_max_arrival_age_days: float = Field(
        _GATE.max_arrival_age_days,
        ge=0,
        description="a stock arrival older than the newest customer event by more than this is offered to nobody (0: off)",
    )
    gate_to_payer: NameSet = Field(
        _GATE.to_payer, description="trigger types addressed to the payer, user named (comma list)"
    )
    gate_holdout: str = Field(
        "", description="control groups: 'type=share,...' e.g. new_stock_for_interest=0.1 (default: none)"
    )
    gate_experiment: str = Field(_GATE.experiment, min_length=1, description="holdout hash salt")
    gate_log_size: int = Field(_GATE.log_size, ge=0, description="gate decisions remembered per customer")
    # -- store funnel and metrics --
    funnel_buy_window_min: float = Field(
        _FUNNEL.buy_window_ms / 60_000,
        ge=0,
        description="store funnel: a purchase at the store up to this many minutes after a visit makes "
        "the visitor a buyer (event time)",
    )
    funnel_retention_h: int = Field(
        _FUNNEL.retention_ms // 3_600_000,
        ge=2,
        le=24 * 31,
        description="store funnel: hours of store visits and purchases each customer keeps (before the "
        "clock's now); the longest /store-funnel answer",
    )
    funnel_max_entries: int = Field(
        _FUNNEL.max_entries, ge=1, description="store funnel: visits + store purchases kept per customer"
    )
    metrics_max_stores: int = Field(
        200, ge=1, description="store label values in metrics; further stores are counted as 'other'"
    )
    metrics_store_hours: int = Field(
        24, ge=1, description="hours (up to the clock's now) the patronage_store_* gauges sum over"
    )

    # --- uplift (UpliftPolicy; README "Uplift") ---
    uplift_window_days: float = Field(
        _UPLIFT.window_days,
        gt=0,
        description="a purchase within this many days after a trigger (event time) converts it",
    )
    uplift_max_open: int = Field(
        _UPLIFT.max_open,
        ge=1,
        description="open exposures (windows not ended) per customer; triggers beyond are not measured",
    )

    @field_validator("redis_password", "web_token", "kafka_sasl_password", mode="before")
    @classmethod
    def _no_empty_password(cls, value: object) -> object:
        return None if value in ("", None) else value

    @field_validator(
        "churn_alert_tiers", "churn_stalled_ask_types", "interest_touch_types", "gate_to_payer", mode="before"
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(v.strip().lower() for v in value.split(",") if v.strip())
        return value

    @field_validator("interest_affinity_categories", mode="before")
    @classmethod
    def _category_list(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("gate_to_payer")
    @classmethod
    def _known_trigger_types(cls, value: frozenset[str]) -> frozenset[str]:
        unknown = sorted(value - set(TRIGGER_TYPES))
        if unknown:
            raise ValueError(
                f"unknown trigger type(s) {', '.join(unknown)}: one of {', '.join(TRIGGER_TYPES)}"
            )
        return value

    @field_validator("gate_channel_order")
    @classmethod
    def _known_channels(cls, value: str) -> str:
        names = [v.strip() for v in value.split(",") if v.strip()]
        unknown = sorted(set(names) - set(CHANNELS))
        if unknown or not names:
            raise ValueError(
                f"unknown channel(s) {', '.join(unknown) or '(none given)'}: use {', '.join(CHANNELS)}"
            )
        return ",".join(names)

    @field_validator("gate_quiet_hours")
    @classmethod
    def _quiet_hours(cls, value: str) -> str:
        if not _QUIET.fullmatch(value.strip()):
            raise ValueError(f"quiet hours must look like 21:00-08:00 (got {value!r})")
        return value.strip()

    @field_validator("gate_default_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except Exception:
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Berlin)") from None
        return value

    @field_validator("store_regions")
    @classmethod
    def _pairs(cls, value: str) -> str:
        _parse_pairs(value, "store_regions", str)
        return value

    @field_validator("gate_holdout")
    @classmethod
    def _holdout(cls, value: str) -> str:
        for name, share in _parse_pairs(value, "gate_holdout", float):
            if name not in TRIGGER_TYPES:
                raise ValueError(f"unknown trigger type {name!r}: one of {', '.join(TRIGGER_TYPES)}")
            if name != "new_stock_for_interest":
                raise ValueError(
                    f"{name} does not pass the notification gate: its control group is "
                    + ("PATRONAGE_CHURN_HOLDOUT" if name == "churn_risk" else "not available")
                )
            if not 0 <= share < 1:
                raise ValueError(f"holdout share for {name} must be in [0, 1) (got {share})")
        return value

    @field_validator("churn_alert_tiers")
    @classmethod
    def _known_tiers(cls, value: frozenset[str]) -> frozenset[str]:
        unknown = sorted(value - {"core", "regular"})
        if unknown:
            raise ValueError(f"unknown tier(s) {', '.join(unknown)}: use core and/or regular")
        return value

    @field_validator("churn_stalled_ask_types", "interest_touch_types")
    @classmethod
    def _known_touch_types(cls, value: frozenset[str]) -> frozenset[str]:
        from schemas.events import TouchType

        unknown = sorted(value - {t.value for t in TouchType})
        if unknown:
            raise ValueError(
                f"unknown touchpoint type(s) {', '.join(unknown)}: one of {', '.join(t.value for t in TouchType)}"
            )
        return value

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and (
            not self.kafka_sasl_username or self.kafka_sasl_password is None
        ):
            raise ValueError(
                f"kafka_security_protocol={protocol} needs PATRONAGE_KAFKA_SASL_USERNAME and "
                "PATRONAGE_KAFKA_SASL_PASSWORD"
            )
        if bool(self.kafka_tls_cert_file) != bool(self.kafka_tls_key_file):
            raise ValueError(
                "set both PATRONAGE_KAFKA_TLS_CERT_FILE and PATRONAGE_KAFKA_TLS_KEY_FILE, or neither"
            )
        return self

    @model_validator(mode="after")
    def _consistent_policy(self) -> Settings:
        self.policy()  # the rules' own checks (e.g. at_risk <= lapsed <= lost), at start-up
        return self

    @field_validator("broker")
    @classmethod
    def _broker_scheme(cls, value: str) -> str:
        for url in value.split(";"):
            if not url.startswith("kafka://"):
                raise ValueError(f"broker URL must start with kafka:// (got {url!r})")
        return value

    @property
    def advertised_url(self) -> str:
        """URL of this worker's HTTP API as other workers should call it (Faust table routing)."""
        host = self.web_advertised_host
        if not host:
            host = socket.gethostname() if self.web_host in ("0.0.0.0", "::", "") else self.web_host
        return f"http://{host}:{self.web_port}"

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.topic_prefix, self.app_id)

    def topic(self, name: str | Topic) -> str:
        """Real topic name for a logical name (``purchases`` -> ``<prefix>purchases``)."""
        return self.topics.real(Topic(name))

    @property
    def bootstrap_servers(self) -> list[str]:
        """host:port list for plain Kafka clients."""
        return [url.removeprefix("kafka://") for url in self.broker.split(";")]

    def churn_policy(self) -> ChurnPolicy:
        return ChurnPolicy(
            at_risk_factor=self.churn_at_risk_factor,
            lapsed_factor=self.churn_lapsed_factor,
            lost_factor=self.churn_lost_factor,
            at_risk_min_days=self.churn_at_risk_min_days,
            lapsed_min_days=self.churn_lapsed_min_days,
            lost_min_days=self.churn_lost_min_days,
            prior_interval_days=self.churn_prior_interval_days,
            prior_weight=self.churn_prior_weight,
            prior_min_customers=self.churn_prior_min_customers,
            core_share=self.churn_core_share,
            alert_tiers=self.churn_alert_tiers,
            alert_min_purchases=self.churn_alert_min_purchases,
            complaint_max_rating=self.churn_complaint_max_rating,
            experience_drop=self.churn_experience_drop,
            experience_floor=self.churn_experience_floor,
            ask_types=self.churn_stalled_ask_types,
            stalled_min_asks=self.churn_stalled_min_asks,
            stalled_after_days=self.churn_stalled_after_days,
            default_recipient=self.churn_default_recipient,
            sales_recipient=self.churn_sales_recipient,
            max_stores=self.max_stores,
            holdout_share=self.churn_holdout,
        )

    def policy(self) -> Policy:
        return Policy(
            member_min_purchases=self.member_min_purchases,
            purchase_id_cap=self.purchase_id_cap,
            touch_id_cap=self.touch_id_cap,
            beyond_horizon=self.dedupe_beyond_horizon,
            accept_currency=self.currency,
            ts_floor_ms=int(datetime.combine(self.ts_floor, datetime.min.time(), UTC).timestamp() * 1000),
            ts_max_future_ms=int(self.ts_max_future_s * 1000),
            ts_seconds_below_ms=self.ts_seconds_below_ms,
            max_amount_cents=round(self.max_amount * 100),
            dead_letter_max_bytes=self.dead_letter_max_bytes,
            max_value_bytes=self.max_value_bytes,
            churn=self.churn_policy(),
            interest=self.interest_policy(),
            gate=self.gate_policy(),
            funnel=FunnelPolicy(
                buy_window_ms=round(self.funnel_buy_window_min * 60_000),
                retention_ms=self.funnel_retention_h * 3_600_000,
                max_entries=self.funnel_max_entries,
            ),
            uplift=UpliftPolicy(window_days=self.uplift_window_days, max_open=self.uplift_max_open),
        )

    def interest_policy(self) -> InterestPolicy:
        return InterestPolicy(
            min_occasions=self.interest_min_occasions,
            occasion_window_days=self.interest_window_days,
            min_spend_share=self.interest_min_spend_share,
            half_life_days=self.interest_half_life_days,
            max_categories=self.interest_max_categories,
            touch_types=self.interest_touch_types,
            touch_weight=self.interest_touch_weight,
            touch_max=self.interest_touch_max,
            affinity_categories=self.interest_affinity_categories,
            affinity_min_lift=self.interest_affinity_min_lift,
            affinity_min_support=self.interest_affinity_min_support,
            affinity_max_categories=self.interest_affinity_max_categories,
            store_regions=tuple(_parse_pairs(self.store_regions, "store_regions", str)),
        )

    def gate_policy(self) -> GatePolicy:
        start, end = self.gate_quiet_hours.split("-")
        return GatePolicy(
            channels=tuple(self.gate_channel_order.split(",")),
            consent_default=self.gate_consent_default,
            quiet_start_min=int(start[:2]) * 60 + int(start[3:]),
            quiet_end_min=int(end[:2]) * 60 + int(end[3:]),
            default_timezone=self.gate_default_timezone,
            cooldown_days=self.gate_cooldown_days,
            cap_per_day=self.gate_cap_per_day,
            cap_per_week=self.gate_cap_per_week,
            just_bought_days=self.gate_just_bought_days,
            coalesce_s=self.gate_coalesce_s,
            max_items=self.gate_max_items,
            max_arrival_age_days=self.gate_max_arrival_age_days,
            to_payer=self.gate_to_payer,
            holdout=tuple(_parse_pairs(self.gate_holdout, "gate_holdout", float)),
            experiment=self.gate_experiment,
            log_size=self.gate_log_size,
        )
