"""Faults under fire (issue 8): the broker killed and restarted mid-stream, the broker lost for
a while, SIGTERM while it is gone. These tests kill their own broker, so each runs on its own
local stack (noida-db + Redis on free ports), not the session's."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from agents.admin import group_progress
from agents.localstack import LocalStack, free_port
from agents.settings import Settings
from schemas.topics import INPUTS, Topic
from synthetic import generate
from synthetic.generator import SyntheticData
from tests import oracle
from tests.integration.conftest import BIN, Cluster
from tests.integration.test_end_to_end import check_customer
from tests.integration.test_recovery import metric, scrape

pytestmark = pytest.mark.integration


@pytest.fixture
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # Always noida-db, also under PATRONAGE_TEST_BROKER=tansu: these tests restart the broker
    # and check what its data dir kept; Tansu keeps everything in memory, so a restarted Tansu
    # is an empty cluster without topics (README "Two brokers").
    s = LocalStack(
        tmp_path_factory.mktemp("faults"),
        kafka_port=free_port(),
        redis_port=free_port(),
        web_port=free_port(),
        broker="noida",
    )
    s.start_broker()
    s.start_redis()
    yield s
    s.down()


@pytest.fixture
def fcluster(own_stack: LocalStack, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(own_stack, f"f{os.getpid()}", tmp_path)
    yield c
    c.stop_workers()


def broker_snapshot_mtime(stack: LocalStack) -> float:
    """When noida-db last rewrote its data file (it persists every ~8-10 s)."""
    files = [p for p in (stack.run_dir / "broker-data").glob("*") if p.is_file() and "control" not in p.name]
    return max((p.stat().st_mtime for p in files), default=0.0)


def wait_health(c: Cluster, want: int, timeout: float = 30.0, index: int = 0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, doc = c.get("/healthz/", index)
        if status == want:
            return doc
        assert time.monotonic() < deadline, f"/healthz/ still {status}: {doc}"
        time.sleep(0.1)


def kill_broker_after_snapshot(
    stack: LocalStack,
    after_s: float = 3.0,
    timeout: float = 30.0,
    before_kill: Callable[[], object] | None = None,
) -> float:
    """``kill -9`` noida-db ``after_s`` seconds after its next data-file rewrite, so the
    records acked in those seconds are lost for sure. Returns the rewrite's time."""
    before = broker_snapshot_mtime(stack)
    deadline = time.monotonic() + timeout
    while broker_snapshot_mtime(stack) == before:
        assert time.monotonic() < deadline, "noida-db did not rewrite its data file"
        time.sleep(0.05)
    time.sleep(after_s)
    if before_kill is not None:
        before_kill()
    stack.service("broker").kill9()
    return before


def input_ends(c: Cluster) -> int:
    """Records in the input topics now (sum of their partitions' end offsets)."""
    settings = Settings(broker=c.env["PATRONAGE_BROKER"], app_id=c.env["PATRONAGE_APP_ID"])
    prefix = c.env["PATRONAGE_TOPIC_PREFIX"]
    return sum(group_progress(settings, [f"{prefix}{t.value}" for t in INPUTS]).end.values())


def without_anonymous(data: SyntheticData) -> SyntheticData:
    """The data without anonymous visitors (their touchpoints and the identify events)."""
    touches = [t for t in data.touchpoints if not t.get("anonymous_id") and t.get("type") != "identify"]
    return dataclasses.replace(data, touchpoints=touches)


