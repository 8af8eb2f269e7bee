"""Security basics through a real worker, broker and Redis: the HTTP token, loopback binding,
erasure everywhere (table, indexes, page, Redis, a tombstone) with no resurrection by a
replay, and no customer id in the worker's log at INFO or in any metric."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from agents.localstack import LocalStack
from schemas.timestamps import parse_ts_ms
from tests.integration.conftest import Cluster
from tests.integration.test_projection import wait_caught_up

pytestmark = pytest.mark.integration

TOKEN = "itest-T0ken-4f9a2c"


def fetch(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def listening_addresses(port: int) -> set[str]:
    """Local addresses of TCP sockets listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(name).read_text().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].rsplit(":", 1)
            if int(hexport, 16) == port and fields[3] == "0A":  # LISTEN
                found.add(addr)
    return found


def test_the_token_guards_every_endpoint_but_healthz_and_the_cli_sends_it(cluster: Cluster) -> None:
    cluster.env["PATRONAGE_WEB_TOKEN"] = TOKEN
    cluster.start_worker()
    rows = [
        {"event_id": f"p{i}", "customer_id": "c-tok", "ts": f"2025-01-0{i}T10:00:00Z", "amount": 10.0 + i,
         "currency": "EUR", "items": [{"sku": "s1", "category": "books", "qty": 1, "price": 10.0}]}
        for i in range(1, 4)
    ]  # fmt: skip
    cluster.replay(cluster.write("p.jsonl", rows), "purchases")
    cluster.wait()
    base = cluster.url()
    # bound to loopback only (the default PATRONAGE_WEB_HOST)
    assert listening_addresses(cluster.workers[0][1]) == {"0100007F"}

    status, _, body = fetch(base + "/healthz/")
    assert status == 200 and json.loads(body)["ready"] is True  # probes need no token
    guarded = [
        "/", "/page", "/summary/", "/summary", "/metrics", "/metrics/", "/profile/c-tok/", "/profile/c-tok",
        "/why/c-tok/?category=books", "/uplift/", "/store-funnel/", "/churn-model/summary/",
    ]  # fmt: skip
    for path in guarded:
        status, headers, body = fetch(base + path)
        assert status == 401, path
        assert "unauthorized" in json.loads(body)["error"], path
        assert "Bearer" in headers.get("WWW-Authenticate", ""), path
        status, _, _ = fetch(base + path, token=TOKEN + "x")
        assert status == 401, path
        status, _, body = fetch(base + path, token=TOKEN)
        assert status == 200, (path, status, body[:200])
    status, _, body = fetch(base + "/profile/c-tok/", token=TOKEN)
    assert json.loads(body)["frequency"] == 3

    # the CLI sends PATRONAGE_WEB_TOKEN: profile, summary, uplift, churn-model fit --from-workers
    assert '"frequency": 3' in cluster.run("profile", "c-tok", "--json", "--url", base).stdout
    assert cluster.run("summary", "--url", base).returncode == 0
    assert cluster.run("uplift", "--json", "--url", base).returncode == 0
    without = {k: v for k, v in cluster.env.items() if k != "PATRONAGE_WEB_TOKEN"}
    saved, cluster.env = cluster.env, without
    try:
        for args in (("profile", "c-tok"), ("summary",), ("uplift",)):
            proc = cluster.run(*args, "--url", base, check=False)
            assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
            assert "requires its access token" in proc.stdout + proc.stderr
            assert "PATRONAGE_WEB_TOKEN" in proc.stdout + proc.stderr
    finally:
        cluster.env = saved
    cluster.stop_workers()
    assert TOKEN not in (cluster.tmp / "worker0.log").read_text()


def ids_in(data: Path) -> set[str]:
    out: set[str] = set()
    for name in ("purchases", "touchpoints", "customer-updates"):
        for line in (data / f"{name}.jsonl").read_bytes().splitlines():
            row = orjson.loads(line)
            for key in ("customer_id", "anonymous_id", "payer_id"):
                if row.get(key):
                    out.add(row[key])
    return out


def redis_members(r: redis.Redis, pattern: str) -> dict[str, set[str]]:
    return {k.decode(): {m.decode() for m in r.zrange(k, 0, -1)} for k in r.scan_iter(pattern)}


