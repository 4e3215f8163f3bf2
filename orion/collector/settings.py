"""The collector's settings and their defaults, apart from its aiohttp application
(orion.collector.app) so that the command line can show the defaults without loading
the web server.

    python -c "from orion.collector.settings import CollectorSettings; print(CollectorSettings())"
"""
from __future__ import annotations

from dataclasses import dataclass

from orion.activities import MAX_ACTIVITY_BYTES
from orion.collector.checking import MAX_RATIO


@dataclass(frozen=True)
class CollectorSettings:
    max_batch: int = 1000              # events per request
    max_body_bytes: int = MAX_ACTIVITY_BYTES  # bytes per request body, also after decompression
    rate_limit: float = 100.0          # requests per second per key; 0: none
    rate_burst: float | None = None    # default: max(1, rate_limit)
    flush_events: int = 1000           # a message is sent when it holds this many events,
    flush_bytes: int = 1_000_000       # or this many bytes,
    flush_seconds: float = 0.05        # or this long after its first event
    max_pending_bytes: int = 64_000_000  # waiting for Pub/Sub or Kafka; past it: 503
    publish_timeout: float = 10.0      # seconds for Pub/Sub or Kafka to acknowledge a message or record
    retry_after: float = 2.0           # seconds, in Retry-After of a 503
    cors_origin: str = "*"             # Access-Control-Allow-Origin for web pages
    max_compression_ratio: float = MAX_RATIO  # a compressed body inflates at most this many times
    idle_timeout: float = 15.0         # seconds a connection may wait for (the rest of) a request line
                                       # and headers: before its first request and between requests
    body_timeout: float = 30.0         # seconds for a request's body to arrive; longer: 408
    max_connections: int = 1000        # open connections; past it, the oldest idle one is closed, or 503