def broker_kill_and_resend(
    c: Cluster, stack: LocalStack, *, customers: int, seed: int, rate: int
) -> dict[str, float | int]:
    """noida-db acks writes before it persists them (one JSON file rewritten every ~8-10 s),
    so a ``kill -9`` loses the last seconds of acked records, and on restart its logs end
    below what the worker read and committed. The worker must follow the broker back (never
    skip a record it now holds), count and report it, and move its committed offsets back;
    the producer re-sends what it sent (at-least-once), and every customer ends exact.

    Without anonymous visitors: the broker also loses the worker's own identity hops
    (anonymous -> customer merges), which a re-send of the inputs does not bring back (README
    "Faults": a known limit, seen in about one run in four with one customer of 250)."""
    data = without_anonymous(generate(customers, seed=seed))
    feed_dir = write_feed(c, data)
    c.start_worker()
    feed = start_feed(c, feed_dir, rate)
    try:
        time.sleep(2.0)
        before_kill: list[int] = []
        kill_broker_after_snapshot(stack, after_s=3.0, before_kill=lambda: before_kill.append(input_ends(c)))
        killed_at = time.monotonic()
        assert feed.poll() is None, "the feed should still be running at the kill"
        status, doc = c.get("/summary/")
        assert status == 200
        processed_at_kill = doc["totals"]["purchases"]
    finally:
        feed.kill()
        feed.wait()
    time.sleep(1.0)
    stack.start_broker()  # same data dir: what it had persisted
    restarted_at = time.monotonic()
    settings = Settings(broker=c.env["PATRONAGE_BROKER"], app_id=c.env["PATRONAGE_APP_ID"])
    prefix = c.env["PATRONAGE_TOPIC_PREFIX"]
    progress = group_progress(settings, [f"{prefix}{t.value}" for t in (*INPUTS, Topic.IDENTITY)])
    lost = before_kill[0] - sum(e for tp, e in progress.end.items() if not tp.topic.endswith("identity"))
    assert lost > 0, "the broker lost nothing: the kill did not test the regression"
    # Where noida-db persisted a group's commit past the records (it does, often), the
    # worker's position lies past the log's end: an offset regression it must follow and
    # report. Where the commit it persisted is older than the records, the group simply goes
    # back to it (noida-db also forgets the group's generation: a rebalance seeks to it).
    ahead = progress.ahead
    deadline = time.monotonic() + (60 if ahead else 10)
    regressions = 0.0
    while time.monotonic() < deadline:
        regressions = metric(scrape(c), "patronage_offset_regressions_total")
        if regressions > 0:
            break
        time.sleep(0.2)
    followed_s = time.monotonic() - restarted_at
    health = wait_health(c, 200)
    assert health["broker"] == "up", health
    log = (c.tmp / "worker0.log").read_text(errors="replace")
    if ahead:
        assert regressions > 0, f"committed past the log's end {ahead}, but no offset regression seen"
        assert health["offset_regressions"], health
        assert "offset regression on " in log
    assert "Traceback" not in log, log[-4000:]

    # the at-least-once producer sends everything again; ids make the re-sent records no-ops
    c.run("replay", str(feed_dir), "--quiet")
    try:
        c.wait(timeout=180)
    except AssertionError:
        settings = Settings(broker=c.env["PATRONAGE_BROKER"], app_id=c.env["PATRONAGE_APP_ID"])
        prefix = c.env["PATRONAGE_TOPIC_PREFIX"]
        progress = group_progress(settings, [f"{prefix}{t.value}" for t in (*INPUTS, Topic.IDENTITY)])
        behind = {str(tp): (progress.committed.get(tp), end) for tp, end in progress.end.items()}
        pytest.fail(f"not caught up (committed, end): {behind}\n{scrape(c)[-3000:]}")
    # `wait` does not lie: the group's committed offsets are exactly the logs' ends
    settings = Settings(broker=c.env["PATRONAGE_BROKER"], app_id=c.env["PATRONAGE_APP_ID"])
    prefix = c.env["PATRONAGE_TOPIC_PREFIX"]
    progress = group_progress(settings, [f"{prefix}{t.value}" for t in INPUTS])
    for tp, end in progress.end.items():
        assert progress.committed.get(tp, 0) == end, (tp, progress.committed.get(tp), end)
    checked = check_every_customer(c, data)
    # and the changelog holds it all: a worker killed now comes back with every customer exact
    c.workers[0][0].kill9()
    c.start_worker()
    c.wait()
    check_every_customer(c, data)
    return {
        "customers": checked,
        "commits_past_the_log_end": len(ahead),
        "purchases_processed_at_kill": processed_at_kill,
        "records_lost_by_the_broker": lost,
        "regressions": int(regressions),
        "followed_s_after_restart": round(followed_s, 1),
        "broker_down_s": round(restarted_at - killed_at, 1),
    }


def test_broker_kill_9_mid_stream_the_worker_follows_the_regression_and_a_resend_makes_every_customer_exact(
    fcluster: Cluster, own_stack: LocalStack
) -> None:
    stats = broker_kill_and_resend(fcluster, own_stack, customers=250, seed=31, rate=1500)
    print("broker kill -9 mid-stream:", stats)