def tombstones(stack: LocalStack, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    consumer = KafkaConsumer(
        bootstrap_servers=stack.broker_url.removeprefix("kafka://"), enable_auto_commit=False
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 20
        idle = 0
        while time.monotonic() < deadline and idle < 3:
            batch = consumer.poll(timeout_ms=700)
            idle = 0 if batch else idle + 1
            for msgs in batch.values():
                out.extend((m.key, m.value) for m in msgs)
        return out
    finally:
        consumer.close()


def test_erasure_leaves_nothing_and_nothing_personal_is_logged_or_labelled(
    cluster: Cluster, stack: LocalStack, tmp_path: Path
) -> None:
    cluster.env.update({"PATRONAGE_PAGE_RECENT": "5000", "PATRONAGE_PAGE_ROWS": "5000"})
    prefix = cluster.env["PATRONAGE_REDIS_PREFIX"]
    r = redis.Redis(port=stack.redis_port)
    data = tmp_path / "data"
    cluster.run("generate", "--customers", "300", "--seed", "21", "--out", str(data))
    everyone = ids_in(data)
    garbage = [
        b'{"event_id": "bad-1", "customer_id": "c000007", "ts": "2024-11-03T10:00:00Z", "amount": 5, '
        b'"currency": "USD", "items": []}',  # a known customer, wrong currency
        b'{"event_id": "bad-2", "customer_id": "c000011", "ts": "not a time"}',
        b'{"customer_id": "c000013", truncated',
    ]
    cluster.start_worker()
    cluster.replay(data / "touchpoints.jsonl", "touchpoints")
    cluster.replay(data / "customer-updates.jsonl", "customer-updates")
    cluster.replay(data / "purchases.jsonl", "purchases")
    cluster.replay(cluster.write("garbage.jsonl", garbage), "purchases")
    cluster.wait()
    wait_caught_up(cluster)
    assert len(cluster.read_topic("dead-letters")) >= 3
    triggers = cluster.read_topic("triggers")
    assert triggers, "no triggers: the log check would not cover them"

    # the victim: valued and at risk (in an at_risk set), in audiences, with triggers
    base = f"{prefix}:v1:"
    at_risk = redis_members(r, base + "at_risk:*")
    audiences = redis_members(r, base + "audience:*")
    triggered = {t["customer_id"] for t in triggers}
    candidates = sorted(
        cid
        for members in at_risk.values()
        for cid in members
        if cid in triggered and any(cid in m for m in audiences.values())
    )
    assert candidates, "no customer at risk, in an audience and triggered: nothing to erase"
    victim = candidates[0]
    doc = cluster.profile(victim)
    assert doc is not None and doc["frequency"] > 0
    page = fetch(cluster.url() + "/")[2].decode()
    assert victim in page  # listed (at risk, recent triggers) before the erasure
    before = cluster.get("/summary/")[1]
    metrics_before = fetch(cluster.url() + "/metrics")[2].decode()

    victim_events = {
        name: [
            line
            for line in (data / f"{name}.jsonl").read_bytes().splitlines()
            if orjson.loads(line).get("customer_id") == victim
        ]
        for name in ("purchases", "touchpoints")
    }
    newest = max(parse_ts_ms(orjson.loads(line)["ts"]) for lines in victim_events.values() for line in lines)
    erase = {"event_id": "erase-1", "customer_id": victim, "ts": newest, "erase": True}
    cluster.replay(cluster.write("erase.jsonl", [erase]), "customer-updates")
    cluster.wait()
    wait_caught_up(cluster)

    def gone() -> None:
        assert cluster.profile(victim) is None
        assert not r.exists(base + "profile:" + victim)
        assert not any(victim in m for m in redis_members(r, base + "at_risk:*").values())
        assert not any(victim in m for m in redis_members(r, base + "audience:*").values())
        assert victim not in fetch(cluster.url() + "/")[2].decode()  # at-risk list, recent triggers
        after = cluster.get("/summary/")[1]
        assert after["customers"] == before["customers"] - 1
        assert after["totals"]["purchases"] == before["totals"]["purchases"] - doc["frequency"]

    gone()
    # the tombstone: key = the customer, no value, on lifecycle-changes
    records = tombstones(stack, cluster.env["PATRONAGE_TOPIC_PREFIX"] + "lifecycle-changes")
    assert (victim.encode(), None) in records

    # replaying the victim's old events brings nothing back; nor do the deadlines they had
    for name, lines in victim_events.items():
        cluster.replay(cluster.write(f"again-{name}.jsonl", lines), name)
    cluster.wait()
    wait_caught_up(cluster)
    gone()
    metrics_after = fetch(cluster.url() + "/metrics")[2].decode()
    ignored = re.search(
        r'patronage_events_total\{outcome="ignored_erased",topic="purchases"\} (\S+)', metrics_after
    )
    assert ignored is not None and float(ignored.group(1)) >= len(victim_events["purchases"])
    later = [t for t in cluster.read_topic("triggers") if t["customer_id"] == victim]
    assert len(later) == sum(1 for t in triggers if t["customer_id"] == victim)

    # no customer id in any metric (labels included) ...
    for text in (metrics_before, metrics_after):
        leaked = sorted(cid for cid in everyone if cid in text)
        assert not leaked, f"customer ids in /metrics: {leaked[:5]}"
    # ... nor in the worker's log at INFO (triggers, dead letters, the erasure, a restart)
    assert cluster.env["PATRONAGE_LOG_LEVEL"] == "info"
    cluster.stop_workers()
    cluster.start_worker()  # recovery from the changelog: still gone
    cluster.wait()
    wait_caught_up(cluster)
    gone()
    cluster.stop_workers()
    log = (cluster.tmp / "worker0.log").read_text()
    assert "customers table ready" in log  # the log is the worker's, at INFO
    leaked = sorted(cid for cid in everyone if re.search(rf"\b{re.escape(cid)}\b", log))
    assert not leaked, f"customer ids in the worker log at INFO: {leaked[:5]}"
