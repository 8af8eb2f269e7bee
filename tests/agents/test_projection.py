"""The projection's Redis writes against a real redis-server: memberships move with the
customer, a repeated write changes nothing, a gone customer leaves no trace, a down Redis
is retried without losing marks."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from agents.localstack import LocalStack, free_port, redis_binary, wait_port
from agents.metrics import Metrics
from agents.projection import RedisProjection, _args, redis_target
from agents.settings import Settings
from streams.projection import KeyLayout, Projection


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalStack]:
    s = LocalStack(tmp_path / "r", kafka_port=free_port(), redis_port=free_port())
    s.start_redis()
    yield s
    s.down()


def proj(aud: dict[str, float], risk: tuple[str, int] | None, stage: str = "member") -> Projection:
    return Projection("c1", {"stage": stage, "doc": "{}"}, aud, risk)


def members(r: redis.Redis, pattern: str) -> dict[str, set[str]]:
    return {k.decode(): {m.decode() for m in r.zrange(k, 0, -1)} for k in r.scan_iter(pattern)}


def test_memberships_move_and_repeats_are_no_ops(server: LocalStack) -> None:
    r = redis.Redis(port=server.redis_port)
    keys = KeyLayout("t")
    settings = Settings(redis_url=server.redis_url, redis_prefix="t")
    projection = RedisProjection(
        settings, store={}, partition_of=lambda s: 0, context=lambda p: None, clock_name="event"
    )  # type: ignore[arg-type,return-value]

    async def write(p: Projection) -> None:
        await projection._script(keys=[keys.profile("c1")], args=_args(keys.base, p))

    async def scenario() -> None:
        await write(proj({"a": 0.5, "b": 0.2}, ("s1", 100)))
        await write(proj({"a": 0.5, "b": 0.2}, ("s1", 100)))  # same again
        assert members(r, "t:v1:audience:*") == {"t:v1:audience:a": {"c1"}, "t:v1:audience:b": {"c1"}}
        assert members(r, "t:v1:at_risk:*") == {"t:v1:at_risk:s1": {"c1"}}
        assert r.zscore("t:v1:audience:a", "c1") == 0.5
        await write(proj({"b": 0.3, "c": 0.9}, ("s2", 200), stage="lapsed"))
        assert members(r, "t:v1:audience:*") == {"t:v1:audience:b": {"c1"}, "t:v1:audience:c": {"c1"}}
        assert members(r, "t:v1:at_risk:*") == {"t:v1:at_risk:s2": {"c1"}}
        assert r.hget("t:v1:profile:c1", "stage") == b"lapsed"
        await write(proj({"b": 0.3}, None))
        assert members(r, "t:v1:at_risk:*") == {}
        await write(Projection("c1", None, {}, None))  # erased / merged away
        assert r.keys("t:*") == []
        await projection.close()

    asyncio.run(scenario())


def test_a_down_redis_keeps_marks_and_counts_errors(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    metrics = Metrics()
    settings = Settings(redis_url=f"redis://user:s3cret@127.0.0.1:{port}/0", redis_timeout_s=0.2)
    projection = RedisProjection(
        settings,
        store={},
        partition_of=lambda s: 0,
        context=lambda p: None,  # type: ignore[arg-type,return-value]
        clock_name="event",
        metrics=metrics,
    )
    assert "s3cret" not in projection.target and "user" not in projection.target
    projection.mark(["a", "b"])

    async def scenario() -> None:
        task = asyncio.ensure_future(projection.run())
        await asyncio.sleep(0.8)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert set(projection.pending) == {"a", "b"}
    assert projection.lag_seconds() > 0.5
    assert metrics.projection_errors._value.get() >= 1


def test_redis_target_hides_credentials() -> None:
    assert redis_target("rediss://app:pw@cache.example:6380/2") == "rediss://cache.example:6380/2"
    assert redis_target("redis://localhost") == "redis://localhost:6379/0"


def _certs(tmp: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 (openssl, Debian)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=patronage-test-ca",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "r.key", "-out", "r.csr", "-subj", "/CN=127.0.0.1")
    (tmp / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "r.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "r.crt",
        "-days",
        "2",
        "-extfile",
        "ext",
    )
    return tmp


def test_tls_and_an_acl_user_with_a_password(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    certs = _certs(tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [
            redis_binary(),
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(certs / "r.crt"),
            "--tls-key-file",
            str(certs / "r.key"),
            "--tls-ca-cert-file",
            str(certs / "ca.crt"),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--user",
            "default",
            "off",
            "--user",
            "app",
            "on",
            ">s3cret-pw",
            "~*",
            "&*",
            "+@all",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port("127.0.0.1", port, 10, "redis-server (TLS)", server)

        def settings(password: str) -> Settings:
            return Settings(
                redis_url=f"redis://127.0.0.1:{port}/0",
                redis_tls=True,
                redis_tls_ca_file=str(certs / "ca.crt"),
                redis_username="app",
                redis_password=password,
                redis_prefix="tls",
                redis_timeout_s=1,
            )

        async def write(s: Settings) -> None:
            projection = RedisProjection(
                s, store={}, partition_of=lambda _: 0, context=lambda _: None, clock_name="event"
            )  # type: ignore[arg-type,return-value]
            keys = KeyLayout("tls")
            try:
                await projection._script(
                    keys=[keys.profile("c1")], args=_args(keys.base, proj({"a": 1.0}, None))
                )
            finally:
                await projection.close()

        asyncio.run(write(settings("s3cret-pw")))
        check = redis.Redis(
            host="127.0.0.1",
            port=port,
            ssl=True,
            ssl_ca_certs=str(certs / "ca.crt"),
            username="app",
            password="s3cret-pw",
        )
        assert check.hget("tls:v1:profile:c1", "stage") == b"member"
        assert "s3cret-pw" not in repr(settings("s3cret-pw"))

        metrics = Metrics()
        wrong = RedisProjection(
            settings("wrong"),
            store={},
            partition_of=lambda _: 0,
            context=lambda _: None,
            clock_name="event",
            metrics=metrics,
        )  # type: ignore[arg-type,return-value]
        wrong.mark(["c1"])

        async def run_briefly() -> None:
            task = asyncio.ensure_future(wrong.run())
            await asyncio.sleep(0.5)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        with caplog.at_level("WARNING"):
            asyncio.run(run_briefly())
        assert metrics.projection_errors._value.get() >= 1
        assert wrong.pending
        assert "rediss://127.0.0.1" in caplog.text and "AuthenticationError" in caplog.text
        assert "s3cret" not in caplog.text
    finally:
        server.terminate()
        server.wait(10)
