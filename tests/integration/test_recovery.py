"""Crashes and restarts: tables come back from their changelogs, nothing double-counts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request

import pytest
from kafka import TopicPartition

from agents.admin import group_progress
from agents.settings import Settings
from synthetic import generate
from tests import oracle
from tests.integration.conftest import BIN, Cluster
from tests.integration.test_end_to_end import check_customer

pytestmark = pytest.mark.integration


def profiles(cluster: Cluster, ids: list[str]) -> dict[str, dict]:
    out = {}
    for cid in ids:
        doc = cluster.profile(cid)
        assert doc is not None, cid
        doc.pop("rfm")  # ranks move with the population; compared separately
        out[cid] = doc
    return out


def assert_same(after: dict[str, dict], before: dict[str, dict]) -> None:
    assert after.keys() == before.keys()
    diff = {
        (cid, key): (before[cid].get(key), after[cid].get(key))
        for cid in before
        for key in before[cid].keys() | after[cid].keys()
        if before[cid].get(key) != after[cid].get(key)
    }
    assert not diff, f"{len(diff)} fields differ (before, after): {dict(list(diff.items())[:5])}"


def test_restart_recovers_tables_and_replaying_everything_again_changes_nothing(cluster: Cluster) -> None:
    data = generate(120, seed=3)
    cluster.start_worker()
    files = {
        "customer-updates": cluster.write("u.jsonl", data.customer_updates),
        "touchpoints": cluster.write("t.jsonl", data.touchpoints),
        "purchases": cluster.write("p.jsonl", data.purchases),
    }
    for topic, path in files.items():
        cluster.replay(path, topic)
    cluster.wait()
    expected = oracle.compute(data.purchases, data.touchpoints, data.customer_updates)
    ids = sorted(expected)
    before = profiles(cluster, ids)

    cluster.stop_workers()  # graceful (SIGTERM)
    started = time.monotonic()
    cluster.start_worker()  # ready only after changelog recovery
    recovery_s = time.monotonic() - started
    cluster.wait()  # the event clock resumes where it was once the inputs are read and quiet
    assert_same(profiles(cluster, ids), before)
    assert recovery_s < 60

    for topic, path in files.items():  # the same files again: every event is a duplicate
        cluster.replay(path, topic)
    cluster.wait()
    assert_same(profiles(cluster, ids), before)
    scores = oracle.rfm_scores(expected, int(cluster.env["PATRONAGE_PARTITIONS"]))
    for cid, e in expected.items():
        doc = cluster.profile(cid)
        assert doc is not None
        check_customer(doc, e, scores)


def test_kill_9_mid_stream_loses_nothing_and_double_counts_nothing(cluster: Cluster) -> None:
    data = generate(200, seed=21)
    purchases = cluster.write("p.jsonl", data.purchases)
    touches = cluster.write("t.jsonl", data.touchpoints)
    worker = cluster.start_worker()
    env = {**os.environ, **cluster.env}
    # the touchpoints first (at full speed), then the purchases paced (~4.8 s at 1,000/s):
    # the kill comes ~2 s into that feed, however long the touchpoints took on a busy machine
    cluster.replay(touches, "touchpoints")
    feeder = subprocess.Popen(
        [
            str(BIN / "patronage"),
            "replay",
            str(purchases),
            "--topic",
            "purchases",
            "--rate",
            "1000",
            "--quiet",
        ],
        env=env,
    )
    time.sleep(2.0)
    status, before_kill = cluster.get("/summary/")
    assert status == 200
    worker.kill9()  # no shutdown: in-flight batches, unflushed commits are lost
    assert feeder.poll() is None, "the feed should still be running when the worker dies"
    time.sleep(1.0)
    cluster.start_worker()
    assert feeder.wait(timeout=120) == 0
    cluster.wait()

    expected = oracle.compute(data.purchases, data.touchpoints, data.customer_updates[:0])
    scores = oracle.rfm_scores(expected, int(cluster.env["PATRONAGE_PARTITIONS"]))
    for cid, e in expected.items():
        doc = cluster.profile(cid)
        assert doc is not None, cid
        check_customer(doc, e, scores)
    assert before_kill["buyers"] < len(scores), "the kill should have happened mid-stream"

    # Outputs may be re-sent after a crash, but always with the same deterministic id, and
    # the distinct changes still form one consistent chain per customer.
    changes = cluster.read_topic("lifecycle-changes")
    distinct = {c["change_id"]: c for c in changes}
    chains: dict[str, list[dict]] = {}
    for c in distinct.values():
        chains.setdefault(c["customer_id"], []).append(c)
    base = {"stranger", "visitor", "prospect", "customer", "member", "advocate"}
    causes = [
        (c["customer_id"], c["from_stage"], c["to_stage"], c["cause"]["event_id"]) for c in distinct.values()
    ]
    assert len(causes) == len(set(causes)), "one transition with one cause under two ids"
    for cid, e in expected.items():
        chain = chains.get(cid, [])
        # moves between base stages happen once each (risk stages may come and go)
        tos = [c["to_stage"] for c in chain if c["from_stage"] in base and c["to_stage"] in base]
        assert len(tos) == len(set(tos)), (cid, tos)
        if e.stage() != "stranger":
            assert e.stage() in {c["to_stage"] for c in chain} or any(
                c["to_stage"] in ("at_risk", "lapsed", "lost") for c in chain
            ), cid


def test_worker_refuses_mismatched_partition_counts_with_a_clear_message(cluster: Cluster) -> None:
    cluster.run("topics", "create")
    other = dict(cluster.env)
    proc = subprocess.run(
        [str(BIN / "patronage"), "worker"],
        env={**os.environ, **other, "PATRONAGE_PARTITIONS": "6"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "PATRONAGE_PARTITIONS=6" in proc.stderr and "4 partitions" in proc.stderr


STOP_LIMIT_S = 10.0  # a clean stop takes ~1-2 s; Faust's own give-up timeout is 60 s


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def scrape(cluster: Cluster) -> str:
    with urllib.request.urlopen(cluster.url() + "/metrics/", timeout=10) as resp:
        return resp.read().decode()


def duplicates(cluster: Cluster) -> float:
    """Events the worker found it had applied already (the fed data has no duplicates)."""
    return metric(scrape(cluster), "patronage_events_total", outcome="duplicate")


class Stops:
    """Signal the worker and require a prompt, clean exit (code 0, no traceback logged)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.log_at = 0
        self.times: list[tuple[str, float]] = []
        self.commits_checked = 0

    def start(self, wait_ready: bool = True) -> None:
        log = self.cluster.tmp / "worker0.log"
        self.log_at = log.stat().st_size if log.exists() else 0
        self.cluster.start_worker(wait_ready=wait_ready)

    def log(self) -> str:
        with (self.cluster.tmp / "worker0.log").open("rb") as fh:
            fh.seek(self.log_at)
            return fh.read().decode(errors="replace")

    def wait_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.cluster.procs[0].poll() is None, f"worker exited before logging {text!r}"
            assert time.monotonic() < deadline, f"worker did not log {text!r}"
            time.sleep(0.02)

    def stop(self, what: str, sig: int = signal.SIGTERM, then: int | None = None) -> int:
        """``sig``, and ``then`` 0.2 s later if given; returns the exit code."""
        started = time.monotonic()
        self.cluster.signal_worker(0, sig)
        code = self.cluster.wait_exit(0, timeout=0.2) if then is not None else None
        if then is not None and code is None:
            self.cluster.signal_worker(0, then)
        if code is None:
            code = self.cluster.wait_exit(0, timeout=STOP_LIMIT_S)
        took = time.monotonic() - started
        log = self.log()
        if code is None:
            self.cluster.signal_worker(0, signal.SIGKILL)
            tail = "\n".join(log.splitlines()[-40:])
            pytest.fail(f"{what}: worker still running {STOP_LIMIT_S:.0f} s after the signal; log:\n{tail}")
        assert f"Signal received: {int(sig)} " in log, what
        assert "Traceback" not in log, f"{what}: the stop logged an error:\n{log[-6000:]}"
        if code != 0:
            assert then is not None and code == 128 + then, f"{what}: exit code {code}; log:\n{log[-6000:]}"
            assert f"forced exit ({signal.Signals(then).name} while stopping)" in log, what
        else:
            self.check_committed(what, log)
        self.times.append((what, took))
        return code

    def check_committed(self, what: str, log: str) -> None:
        """Everything the worker handled is committed: the next start resumes right after it."""
        found = re.findall(r"batch dispatch stopped; last offsets handled: (.*)", log)
        assert found, f"{what}: the worker did not report what it handled"
        handled = {}
        for item in found[-1].strip().split(", "):
            if item != "none":
                m = re.fullmatch(r"(.+)\[(\d+)\]@(\d+)", item)
                assert m, item
                handled[TopicPartition(m[1], int(m[2]))] = int(m[3])
        if not handled:
            return
        env = self.cluster.env
        settings = Settings(broker=env["PATRONAGE_BROKER"], app_id=env["PATRONAGE_APP_ID"])
        committed = group_progress(settings, sorted({tp.topic for tp in handled})).committed
        for tp, offset in handled.items():
            assert committed.get(tp) == offset + 1, (
                f"{what}: {tp} handled up to {offset}, committed {committed.get(tp)}"
            )
        self.commits_checked += len(handled)


