"""The Redis projection through the real broker and a real Redis: it matches the worker's
profiles, survives Redis being killed mid-stream (processing goes on, the lag is visible) and
a Redis that comes back empty is rebuilt from the table."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import redis

from agents.localstack import LocalStack, free_port
from tests.integration.conftest import Cluster


def metrics(cluster: Cluster) -> dict[str, float]:
    with urllib.request.urlopen(cluster.url() + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("patronage_projection"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wait_caught_up(cluster: Cluster, timeout: float = 90) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    m: dict[str, float] = {}
    while time.monotonic() < deadline:
        m = metrics(cluster)
        if m.get("patronage_projection_lag_seconds") == 0 and m.get("patronage_projection_pending") == 0:
            return m
        time.sleep(0.5)
    raise AssertionError(f"projection did not catch up: {m}")


def customers(data: Path) -> list[str]:
    ids: set[str] = set()
    for name in ("purchases", "touchpoints", "customer-updates"):
        for line in (data / f"{name}.jsonl").read_bytes().splitlines():
            row = orjson.loads(line)
            for key in ("customer_id", "anonymous_id"):
                if row.get(key):
                    ids.add(row[key])
    return sorted(ids)


def check(cluster: Cluster, r: redis.Redis, ids: list[str], prefix: str, exact: bool) -> int:
    """Redis holds every live customer exactly as the worker does; ``exact``: set memberships
    too (they depend on the population as of the write, so only after a full projection)."""
    base = f"{prefix}:v1:"
    at_risk_expected: dict[str, str] = {}
    seen = 0
    for cid in ids:
        status, doc = cluster.get("/profile/" + cid + "/")
        h = {k.decode(): v.decode() for k, v in r.hgetall(base + "profile:" + cid).items()}
        if status == 404 or (doc and doc["customer_id"] != cid):  # unknown, erased or merged away
            assert not h, (cid, status)
            continue
        assert status == 200, (cid, status)
        seen += 1
        assert h, f"{cid} missing in Redis"
        stored = json.loads(h["doc"])
        for field in ("frequency", "monetary", "lifecycle_stage", "last_purchase_at", "last_triggers"):
            assert stored[field] == doc[field], (cid, field, stored[field], doc[field])
        assert h["stage"] == doc["lifecycle_stage"]
        assert h["frequency"] == str(doc["frequency"])
        churn: dict[str, Any] | None = doc["churn"]
        assert h["risk"] == ((churn or {}).get("risk_stage") or "")
        if exact:
            assert stored["interests"] == doc["interests"]
            assert stored["rfm"] == doc["rfm"]
            for row in doc["interests"]:
                assert r.zscore(base + "audience:" + row["category"], cid) is not None
            # the staff page's rule (churn.at_risk_since): an open alert, or valued in a risk stage
            if (
                churn
                and doc["frequency"] > 0
                and (churn["alert"] or (churn["risk_stage"] and churn["valued"]))
            ):
                stores = doc["stores"]
                at_risk_expected[cid] = next(iter(stores)) if stores else "-"
    if exact:
        got = {}
        for key in r.scan_iter(base + "at_risk:*"):
            store = key.decode().rsplit(":", 1)[1]
            for member in r.zrange(key, 0, -1):
                assert member.decode() not in got, "a customer at risk at two stores"
                got[member.decode()] = store
        assert got == at_risk_expected
        assert at_risk_expected, "no valued customer at risk: the at-risk sets were not tested"
    return seen


def test_redis_killed_mid_stream_then_empty_is_rebuilt(cluster: Cluster, tmp_path: Path) -> None:
    own = LocalStack(tmp_path / "redis", kafka_port=free_port(), redis_port=free_port())
    own.start_redis()
    try:
        prefix = cluster.env["PATRONAGE_REDIS_PREFIX"]
        cluster.env["PATRONAGE_REDIS_URL"] = own.redis_url
        cluster.env["PATRONAGE_REDIS_TIMEOUT_S"] = "0.5"
        r = redis.Redis(port=own.redis_port)
        data = tmp_path / "data"
        cluster.run("generate", "--customers", "300", "--seed", "21", "--out", str(data))
        ids = customers(data)
        purchases = (data / "purchases.jsonl").read_bytes().splitlines()
        first, rest = purchases[: len(purchases) // 2], purchases[len(purchases) // 2 :]
        cluster.start_worker()
        cluster.replay(data / "touchpoints.jsonl", "touchpoints")
        cluster.replay(data / "customer-updates.jsonl", "customer-updates")
        cluster.replay(cluster.write("first.jsonl", first), "purchases")
        cluster.wait()
        wait_caught_up(cluster)
        assert check(cluster, r, ids, prefix, exact=False) > 250

        own.service("redis").stop(sig=signal.SIGKILL)
        cluster.replay(cluster.write("rest.jsonl", rest), "purchases")
        cluster.replay(data / "stock-arrivals.jsonl", "stock-arrivals")
        cluster.wait()  # processing went on without Redis
        down = metrics(cluster)
        assert down["patronage_projection_errors_total"] > 0
        assert down["patronage_projection_pending"] > 0
        assert down["patronage_projection_lag_seconds"] > 0
        assert cluster.profile(ids[0]) is not None  # the HTTP profile does not need Redis

        own.start_redis()  # empty: no persistence
        assert r.dbsize() == 0
        up = wait_caught_up(cluster)
        assert up["patronage_projection_writes_total"] > down["patronage_projection_writes_total"]
        seen = check(cluster, r, ids, prefix, exact=True)
        assert seen > 250
        assert r.exists(*(f"{prefix}:v1:synced:{p}" for p in range(4))) == 4
        log = (cluster.tmp / "worker0.log").read_text()
        assert "redis://127.0.0.1" in log and "reachable again" in log
    finally:
        own.down()
