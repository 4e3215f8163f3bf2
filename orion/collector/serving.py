"""What Orion's HTTP services (the collector, the decision service, the analytics API)
share: reading a request's API key, refusing a request without a valid one or over its
key's rate limit, answering every error in JSON (JsonErrorsRunner), and serving until
SIGINT or SIGTERM.

    python -c "from orion.collector.serving import presented_key; help(presented_key)"
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
from typing import Callable

from aiohttp import web

from orion.collector.keys import KeyStore
from orion.collector.limits import RateLimiter, retry_after_header
from orion.collector.redaction import redact

log = logging.getLogger(__name__)


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


def json_answer(status: int, body: dict, headers=None) -> web.Response:
    """A JSON answer (text that is not valid Unicode is sent as \\uXXXX escapes)."""
    try:
        encoded = json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        encoded = json.dumps(body).encode("ascii")
    response = web.Response(status=status, headers=headers, body=encoded)
    response.content_type, response.charset = "application/json", "utf-8"
    return response


def _slug(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "error"


def json_http_error(error: web.HTTPException) -> web.Response:
    """aiohttp's own plain-text answer (404, 405, 417 ...) as JSON: `error` the status's
    name (not_found, method_not_allowed), `detail` aiohttp's text; its other headers
    (Allow, the CORS origin) kept."""
    headers = {name: value for name, value in error.headers.items()
               if name.lower() not in ("content-type", "content-length")}
    detail = redact((error.text or error.reason or "").strip()[:300])
    return json_answer(error.status, {"error": _slug(error.reason or ""), "detail": detail}, headers)


# What precedes the bytes aiohttp quotes after a complaint about a request it could not
# parse: `Invalid header value char:\n\n  b'Authorization: Bearer ...'`.
_QUOTED = re.compile(r"""\s*(?:bytearray\()?b['"]""")


class JsonErrorsHandler(web.RequestHandler):
    """One connection of an Orion service, answering every error in JSON:

    - a request aiohttp could not parse (a malformed header line, say) never reaches the
      app: aiohttp's own answer quotes the offending line back, API key and all, as text,
      and logs it with a traceback. Here: JSON with the kind of fault only, keys cut out,
      one line logged at INFO, counted by `on_unparsed(status)`;
    - aiohttp's plain-text errors (404, 405, 417 ...) become JSON (json_http_error), by
      the check of one class on the way out of every answer."""

    on_unparsed: Callable[[int], None] | None = None

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: an answer is under way, none can follow
            raise ConnectionError("an answer was being sent when the request failed")
        complaint = (message or (str(exc) if exc is not None else "") or "").strip().splitlines()
        # the kind of fault only: not the bytes aiohttp quotes after it
        summary = redact(_QUOTED.split(complaint[0], 1)[0].rstrip(": ")[:200] if complaint else "")
        if status >= 500:
            log.error("answering %s with %d: %s", request.remote, status,
                      redact(f"{type(exc).__name__}: {exc}") if exc is not None else summary,
                      exc_info=exc if isinstance(exc, BaseException) else None)
            response = json_answer(status, {"error": "internal", "detail": "the request failed here; it is logged"
                                            if status == 500 else summary})
        else:
            log.info("request from %s is not valid HTTP (%d): %s", request.remote, status, summary)
            response = json_answer(status, {"error": "bad_request", "detail": f"not a valid HTTP request: {summary}"})
        if self.on_unparsed is not None:
            self.on_unparsed(status)
        response.force_close()
        return response

    def finish_response(self, request, resp, start_time):
        # (not a coroutine of its own: aiohttp awaits what this returns)
        if isinstance(resp, web.HTTPException) and resp.status >= 400 and resp.content_type == "text/plain":
            resp = json_http_error(resp)
        return super().finish_response(request, resp, start_time)


class JsonErrorsServer(web.Server):
    """aiohttp's Server whose connections are `handler_class` (a JsonErrorsHandler)."""

    def __init__(self, handler, *, handler_class: type = JsonErrorsHandler,
                 on_unparsed: Callable[[int], None] | None = None, loop=None, **options):
        super().__init__(handler, loop=loop, **options)
        self.handler_class = handler_class
        self.on_unparsed = on_unparsed
        self.connection_options = {k: v for k, v in options.items()
                                   if k not in ("request_factory", "handler_cancellation")}
        self.connection_loop = loop

    def new_connection(self) -> JsonErrorsHandler:
        connection = self.handler_class(self, loop=self.connection_loop, **self.connection_options)
        connection.on_unparsed = self.on_unparsed
        return connection

    def __call__(self) -> asyncio.Protocol:
        return self.new_connection()


class JsonErrorsRunner(web.AppRunner):
    """aiohttp's AppRunner serving the app through JsonErrorsServer: every error answered
    in JSON, keys never quoted back. `on_unparsed(status)` counts the answers to requests
    that are not valid HTTP; the other keyword arguments are AppRunner's."""

    def __init__(self, app: web.Application, *, on_unparsed: Callable[[int], None] | None = None, **options):
        super().__init__(app, **options)
        self._options = options
        self._on_unparsed = on_unparsed

    def server_options(self) -> dict:
        """What JsonErrorsServer is made with besides the app's handler and factory."""
        return {"on_unparsed": self._on_unparsed}

    async def _make_server(self) -> web.Server:
        # AppRunner's server starts the app; its request handler and factory are kept
        made = await super()._make_server()
        return self.server_class(made.request_handler, request_factory=made.request_factory,
                                 handler_cancellation=made.handler_cancellation, loop=asyncio.get_running_loop(),
                                 **self.server_options(), **self._options)

    server_class: type = JsonErrorsServer
