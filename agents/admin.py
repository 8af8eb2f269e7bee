"""Cluster administration with kafka-python: create topics, compare offsets (``wait``)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from agents.kafkaauth import kafka_python_options
from agents.settings import Settings

log = logging.getLogger(__name__)


class AdminError(RuntimeError):
    """A cluster problem explained for a human."""


def unreachable(settings: Settings, cause: str = "") -> str:
    """One line for a broker nobody answers at (kafka-python alone takes ~30 s to say so)."""
    secured = settings.kafka_security_protocol != "PLAINTEXT"
    return (
        f"cannot reach Kafka at {','.join(settings.bootstrap_servers)}{f' ({cause})' if cause else ''}: "
        "is the broker running? (make up starts a local one; KAFKA_PORT or PATRONAGE_BROKER say where)"
        + (
            f"; or are PATRONAGE_KAFKA_SECURITY_PROTOCOL ({settings.kafka_security_protocol}) and the "
            "PATRONAGE_KAFKA_SASL_* / PATRONAGE_KAFKA_TLS_* settings what the broker expects?"
            if secured
            else ""
        )
    )


def check_reachable(settings: Settings, timeout_s: float = 3.0) -> None:
    """Raise AdminError at once when no bootstrap server accepts a TCP connection."""
    for server in settings.bootstrap_servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s):
                return
        except (OSError, ValueError):
            continue
    raise AdminError(unreachable(settings))


def _admin(settings: Settings, timeout_s: float = 10.0) -> KafkaAdminClient:
    check_reachable(settings)
    try:
        return KafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers,
            **kafka_python_options(settings),
            client_id=f"{settings.app_id}-admin",
            request_timeout_ms=int(timeout_s * 1000),
        )
    except KafkaError as exc:
        raise AdminError(unreachable(settings, exc.__class__.__name__)) from exc


def topic_partition_counts(settings: Settings, topics: Iterable[str]) -> dict[str, int]:
    """Partition count of each existing topic among ``topics``."""
    admin = _admin(settings)
    try:
        wanted = list(topics)
        existing = set(admin.list_topics())
        present = [t for t in wanted if t in existing]
        if not present:
            return {}
        out = {}
        for desc in admin.describe_topics(present):
            out[desc.get("topic") or desc["name"]] = len(desc["partitions"])
        return out
    finally:
        admin.close()


def ensure_topics(
    settings: Settings,
    topics: Iterable[str],
    *,
    co_partitioned: Iterable[str] = (),
    compacted: Iterable[str] = (),
) -> dict[str, int]:
    """Create missing topics with ``settings.partitions``; check co-partitioned ones match.

    Returns the partition count of every topic. Raises AdminError when co-partitioned topics
    disagree (keyed state would be split across workers).
    """
    wanted = list(dict.fromkeys(topics))
    compact = set(compacted)
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            new = [
                NewTopic(
                    name=t,
                    num_partitions=settings.partitions,
                    replication_factor=settings.replication_factor,
                    # table changelogs keep the latest value per key forever (compaction);
                    # with the default delete policy, recovery would lose old customers
                    topic_configs={"cleanup.policy": "compact"} if t in compact else {},
                )
                for t in missing
            ]
            try:
                admin.create_topics(new, timeout_ms=15_000)
            except TopicAlreadyExistsError:
                pass  # another worker won the race
            log.info("created topics %s with %d partitions", missing, settings.partitions)
    finally:
        admin.close()
    deadline = time.monotonic() + 15
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = topic_partition_counts(settings, wanted)
        if len(counts) == len(wanted) and all(counts.values()):
            break
        time.sleep(0.2)
    else:
        raise AdminError(f"topics not visible after creation: {sorted(set(wanted) - set(counts))}")
    co = [t for t in co_partitioned if t in counts]
    sizes = {counts[t] for t in co}
    if len(sizes) > 1:
        detail = ", ".join(f"{t}={counts[t]}" for t in co)
        raise AdminError(
            "co-partitioned topics must have the same partition count, but " + detail + ". "
            "Recreate them (or set PATRONAGE_PARTITIONS to match the existing inputs)."
        )
    if co and settings.partitions not in sizes:
        raise AdminError(
            f"input topics have {sizes.pop()} partitions but PATRONAGE_PARTITIONS={settings.partitions}; "
            "set PATRONAGE_PARTITIONS to the inputs' partition count"
        )
    return counts


@dataclass(frozen=True)
class Progress:
    end: dict[TopicPartition, int]
    committed: dict[TopicPartition, int]

    @property
    def remaining(self) -> int:
        return sum(max(0, end - self.committed.get(tp, 0)) for tp, end in self.end.items())

    @property
    def ahead(self) -> dict[TopicPartition, tuple[int, int]]:
        """Partitions whose committed offset lies past the log's end, (committed, end): the
        broker lost records the group had read (or the log was truncated). Not caught up:
        the workers must follow the log back first."""
        return {
            tp: (self.committed[tp], end)
            for tp, end in self.end.items()
            if tp in self.committed and self.committed[tp] > end
        }


def end_offsets(
    consumer: KafkaConsumer, tps: list[TopicPartition], timeout_s: float = 10.0
) -> dict[Any, int]:
    """End offsets of ``tps`` as a Fetch's high watermark confirms them.

    A broker's ListOffsets answer is the end on Kafka and noida-db, but Tansu answers the last
    record batch's base offset + 1 (a batch of 7 records ending at offset 17: 12), which made
    ``wait`` report done and ``tail`` stop before the last batch. So each partition with data
    is fetched from just before the listed end and the response's high watermark taken when
    higher (one small fetch per partition; leaves ``consumer`` assigned to those partitions).
    """
    ends: dict[Any, int] = dict(consumer.end_offsets(tps)) if tps else {}
    probe = [tp for tp in tps if ends.get(tp, 0) > 0]
    if not probe:
        return ends
    consumer.assign(probe)
    for tp in probe:
        consumer.seek(tp, ends[tp] - 1)
    pending = set(probe)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        consumer.poll(timeout_ms=200, max_records=len(probe))
        for tp in list(pending):
            high = consumer.highwater(tp)
            if high is not None:
                ends[tp] = max(ends[tp], high)
                pending.discard(tp)
    return ends


def group_progress(settings: Settings, topics: Iterable[str]) -> Progress:
    """End offsets of ``topics`` and the worker group's committed offsets on them."""
    check_reachable(settings)
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            **kafka_python_options(settings),
            client_id=f"{settings.app_id}-wait",
            enable_auto_commit=False,
        )
    except KafkaError as exc:
        raise AdminError(unreachable(settings, exc.__class__.__name__)) from exc
    admin = _admin(settings)
    try:
        tps = []
        for topic in topics:
            parts = consumer.partitions_for_topic(topic)
            if parts:
                tps.extend(TopicPartition(topic, p) for p in sorted(parts))
        # the commits first, then the ends: read the other way round, records appended and
        # committed in between (the identity topic the workers write, a replay still running)
        # made a commit look past the log's end, and ``wait`` said the broker had lost records
        raw = admin.list_group_offsets(settings.app_id).get(settings.app_id, {})
        committed = {tp: meta.offset for tp, meta in raw.items() if meta.offset >= 0}
        end = end_offsets(consumer, tps)
        return Progress(end={tp: off for tp, off in end.items()}, committed=committed)
    finally:
        consumer.close()
        admin.close()
