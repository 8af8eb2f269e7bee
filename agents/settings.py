"""Configuration from the environment (prefix ``PATRONAGE_``), validated at start-up."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.policy import Policy


class Settings(BaseSettings):
    """Every option, its environment variable and default. ``patronage settings`` prints them."""

    model_config = SettingsConfigDict(env_prefix="PATRONAGE_", frozen=True, extra="ignore")

    broker: str = Field(
        "kafka://127.0.0.1:9092",
        description="Kafka bootstrap servers, Faust URL form; several separated by ';'",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for profile projection")
    app_id: str = Field("patronage", description="consumer group id and prefix of internal topics")
    partitions: int = Field(
        4, ge=1, le=1024, description="partitions for topics patronage creates (inputs must match)"
    )
    replication_factor: int = Field(1, ge=1, description="replication for topics patronage creates")
    topic_prefix: str = Field("", description="prefix for every topic name (multi-tenant clusters)")
    web_host: str = Field("127.0.0.1", description="worker HTTP bind address (profile API)")
    web_port: int = Field(6066, ge=1, le=65535, description="worker HTTP port")
    clock: Literal["event", "wall"] = Field(
        "event",
        description="'event': now = newest event time seen (replays, backfills); 'wall': real time",
    )
    allowed_lateness_s: float = Field(
        0.0, ge=0, description="event clock: now = newest event time minus this lateness"
    )
    currency: str = Field("EUR", pattern=r"^[A-Z]{3}$", description="currency of purchase amounts")
    batch_max_records: int = Field(
        50_000,
        ge=1,
        description="max records one fetch hands to the batch processor (only reached under backlog; "
        "bigger batches coalesce more changelog writes)",
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
        0.0,
        ge=0,
        le=1000,
        description="wait after an empty fetch; for brokers without long poll (noida-db: the local "
        "stack sets 5). Real Kafka: leave 0",
    )
    data_dir: str = Field(".run/worker", description="worker local data directory")
    log_level: Literal["debug", "info", "warn", "error"] = Field("info", description="log level")
    member_min_purchases: int = Field(3, ge=1, description="lifecycle: purchases to be a member")
    purchase_id_cap: int = Field(
        4096, ge=8, description="idempotency: purchase ids remembered per customer (16 bytes each)"
    )
    touch_id_cap: int = Field(
        4096, ge=8, description="idempotency: touchpoint ids remembered per customer (16 bytes each)"
    )

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

    def topic(self, name: str) -> str:
        """Full topic name for a logical name (``purchases`` -> ``<prefix>purchases``)."""
        return f"{self.topic_prefix}{name}"

    def internal_topic(self, name: str) -> str:
        return f"{self.topic_prefix}{self.app_id}-{name}"

    @property
    def bootstrap_servers(self) -> list[str]:
        """host:port list for plain Kafka clients."""
        return [url.removeprefix("kafka://") for url in self.broker.split(";")]

    def policy(self) -> Policy:
        return Policy(
            member_min_purchases=self.member_min_purchases,
            purchase_id_cap=self.purchase_id_cap,
            touch_id_cap=self.touch_id_cap,
            accept_currency=self.currency,
        )