def test_sigterm_stops_a_worker_within_seconds_idle_mid_stream_and_right_after_start(
    cluster: Cluster,
) -> None:
    """Start/stop cycles with the local stack's settings (empty-fetch backoff on): idle,
    mid-stream with records flowing, and right after start. Every SIGTERM (or SIGINT) ends
    the worker within seconds with exit code 0 and nothing logged as an error, having
    committed the offsets of exactly what it handled, so the next start goes on right
    after it and no record is handled twice (the worker counts none as a duplicate); in
    the end the state is exact and no output was sent twice. A second signal during a stop
    ends it at once."""
    data = generate(60, seed=8)
    purchases = cluster.write("p.jsonl", data.purchases)
    touches = cluster.write("t.jsonl", data.touchpoints)
    stops = Stops(cluster)

    idle_from = time.monotonic()
    stops.start()  # idle: nothing to consume
    time.sleep(0.3)
    assert stops.stop("idle") == 0
    stops.start()
    time.sleep(0.3)
    assert stops.stop("idle, Ctrl-C", signal.SIGINT) == 0
    stops.start()
    time.sleep(0.3)
    stops.stop("idle, SIGTERM then SIGINT", signal.SIGTERM, then=signal.SIGINT)  # 0 or 130

    # The feed must outlast the two mid-stream rounds (each about two idle cycles: a start,
    # a stop, a start without waiting, a stop). A cycle takes ~2-4 s on noida-db and ~14 s on
    # Tansu (its JoinGroup and SyncGroup delays), so the feed's rate follows the measured one.
    cycle_s = (time.monotonic() - idle_from) / 3
    feed_s = max(14.0, 6 * cycle_s)
    rates = (f"{len(data.purchases) / feed_s:.1f}", f"{len(data.touchpoints) / feed_s:.1f}")
    env = {**os.environ, **cluster.env}
    feeders = [
        subprocess.Popen(
            [str(BIN / "patronage"), "replay", str(path), "--topic", topic, "--rate", rate, "--quiet"],
            env=env,
        )
        for path, topic, rate in ((purchases, "purchases", rates[0]), (touches, "touchpoints", rates[1]))
    ]
    try:
        for n in range(2):  # mid-stream: records arrive while the worker processes and stops
            stops.start()
            deadline = time.monotonic() + 30
            while metric(scrape(cluster), "patronage_events_total") == 0:  # processing in this run
                assert time.monotonic() < deadline, "the worker processed nothing"
                time.sleep(0.05)
            time.sleep(0.3 + 0.4 * n)
            assert duplicates(cluster) == 0, "records handled before were handled again"
            assert all(f.poll() is None for f in feeders), "the feed should still be running"
            assert stops.stop(f"mid-stream {n + 1}") == 0

            stops.start(wait_ready=False)  # right after start: the fetch loop has just begun
            stops.wait_log("empty-fetch backoff")
            assert stops.stop(f"right after start {n + 1}") == 0

        stops.start()
        for f in feeders:
            assert f.wait(timeout=feed_s + 60) == 0
    finally:
        for f in feeders:
            f.kill()
    cluster.wait()
    assert duplicates(cluster) == 0, "records handled before were handled again"
    expected = oracle.compute(data.purchases, data.touchpoints)
    scores = oracle.rfm_scores(expected, int(cluster.env["PATRONAGE_PARTITIONS"]))
    for cid, e in expected.items():
        doc = cluster.profile(cid)
        assert doc is not None, cid
        check_customer(doc, e, scores)
    changes = cluster.read_topic("lifecycle-changes")
    assert changes, "expected lifecycle changes"
    assert len({c["change_id"] for c in changes}) == len(changes), "a lifecycle change was emitted twice"
    assert stops.stop("idle after catching up") == 0
    assert stops.commits_checked >= 8, "expected the mid-stream stops to have handled records"
    print("stop times:", ", ".join(f"{what} {took:.2f}s" for what, took in stops.times))
