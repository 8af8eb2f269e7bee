"""The worker's HTTP access token (``PATRONAGE_WEB_TOKEN``): when set, every endpoint but
``/healthz`` answers 401 unless the request carries it.

Accepted forms: ``Authorization: Bearer <token>`` (the CLI, Prometheus' ``authorization``
scrape option, scripts) and HTTP Basic with the token as the password, any user name (so a
browser can open the page: it prompts on the 401's ``Basic`` challenge). Compared in constant
time; the token is never logged or echoed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import SecretStr

# liveness/readiness probes (Kubernetes, compose, the local stack) carry no credentials
OPEN_PATHS = frozenset({"/healthz", "/healthz/"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def presented_token(authorization: str) -> bytes | None:
    """The token an ``Authorization`` header carries (Bearer, or Basic's password), or None."""
    scheme, _, rest = authorization.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer" and rest:
        return rest.encode()
    if scheme.lower() == "basic" and rest:
        try:
            decoded = base64.b64decode(rest, validate=True)
        except (binascii.Error, ValueError):
            return None
        _, sep, password = decoded.partition(b":")
        return password if sep else None
    return None


def token_matches(authorization: str, token: SecretStr) -> bool:
    given = presented_token(authorization)
    expected = token.get_secret_value().encode()
    # compare_digest on equal-length digests: no early exit, no length oracle
    return given is not None and hmac.compare_digest(
        hmac.new(b"patronage", given, "sha256").digest(), hmac.new(b"patronage", expected, "sha256").digest()
    )


def unauthorized(reason: str) -> web.Response:
    response = web.json_response(
        {
            "error": f"unauthorized: {reason}; send 'Authorization: Bearer <PATRONAGE_WEB_TOKEN>' "
            "(the CLI does when PATRONAGE_WEB_TOKEN is set)"
        },
        status=401,
    )
    response.headers.add("WWW-Authenticate", 'Bearer realm="patronage"')
    response.headers.add("WWW-Authenticate", 'Basic realm="patronage", charset="UTF-8"')
    return response


def middlewares(token: SecretStr | None) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    """The aiohttp middlewares for the worker's web server: none without a token."""
    if token is None:
        return []

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        header = request.headers.get("Authorization")
        if not header:
            return unauthorized("this worker requires a token")
        if not token_matches(header, token):
            return unauthorized("wrong token")
        return await handler(request)

    return [require_token]
