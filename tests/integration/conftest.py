"""Integration fixtures: a real Kafka-protocol broker (noida-db, or Tansu with
PATRONAGE_TEST_BROKER=tansu: agents/localstack.py) and Redis on free loopback ports for each
test, and its workers (own topics prefix and consumer group).

Workers and CLI commands run as ``patronage`` subprocesses with this checkout first on
PYTHONPATH, so they run the code under test even when the ``patronage`` script is an
editable install of another checkout (a git worktree sharing one virtualenv)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.localstack import LocalStack, Service, free_port, wait_worker_ready

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
_counter = itertools.count()


def code_env() -> dict[str, str]:
    """Environment making subprocesses import ``agents`` etc. from this checkout."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(ROOT) if not path else f"{ROOT}{os.pathsep}{path}"}


@pytest.fixture(scope="session")
def code_checked(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Workers started by these tests import this checkout (see the module docstring)."""
    where = subprocess.run(
        [sys.executable, "-c", "import agents; print(agents.__file__)"],
        env={**os.environ, **code_env()},
        cwd=tmp_path_factory.mktemp("where"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(ROOT), f"workers would run {where}, not {ROOT}"


@pytest.fixture
def stack(code_checked: None, tmp_path: Path) -> Iterator[LocalStack]:
    """A broker and Redis of the test's own. Not one for the session: noida-db keeps its whole
    state in memory and rewrites it to disk every ~10 s, so its CPU grows with everything
    stored (measured: a full core, continuously, once ~90 MB are stored; ~40 % of the CPU of
    a serial make test went to one session broker); a broker per test starts in < 1 s."""
    s = LocalStack(tmp_path / "stack", kafka_port=free_port(), redis_port=free_port(), web_port=free_port())
    s.start_broker()
    s.start_redis()
    yield s
    s.down()


class Cluster:
    """One isolated patronage deployment on the shared broker."""

    def __init__(self, stack: LocalStack, name: str, tmp: Path, partitions: int = 4, **env: str) -> None:
        self.stack = stack
        self.tmp = tmp
        self.env = {
            "PATRONAGE_BROKER": stack.broker_url,
            "PATRONAGE_REDIS_URL": stack.redis_url,
            "PATRONAGE_APP_ID": f"{name}-app",
            "PATRONAGE_TOPIC_PREFIX": f"{name}-",
            "PATRONAGE_REDIS_PREFIX": name,  # own keys, should a Redis ever be shared
            "PATRONAGE_PARTITIONS": str(partitions),
            "PATRONAGE_LOG_LEVEL": "info",
            # a finished replay stops holding the event clock back after 1 s (default 5 s)
            "PATRONAGE_EVENT_CLOCK_IDLE_S": "1",
            # as the local stack runs workers on noida-db (no long poll): see batching.py; 20 ms,
            # not the local stack's 5: an idle worker then costs ~11 % of a core instead of
            # ~27 % (measured), and make test runs two test processes on two cores
            "PATRONAGE_EMPTY_FETCH_BACKOFF_MS": "20",
            **code_env(),
            **env,
        }
        self.workers: dict[int, tuple[Service, int]] = {}
        self.procs: dict[int, subprocess.Popen] = {}

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(BIN / "patronage"), *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"patronage {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def start_worker(self, index: int = 0, wait_ready: bool = True, **env: str) -> Service:
        port = self.workers[index][1] if index in self.workers else free_port()
        svc = Service(f"w{index}", self.tmp / f"worker{index}.pid", self.tmp / f"worker{index}.log")
        worker_env = {
            **self.env,
            "PATRONAGE_WEB_PORT": str(port),
            "PATRONAGE_DATA_DIR": str(self.tmp / f"data{index}"),
            "PATRONAGE_INSTANCE_ID": f"worker{index}",
            **env,
        }
        proc = svc.start([str(BIN / "patronage"), "worker"], env=worker_env)
        self.workers[index] = (svc, port)
        self.procs[index] = proc
        if wait_ready:
            wait_worker_ready(port, 120, proc, svc.log_file)
        return svc

    def signal_worker(self, index: int = 0, sig: int = signal.SIGTERM) -> None:
        os.killpg(self.procs[index].pid, sig)

    def wait_exit(self, index: int = 0, timeout: float = 10.0) -> int | None:
        """The worker's exit code, or None if it is still running after ``timeout`` s."""
        try:
            return self.procs[index].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop_workers(self) -> None:
        for svc, _ in self.workers.values():
            svc.stop()

    def url(self, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.workers[index][1]}"

    def get(self, path: str, index: int = 0, token: str | None = None) -> tuple[int, Any]:
        """GET a worker's JSON; with the cluster's PATRONAGE_WEB_TOKEN (or ``token``) when set."""
        request = urllib.request.Request(self.url(index) + path)
        token = token if token is not None else self.env.get("PATRONAGE_WEB_TOKEN")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def profile(self, customer_id: str, index: int = 0) -> dict[str, Any] | None:
        status, doc = self.get("/profile/" + urllib.parse.quote(customer_id, safe="") + "/", index)
        if status == 404:
            return None
        assert status == 200, (status, doc)
        return doc

    def write(self, name: str, rows: list[Any]) -> Path:
        path = self.tmp / name
        with path.open("wb") as fh:
            for row in rows:
                fh.write(row if isinstance(row, bytes) else orjson.dumps(row))
                fh.write(b"\n")
        return path

    def replay(self, path: Path, topic: str) -> str:
        return self.run("replay", str(path), "--topic", topic, "--quiet").stderr

    def wait(self, timeout: float = 180, settle_s: float = 1.5) -> None:
        """Until the group committed everything, then until the event clock has treated the
        inputs as idle and ticked to the newest event time (deadlines fired): the summary's
        clock and at-risk counts read the same twice, ``settle_s`` apart."""
        self.run("wait", "--timeout", str(timeout), "--quiet", timeout=timeout + 30)
        time.sleep(settle_s)
        if not self.workers:
            return
        last = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, doc = self.get("/summary/")
            # on the wall clock "as_of" moves by itself: what changed is the counts
            when = None if self.env.get("PATRONAGE_CLOCK") == "wall" else doc.get("as_of")
            now = (when, doc.get("at_risk"), doc.get("notifications")) if status == 200 else None
            if now is not None and now == last:
                return
            last = now
            time.sleep(settle_s)

    def read_topic(self, logical: str, tombstones: bool = False) -> list[Any]:
        """The topic's records as JSON values; tombstones (null values, erasures) only when asked."""
        proc = self.run("tail", logical, "--limit", "10000000", "--json")
        values = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        return values if tombstones else [v for v in values if v is not None]


@pytest.fixture
def cluster(stack: LocalStack, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(stack, f"it{os.getpid()}x{next(_counter)}", tmp_path)
    yield c
    c.stop_workers()
