"""What Orion's HTTP services (the collector, the decision service, the analytics API)
share: reading a request's API key, refusing a request without a valid one or over its
key's rate limit, and serving until SIGINT or SIGTERM.

    python -c "from orion.collector.serving import presented_key; help(presented_key)"
"""
from __future__ import annotations

import asyncio
import json
import signal

from aiohttp import web

from orion.collector.keys import KeyStore
from orion.collector.limits import RateLimiter, retry_after_header


def presented_key(request: web.Request) -> str | None:
    """The API key a request presents: Authorization: Bearer KEY, X-Orion-Key: KEY or
    ?key=KEY; None when it presents none."""
    authorization = request.headers.get("Authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return request.headers.get("X-Orion-Key") or request.query.get("key") or None


def _refusal(status: int, body: dict, headers: dict) -> web.Response:
    return web.Response(status=status, headers=headers, text=json.dumps(body, ensure_ascii=False),
                        content_type="application/json", charset="utf-8")


def authorize(request: web.Request, keys: KeyStore, limiter: RateLimiter, rate_limit: float):
    """(the request's key, None), or (None, the answer refusing it): 401 without a key or
    with one unknown or revoked, 429 with Retry-After over the key's rate limit."""
    presented = presented_key(request)
    if presented is None:
        return None, _refusal(401, {"error": "missing_key", "detail": "send the API key as Authorization: Bearer "
                                    "KEY, X-Orion-Key: KEY or ?key=KEY"},
                              {"WWW-Authenticate": 'Bearer realm="orion"'})
    key = keys.verify(presented)
    if key is None:
        return None, _refusal(401, {"error": "invalid_key", "detail": "this API key is unknown or revoked"},
                              {"WWW-Authenticate": 'Bearer realm="orion", error="invalid_token"'})
    wait = limiter.take(key.id)
    if wait:
        return None, _refusal(429, {"error": "rate_limited",
                                    "detail": f"this key may make {rate_limit:g} requests a second"},
                              {"Retry-After": retry_after_header(wait)})
    return key, None


async def wait_until_stopped(stop: asyncio.Event | None = None) -> None:
    """Until SIGINT or SIGTERM, or until `stop` is set (the only way off the main thread,
    where signal handlers cannot be installed: the tests)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    except (RuntimeError, ValueError):  # not the main thread (tests): `stop` ends it
        pass
    await stop.wait()
