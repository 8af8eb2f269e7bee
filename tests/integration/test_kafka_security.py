"""Kafka SASL against a real server: Tansu started with ``--authentication`` (its SCRAM
server) on its own port, whatever PATRONAGE_TEST_BROKER says.

What this proves, and what it cannot (README "Security"): the broker refuses plaintext
clients, patronage's SCRAM settings reach it as a SASL exchange, a wrong password fails with
a line that does not contain the password (the CLI's message, aiokafka's and kafka-python's
logs at DEBUG). A successful login cannot be arranged here: Tansu 0.6 creates SCRAM users
only through an authenticated connection (``tansu user create`` is refused with
NotAuthenticated when authentication is on) and its memory storage forgets users created
before a restart with ``--authentication``; noida-db has no SASL or TLS at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from agents.kafkaauth import aiokafka_options
from agents.localstack import Service, free_port, tansu_binary, wait_port
from agents.settings import Settings
from tests.integration.conftest import BIN, code_env

pytestmark = pytest.mark.integration

PASSWORD = "Wr0ng-Pa55-9c1e"


@pytest.fixture(scope="module")
def authenticating_tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    run = tmp_path_factory.mktemp("tansu-auth")
    port = free_port()
    svc = Service("tansu-auth", run / "tansu.pid", run / "tansu.log")
    listener = f"tcp://127.0.0.1:{port}"
    proc = svc.start(
        [tansu_binary(), "broker", "--listener-url", listener, "--advertised-listener-url", listener,
         "--storage-engine", "memory://tansu/", "--authentication"],
        env={"RUST_LOG": "info"},
    )  # fmt: skip
    wait_port("127.0.0.1", port, 15, "tansu --authentication", proc)
    yield port, svc.log_file
    svc.stop()


def settings_for(port: int, protocol: str = "SASL_PLAINTEXT") -> Settings:
    return Settings(
        broker=f"kafka://127.0.0.1:{port}",
        kafka_security_protocol=protocol,  # type: ignore[arg-type]
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="patronage",
        kafka_sasl_password=SecretStr(PASSWORD),
    )


async def _start(settings: Settings) -> BaseException | None:
    producer = AIOKafkaProducer(
        bootstrap_servers=",".join(settings.bootstrap_servers),
        request_timeout_ms=5000,
        **aiokafka_options(settings),
    )
    try:
        await asyncio.wait_for(producer.start(), 20)
    except BaseException as exc:
        return exc
    finally:
        await producer.stop()
    return None


def _settled_size(log_file: Path, quiet_s: float = 1.0, limit_s: float = 15.0) -> int:
    """The log's length once it has not grown for ``quiet_s`` (at most ``limit_s``)."""
    size, since, deadline = len(log_file.read_text()), time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(0.1)
        now = len(log_file.read_text())
        if now != size:
            size, since = now, time.monotonic()
    return size


def test_scram_settings_reach_the_broker_and_a_wrong_password_is_never_printed(
    authenticating_tansu: tuple[int, Path], caplog: pytest.LogCaptureFixture
) -> None:
    port, broker_log = authenticating_tansu
    caplog.set_level(logging.DEBUG)
    # plaintext: refused by the broker before any request (NotAuthenticated in its log)
    assert asyncio.run(_start(Settings(broker=f"kafka://127.0.0.1:{port}"))) is not None
    assert "NotAuthenticated" in broker_log.read_text()
    # SCRAM-SHA-512 with a password the broker does not know: a SASL exchange, then a failure.
    # The broker may still be writing the plaintext attempt's lines (a busy machine): the
    # mark is taken once its log has stopped growing
    mark = _settled_size(broker_log)
    error = asyncio.run(_start(settings_for(port)))
    assert error is not None
    assert PASSWORD not in repr(error) and PASSWORD not in str(error)
    assert PASSWORD not in caplog.text  # aiokafka's own log lines, at DEBUG
    assert "NotAuthenticated" not in broker_log.read_text()[mark:]  # this time it authenticated (and failed)

    # the CLI: one line naming the settings to check, exit code 2, no password anywhere
    env = {
        **os.environ,
        **code_env(),
        "PATRONAGE_BROKER": f"kafka://127.0.0.1:{port}",
        "PATRONAGE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "PATRONAGE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "PATRONAGE_KAFKA_SASL_USERNAME": "patronage",
        "PATRONAGE_KAFKA_SASL_PASSWORD": PASSWORD,
    }
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "patronage"), "topics", "create"], env=env, capture_output=True, text=True, timeout=120
    )
    took = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "PATRONAGE_KAFKA_SECURITY_PROTOCOL (SASL_PLAINTEXT)" in output
    assert PASSWORD not in output
    assert took < 60, f"{took:.0f}s to report a refused login"
