"""Producers left at librdkafka's default partitioner (kcat, confluent-kafka): with
PATRONAGE_KEY_PARTITIONER=crc32 their events land where the worker owns them (no hop through
the identity topic), and the worker's HTTP routing finds each customer."""

from __future__ import annotations

import re

import orjson
import pytest
from confluent_kafka import Producer

from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration


def rerouted(cluster: Cluster) -> float:
    status, _ = cluster.get("/healthz/")
    assert status == 200
    import urllib.request

    with urllib.request.urlopen(cluster.url() + "/metrics", timeout=30) as resp:  # no trailing slash
        text = resp.read().decode()
    return sum(
        float(m.group(1))
        for m in re.finditer(r'^patronage_events_total\{[^}]*outcome="rerouted"[^}]*\} (\S+)$', text, re.M)
    )


def produce_with_librdkafka_default(cluster: Cluster, customers: int, tag: str) -> None:
    producer = Producer({"bootstrap.servers": cluster.stack.broker_url.removeprefix("kafka://")})
    topic = cluster.env["PATRONAGE_TOPIC_PREFIX"] + "purchases"
    for n in range(customers):
        cid = f"{tag}/ü {n}"
        value = {"event_id": f"{tag}-{n}", "customer_id": cid, "ts": 1790000000000 + n, "amount": 10,
                 "currency": "EUR"}  # fmt: skip
        producer.produce(topic, orjson.dumps(value), key=cid.encode())  # default: consistent_random
    assert producer.flush(30) == 0


@pytest.mark.parametrize(("setting", "hops"), [("crc32", False), ("murmur2", True)])
def test_the_producers_partitioner_setting_avoids_the_identity_hop(
    cluster: Cluster, setting: str, hops: bool
) -> None:
    cluster.env["PATRONAGE_KEY_PARTITIONER"] = setting
    cluster.start_worker()
    produce_with_librdkafka_default(cluster, 200, setting)
    cluster.wait(timeout=120)
    moved = rerouted(cluster)
    if hops:
        assert 100 < moved < 200  # about 3 of 4 land elsewhere than murmur2 says
    else:
        assert moved == 0
    for n in (0, 1, 2, 199):
        doc = cluster.profile(f"{setting}/ü {n}")
        assert doc is not None and doc["frequency"] == 1
    import urllib.parse

    quoted = urllib.parse.quote(f"{setting}/ü 0", safe="")
    for path in ("/healthz", "/summary", f"/profile/{quoted}", f"/why/{quoted}?category=x"):  # no slash
        status, _ = cluster.get(path)
        assert status == 200, path
