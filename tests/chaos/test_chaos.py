"""Proof under fire (issue 8), full size: `make chaos` (excluded from the default `pytest` run
by the ``chaos`` marker; the fast subset is in tests/integration/test_faults.py).

Each scenario prints what it measured (``-s`` shows it; `make chaos` passes it)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import redis

from agents.localstack import LocalStack, free_port
from synthetic import generate
from tests.integration.conftest import BIN, Cluster
from tests.integration.test_faults import (
    broker_kill_and_resend,
    check_every_customer,
    check_triggers,
    worker_kills_under_load,
    write_feed,
)
from tests.integration.test_projection import check, wait_caught_up

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(1200)]


def feed(c: Cluster, feed_dir: object, rate: int) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "patronage"), "replay", str(feed_dir), "--rate", str(rate), "--quiet"],
        env={**os.environ, **c.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_worker_kill_9_five_times_while_50k_events_are_fed(cluster: Cluster) -> None:
    stats = worker_kills_under_load(cluster, customers=650, kills=5, rate=1100, seed=81)
    assert stats["events"] >= 50_000
    print("chaos, worker kill -9 x5:", stats)


def test_broker_kill_9_and_restart_mid_stream_with_a_resend(fcluster: Cluster, own_stack: LocalStack) -> None:
    stats = broker_kill_and_resend(fcluster, own_stack, customers=650, seed=82, rate=2000)
    print("chaos, broker kill -9:", stats)


def test_redis_stopped_30_s_mid_stream_the_projection_converges(cluster: Cluster, tmp_path: object) -> None:
    from pathlib import Path

    own = LocalStack(Path(str(tmp_path)) / "redis", kafka_port=free_port(), redis_port=free_port())
    own.start_redis()
    try:
        c = cluster
        prefix = c.env["PATRONAGE_REDIS_PREFIX"]
        c.env["PATRONAGE_REDIS_URL"] = own.redis_url
        c.env["PATRONAGE_REDIS_TIMEOUT_S"] = "0.5"
        r = redis.Redis(port=own.redis_port)
        data = generate(400, seed=83)
        feed_dir = write_feed(c, data)
        c.start_worker()
        f = feed(c, feed_dir, 900)
        time.sleep(4.0)
        own.service("redis").stop(sig=signal.SIGTERM)  # stopped (it persists nothing: comes back empty)
        stopped = time.monotonic()
        time.sleep(30.0)
        assert f.poll() is None, "the feed should still be running when Redis returns"
        own.start_redis()
        back = time.monotonic()
        assert f.wait(timeout=300) == 0
        c.wait()
        up = wait_caught_up(c, timeout=120)
        converged_s = time.monotonic() - back
        ids = sorted({*(p["customer_id"] for p in data.purchases)})
        assert check(c, r, ids, prefix, exact=True) == len(ids)
        check_every_customer(c, data)
        print(
            f"chaos, Redis stopped {back - stopped:.0f} s mid-stream: projection caught up "
            f"{converged_s:.1f} s after its return ({up})"
        )
    finally:
        own.down()


def test_one_of_two_workers_killed_mid_stream_the_other_takes_over(cluster: Cluster) -> None:
    c = cluster
    data = generate(400, seed=84)
    feed_dir = write_feed(c, data)
    c.start_worker(0)
    c.start_worker(1)
    f = feed(c, feed_dir, 1200)
    time.sleep(6.0)
    status, doc = c.get("/summary/", 1)
    assert status == 200 and doc["customers"] > 0, "worker 1 should own partitions before the kill"
    c.workers[1][0].kill9()  # gone for good: worker 0 must take its partitions over
    killed = time.monotonic()
    assert f.wait(timeout=300) == 0
    c.wait(timeout=300)
    took_over_s = time.monotonic() - killed
    status, doc = c.get("/summary/", 0)
    assert status == 200
    assert check_every_customer(c, data, index=0) > 0
    records, distinct = check_triggers(c)
    print(
        f"chaos, one of two workers kill -9: worker 0 caught up with everything {took_over_s:.1f} s "
        f"after the kill; {records} trigger records, {distinct} distinct"
    )
