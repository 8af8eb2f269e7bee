"""The local stack's pid files name the real servers: killing the pid stops the service."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from agents.localstack import LocalStack, free_port, port_open


def test_killing_the_broker_pid_stops_the_broker(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "run", kafka_port=free_port(), redis_port=free_port())
    stack.start_broker()
    try:
        pid = int((tmp_path / "run" / "broker.pid").read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and port_open("127.0.0.1", stack.kafka_port):
            time.sleep(0.1)
        assert not port_open("127.0.0.1", stack.kafka_port), "the broker outlived its pid"
    finally:
        stack.down()
