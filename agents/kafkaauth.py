"""Kafka security settings (``PATRONAGE_KAFKA_*``) as each client library wants them.

patronage talks to Kafka through three libraries: Faust (the worker; credentials object),
aiokafka directly (replay, the churn-model and delivered-trigger readers) and kafka-python
(admin, ``wait``, ``tail``, ``churn-model fit --publish``). All three get their options from
here, so one set of settings secures every connection. The SASL password leaves its
``SecretStr`` only inside these option dicts, which are handed to the clients and never logged.
"""

from __future__ import annotations

import ssl
from typing import Any

from agents.settings import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL / SASL_SSL (None for plaintext): verifies the broker against
    ``kafka_tls_ca_file`` (else the system's CAs), presents a client certificate if set."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.kafka_tls_ca_file or None)
    context.check_hostname = settings.kafka_tls_check_hostname
    if settings.kafka_tls_cert_file:
        context.load_cert_chain(settings.kafka_tls_cert_file, settings.kafka_tls_key_file or None)
    return context


def _password(settings: Settings) -> str | None:
    secret = settings.kafka_sasl_password
    return None if secret is None else secret.get_secret_value()


def faust_credentials(settings: Settings) -> Any:
    """``broker_credentials`` for the Faust app (None: plaintext)."""
    import faust

    protocol = settings.kafka_security_protocol
    context = ssl_context(settings)
    if protocol.startswith("SASL_"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=_password(settings),
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer`` / ``AIOKafkaConsumer``."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = _password(settings)
    return options


def kafka_python_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's ``KafkaAdminClient`` / ``KafkaConsumer`` /
    ``KafkaProducer`` (the same TLS context object as the asyncio clients)."""
    return aiokafka_options(settings)  # kafka-python takes the same names for these
