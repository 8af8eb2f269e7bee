"""The churn model's parameters travel on a compacted topic (``<app_id>-churn-model``):
``patronage churn-model fit --publish`` writes them, every worker reads the latest record
at start and every ``PATRONAGE_CHURN_MODEL_REFRESH_S``."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from agents.kafkaauth import aiokafka_options
from agents.settings import Settings
from schemas.outputs import ChurnModelRecord
from streams.bgnbd import BgNbdParams
from streams.core import ChurnModel

log = logging.getLogger(__name__)
MODEL_KEY = b"bgnbd"


def to_model(record: ChurnModelRecord) -> ChurnModel:
    return ChurnModel(
        params=BgNbdParams(record.r, record.alpha, record.a, record.b),
        unit=record.unit,
        fitted_at=record.fitted_at,
        customers=record.customers,
    )


def parse_model(raw: bytes | None) -> ChurnModel | None:
    if raw is None:
        return None
    try:
        return to_model(ChurnModelRecord.model_validate(orjson.loads(raw)))
    except (orjson.JSONDecodeError, ValidationError, ValueError) as exc:
        log.warning("ignoring an unreadable churn-model record: %s", exc)
        return None


class ModelLoader:
    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic

    async def latest(self) -> ChurnModel | None:
        """The newest model record on the topic (None when there is none or it is unreadable)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=",".join(self.settings.bootstrap_servers),
            **aiokafka_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            client_id=f"{self.settings.app_id}-model-reader",
            request_timeout_ms=10_000,
        )
        try:
            await consumer.start()
            partitions = consumer.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            if not tps:
                return None
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            newest: tuple[int, Any] | None = None
            for tp in tps:
                if ends[tp] <= 0:
                    continue
                consumer.seek(tp, max(0, ends[tp] - 5))
                batch = await consumer.getmany(tp, timeout_ms=2000)
                for rec in batch.get(tp, []):
                    if rec.key == MODEL_KEY and (newest is None or rec.timestamp >= newest[0]):
                        newest = (rec.timestamp, rec.value)
            return None if newest is None else parse_model(newest[1])
        except Exception as exc:  # the model is optional: never stop the worker for it
            log.warning("could not read the churn model from %s: %r", self.topic, exc)
            return None
        finally:
            await consumer.stop()