def gauge(text: str, name: str) -> float:
    """The value of an unlabelled series (Prometheus text format)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in the scrape")


def log_since(c: Cluster, offset: int, index: int = 0) -> str:
    with (c.tmp / f"worker{index}.log").open("rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def log_size(c: Cluster, index: int = 0) -> int:
    path = c.tmp / f"worker{index}.log"
    return path.stat().st_size if path.exists() else 0


def test_broker_lost_within_the_grace_the_worker_says_so_and_resumes_and_sigterm_still_stops_it(
    fcluster: Cluster, own_stack: LocalStack
) -> None:
    """The broker goes away for ~8 s mid-stream: the worker says so (one warning, the gauge,
    /healthz 503 with the reason), keeps retrying, and when the broker is back it resumes by
    itself: every customer exact in the end. Then the broker goes away again and a SIGTERM
    stops the worker within seconds (nothing can be committed without a broker)."""
    c = fcluster
    data = generate(150, seed=44)
    purchases = c.write("p.jsonl", data.purchases)
    touches = c.write("t.jsonl", data.touchpoints)
    c.start_worker(PATRONAGE_BROKER_LOSS_GRACE_S="60")
    c.replay(touches, "touchpoints")
    c.wait(settle_s=0.5)
    assert gauge(scrape(c), "patronage_broker_up") == 1
    at = log_size(c)

    own_stack.service("broker").stop()  # SIGTERM: noida-db persists what it has
    lost_at = time.monotonic()
    health = wait_health(c, 503, timeout=15)
    detected_s = time.monotonic() - lost_at
    assert health["broker"] == "unreachable" and "broker unreachable" in health["reason"], health
    assert gauge(scrape(c), "patronage_broker_up") == 0
    time.sleep(6.0)
    away = gauge(scrape(c), "patronage_broker_unreachable_seconds")
    assert away >= 4, away
    assert c.procs[0].poll() is None, "the worker must wait out the grace"
    own_stack.start_broker()
    back_at = time.monotonic()
    wait_health(c, 200, timeout=30)
    resumed_s = time.monotonic() - back_at
    log = log_since(c, at)
    assert log.count("unreachable; retrying with backoff") == 1, log[-3000:]
    assert "reachable again after" in log
    assert "Traceback" not in log, log[-4000:]
    errors = [line for line in log.splitlines() if "[ERROR]" in line]
    assert len(errors) < 60, f"{len(errors)} error lines for an 8 s outage:\n" + "\n".join(errors[:80])

    c.replay(purchases, "purchases")  # processing resumed
    c.wait()
    expected = oracle.compute(data.purchases, data.touchpoints)
    scores = oracle.rfm_scores(expected, int(c.env["PATRONAGE_PARTITIONS"]))
    for cid, e in expected.items():
        doc = c.profile(cid)
        assert doc is not None, cid
        check_customer(doc, e, scores)

    own_stack.service("broker").stop()
    wait_health(c, 503, timeout=15)
    started = time.monotonic()
    c.signal_worker(0)
    code = c.wait_exit(0, timeout=10)
    stop_s = time.monotonic() - started
    assert code == 0, (code, log_since(c, at)[-3000:])
    assert stop_s < 5, stop_s
    assert "SIGTERM while the broker is unreachable" in log_since(c, at)
    print(
        f"broker lost: detected in {detected_s:.1f} s, resumed {resumed_s:.1f} s after its return, "
        f"{len(errors)} error lines for the outage; SIGTERM with the broker gone: {stop_s:.2f} s"
    )


def test_a_worker_that_loses_the_broker_for_longer_than_the_grace_exits_with_code_3_and_one_line(
    fcluster: Cluster, own_stack: LocalStack
) -> None:
    c = fcluster
    c.start_worker(PATRONAGE_BROKER_LOSS_GRACE_S="4")
    at = log_size(c)
    own_stack.service("broker").kill9()
    lost_at = time.monotonic()
    code = c.wait_exit(0, timeout=30)
    took = time.monotonic() - lost_at
    log = log_since(c, at)
    assert code == 3, (code, log[-3000:])
    assert 4 <= took < 10, took
    assert "Traceback" not in log, log[-4000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("patronage: broker 127.0.0.1:") and "unreachable for" in last, last
    assert "PATRONAGE_BROKER_LOSS_GRACE_S=4" in last and "exiting with code 3" in last, last
    own_stack.start_broker()
    print(f"broker lost: exit 3 after {took:.1f} s (grace 4 s)")


# --- worker kill -9 under load (the fast subset here; `make chaos` runs the full size) -------


def start_feed(c: Cluster, feed_dir: Path, rate: int, stderr: int = subprocess.DEVNULL) -> subprocess.Popen:
    """`patronage replay` of ``feed_dir`` at ``rate`` events/s, in the background."""
    return subprocess.Popen(
        [str(BIN / "patronage"), "replay", str(feed_dir), "--rate", str(rate), "--quiet"],
        env={**os.environ, **c.env},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def write_feed(c: Cluster, data: SyntheticData) -> Path:
    """A directory `patronage replay` merges by event time (as if live)."""
    feed = c.tmp / "feed"
    feed.mkdir(exist_ok=True)
    for name, rows in (
        ("purchases", data.purchases),
        ("touchpoints", data.touchpoints),
        ("customer-updates", data.customer_updates),
    ):
        with (feed / f"{name}.jsonl").open("wb") as fh:
            for row in rows:
                fh.write(orjson.dumps(row) + b"\n")
    return feed


def check_every_customer(c: Cluster, data: SyntheticData, index: int = 0) -> int:
    """Every customer's profile equals the batch computation, RFM scores included (ranked
    within the customer's partition: the same with one worker or several)."""
    expected = oracle.compute(data.purchases, data.touchpoints, data.customer_updates)
    scores = oracle.rfm_scores(expected, int(c.env["PATRONAGE_PARTITIONS"]))
    for cid, e in expected.items():
        doc = c.profile(cid, index)
        assert doc is not None, cid
        check_customer(doc, e, scores)
    return len(expected)


