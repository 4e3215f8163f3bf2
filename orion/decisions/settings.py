"""The decision service's settings and their defaults, apart from its aiohttp
application (orion.decisions.app) so that the command line can show the defaults
without loading the web server.

    python -c "from orion.decisions.settings import DecideSettings; print(DecideSettings())"
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecideSettings:
    max_body_bytes: int = 64_000       # bytes per request body
    max_placements: int = 20           # placements per request
    rate_limit: float = 0.0            # requests per second per key; 0: none
    rate_burst: float | None = None    # default: max(1, rate_limit)
    cache_ttl: float = 0.25            # seconds a lead's profile is reused (the staleness bound)
    cache_entries: int = 20_000        # leads kept in the cache at most
    flush_events: int = 1000           # an impressions message is sent at this many events,
    flush_bytes: int = 1_000_000       # or this many bytes,
    # or this long after its first event: no answer waits for it, and a message costs the
    # service about 0.65 ms of CPU whatever its size, so few large ones
    flush_seconds: float = 0.25
    impression_flush_seconds: float = 0.05  # impressions of many requests are handed over together
    max_pending_bytes: int = 16_000_000  # impressions waiting for Pub/Sub; past it they are refused
    publish_timeout: float = 10.0      # seconds for Pub/Sub to acknowledge a message
    retry_after: float = 1.0           # seconds, in Retry-After of a 503
    cors_origin: str = "*"             # Access-Control-Allow-Origin for web pages
    idle_timeout: float = 15.0         # seconds a keep-alive connection may sit idle
    body_timeout: float = 5.0          # seconds for a request's body to arrive; longer: 408
    # seconds a networked store (MySQL, Bigtable) may take to read a lead; longer: 503
    store_timeout: float = 2.0
