"""Security settings without a server: the HTTP token check, the Kafka options each client
library gets from PATRONAGE_KAFKA_*, and secrets that never show in reprs or settings output."""

from __future__ import annotations

import base64
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr, ValidationError

from agents import kafkaauth, webauth
from agents.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t0ken-Very-Secret-42"
PASSWORD = "kafka-Pa55word-xyz"


def test_token_forms() -> None:
    secret = SecretStr(TOKEN)
    assert webauth.token_matches(f"Bearer {TOKEN}", secret)
    assert webauth.token_matches(f"bearer  {TOKEN} ", secret)
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    assert webauth.token_matches(f"Basic {basic}", secret)
    for header in ("", "Bearer", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Token {TOKEN}", "Basic !!!"):
        assert not webauth.token_matches(header, secret), header
    assert webauth.middlewares(None) == []


async def _client(token: str | None) -> TestClient:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=webauth.middlewares(None if token is None else SecretStr(token)))
    for path in ("/healthz/", "/healthz", "/metrics/", "/profile/{cid}/", "/"):
        app.router.add_get(path, ok)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_middleware_requires_the_token_except_on_healthz() -> None:
    client = await _client(TOKEN)
    try:
        for path in ("/healthz/", "/healthz"):
            assert (await client.get(path)).status == 200
        for path in ("/metrics/", "/profile/c1/", "/"):
            resp = await client.get(path)
            assert resp.status == 401, path
            body = await resp.json()
            assert "unauthorized" in body["error"] and TOKEN not in body["error"]
            challenges = resp.headers.getall("WWW-Authenticate")
            assert any(c.startswith("Bearer") for c in challenges)
            assert any(c.startswith("Basic") for c in challenges)  # a browser prompts
            wrong = await client.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status == 401 and "wrong token" in (await wrong.json())["error"]
            good = await client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert good.status == 200, path
    finally:
        await client.close()
    open_client = await _client(None)
    try:
        assert (await open_client.get("/profile/c1/")).status == 200  # no token set: open
    finally:
        await open_client.close()


def test_plaintext_is_the_default_for_every_client() -> None:
    s = Settings()
    assert kafkaauth.faust_credentials(s) is None
    assert kafkaauth.aiokafka_options(s) == {"security_protocol": "PLAINTEXT"}
    assert kafkaauth.kafka_python_options(s) == {"security_protocol": "PLAINTEXT"}


def _tls_files(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a client certificate signed by it (openssl, as the Redis TLS test does)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
        "-subj", "/CN=patronage")  # fmt: skip
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "client.pem", "-days", "1")  # fmt: skip
    return tmp / "ca.pem", tmp / "client.pem", tmp / "client.key"


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_reaches_faust_aiokafka_and_kafka_python(tmp_path: Path, mechanism: str) -> None:
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    ca, cert, key = _tls_files(tmp_path)
    s = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism=mechanism,  # type: ignore[arg-type]
        kafka_sasl_username="svc-patronage",
        kafka_sasl_password=SecretStr(PASSWORD),
        kafka_tls_ca_file=str(ca),
        kafka_tls_cert_file=str(cert),
        kafka_tls_key_file=str(key),
    )
    creds = kafkaauth.faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert PASSWORD not in repr(creds)
    # what Faust hands aiokafka for the worker's consumer and producer
    faust_opts = credentials_to_aiokafka_auth(creds)
    assert faust_opts["security_protocol"] == "SASL_SSL"
    assert faust_opts["sasl_mechanism"] == mechanism
    assert (faust_opts["sasl_plain_username"], faust_opts["sasl_plain_password"]) == (
        "svc-patronage",
        PASSWORD,
    )
    for opts in (kafkaauth.aiokafka_options(s), kafkaauth.kafka_python_options(s)):
        assert opts["security_protocol"] == "SASL_SSL"
        assert opts["sasl_mechanism"] == mechanism
        assert opts["sasl_plain_password"] == PASSWORD
        context = opts["ssl_context"]
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
        assert len(context.get_ca_certs()) == 1  # the given CA, not the system's
    # the clients accept the options (unknown or misspelled keys raise at construction)
    from aiokafka import AIOKafkaProducer
    from kafka import KafkaConsumer

    assert set(kafkaauth.kafka_python_options(s)) <= set(KafkaConsumer.DEFAULT_CONFIG)
    import inspect

    assert set(kafkaauth.aiokafka_options(s)) <= set(inspect.signature(AIOKafkaProducer).parameters)


def test_ssl_without_sasl(tmp_path: Path) -> None:
    import faust

    ca, _, _ = _tls_files(tmp_path)
    s = Settings(kafka_security_protocol="SSL", kafka_tls_ca_file=str(ca), kafka_tls_check_hostname=False)
    creds = kafkaauth.faust_credentials(s)
    assert isinstance(creds, faust.SSLCredentials)
    opts = kafkaauth.aiokafka_options(s)
    assert opts["security_protocol"] == "SSL" and "sasl_mechanism" not in opts
    assert opts["ssl_context"].check_hostname is False


def test_kafka_security_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="PATRONAGE_KAFKA_SASL_PASSWORD"):
        Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u")
    with pytest.raises(ValidationError, match="KEY_FILE"):
        Settings(kafka_tls_cert_file="c.pem")
    with pytest.raises(ValidationError):
        Settings(kafka_sasl_mechanism="GSSAPI")  # type: ignore[arg-type]


def test_secrets_never_show_in_repr_or_settings_output() -> None:
    s = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="u",
        kafka_sasl_password=SecretStr(PASSWORD),
        web_token=SecretStr(TOKEN),
        redis_password=SecretStr("redis-Pw-123"),
    )
    for text in (repr(s), str(s), str(s.model_dump())):
        assert PASSWORD not in text and TOKEN not in text and "redis-Pw-123" not in text
    env = {
        "PATRONAGE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "PATRONAGE_KAFKA_SASL_USERNAME": "u",
        "PATRONAGE_KAFKA_SASL_PASSWORD": PASSWORD,
        "PATRONAGE_WEB_TOKEN": TOKEN,
        "PATRONAGE_REDIS_PASSWORD": "redis-Pw-123",
        "PATRONAGE_REDIS_URL": "redis://app:url-Pw-456@127.0.0.1:6379/0",
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-m", "agents.cli", "settings"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "PATRONAGE_WEB_TOKEN=**********" in out
    assert "PATRONAGE_KAFKA_SASL_PASSWORD=**********" in out
    assert PASSWORD not in out and TOKEN not in out and "redis-Pw-123" not in out
    assert "url-Pw-456" not in out and "PATRONAGE_REDIS_URL=redis://app:**********@127.0.0.1:6379/0" in out


def test_empty_secrets_mean_unset() -> None:
    s = Settings(web_token="", kafka_sasl_password="")  # type: ignore[arg-type]
    assert s.web_token is None and s.kafka_sasl_password is None