def check_triggers(c: Cluster) -> tuple[int, int]:
    """A downstream reader of `triggers`: no trigger id twice with different content, no
    (customer, type, episode) under two ids (triggered twice). Returns (records, distinct)."""
    records = c.read_topic("triggers")
    by_id: dict[str, dict] = {}
    for r in records:
        first = by_id.setdefault(r["trigger_id"], r)
        assert first == r, f"trigger {r['trigger_id']} sent twice with different content:\n{first}\n{r}"
    episodes: dict[tuple, str] = {}
    for tid, r in by_id.items():
        if "episode" not in r:
            continue
        key = (r["customer_id"], r["type"], r["episode"])
        assert episodes.setdefault(key, tid) == tid, f"{key} triggered twice: {episodes[key]} and {tid}"
    return len(records), len(by_id)


def worker_kills_under_load(
    c: Cluster, *, customers: int, kills: int, rate: int, seed: int
) -> dict[str, float | int | list[float]]:
    """Feed a generated population (merged by event time, at ``rate`` events/s) and ``kill -9``
    the worker ``kills`` times at random moments while it is fed, restarting it each time;
    then every customer must equal the batch computation and the triggers be clean."""
    data = generate(customers, seed=seed)
    events = len(data.purchases) + len(data.touchpoints) + len(data.customer_updates)
    feed_dir = write_feed(c, data)
    rng = random.Random(seed)
    c.start_worker()
    feed = start_feed(c, feed_dir, rate, stderr=subprocess.PIPE)
    resumes: list[float] = []
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 3.0))
            assert feed.poll() is None, "the feed ended before every kill was done: lower the rate"
            c.workers[0][0].kill9()
            killed = time.monotonic()
            c.start_worker()  # ready: tables recovered from the changelog
            resumes.append(time.monotonic() - killed)
        assert feed.wait(timeout=600) == 0, feed.stderr.read() if feed.stderr else ""
    finally:
        if feed.poll() is None:
            feed.kill()
    c.wait(timeout=300)
    checked = check_every_customer(c, data)
    records, distinct = check_triggers(c)
    assert distinct > 0, "no trigger at all: the trigger check tested nothing"
    changes = c.read_topic("lifecycle-changes")
    distinct_changes = {ch["change_id"]: ch for ch in changes}
    for ch in changes:
        assert distinct_changes[ch["change_id"]] == ch, "a lifecycle change re-sent with other content"
    log = "".join(p.read_text(errors="replace") for p in c.tmp.glob("worker*.log"))
    assert "Traceback" not in log, log[log.find("Traceback") - 2000 :][:6000]
    assert "offset regression" not in log, "a regression reported though the broker lost nothing"
    return {
        "events": events,
        "customers": checked,
        "kills": kills,
        "resume_s": resumes,
        "triggers": records,
        "distinct_triggers": distinct,
    }


def test_worker_kill_9_twice_while_fed_every_customer_exact_and_no_trigger_twice(cluster: Cluster) -> None:
    """The fast subset of `make chaos` (there: 5 kills while >= 50,000 events are fed)."""
    stats = worker_kills_under_load(cluster, customers=150, kills=2, rate=900, seed=71)
    assert stats["events"] >= 10_000
    print("worker kill -9 under load:", stats)
