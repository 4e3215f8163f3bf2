"""The collector's Prometheus metrics, served at GET /metrics in the text format.

Each collector owns its registry (no process-wide state, so tests can run several).

    curl -s localhost:8080/metrics | grep orion_collector_
"""
from __future__ import annotations

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics,
                               generate_latest)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# The *_created series double the output and say nothing a scrape needs (process-wide).
disable_created_metrics()

PUBLISH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class CollectorMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("orion_collector_requests", "HTTP requests answered, by route and status code",
                                ("route", "code"), registry=self.registry)
        self.accepted = Counter("orion_collector_events_accepted", "Events accepted (published to Pub/Sub or Kafka)",
                                ("tenant",), registry=self.registry)
        self.refused = Counter("orion_collector_events_refused",
                               "Events refused, by reason (dead-letter reasons, wrong_tenant, unavailable)",
                               ("tenant", "reason"), registry=self.registry)
        self.publish_seconds = Histogram("orion_collector_publish_seconds",
                                         "Time from a flush to the answer of Pub/Sub (a message) or Kafka (a record)",
                                         ("result",), buckets=PUBLISH_BUCKETS, registry=self.registry)
        self.published_messages = Counter("orion_collector_published_messages",
                                          "Pub/Sub messages or Kafka records published, by result", ("result",),
                                          registry=self.registry)
        self.published_events = Counter("orion_collector_published_events",
                                        "Events in messages or records Pub/Sub or Kafka acknowledged",
                                        registry=self.registry)
        self.pending_events = Gauge("orion_collector_pending_events", "Events waiting for Pub/Sub or Kafka",
                                    registry=self.registry)
        self.connections_open = Gauge("orion_collector_connections_open", "HTTP connections open",
                                      registry=self.registry)
        self.connections_shed = Counter("orion_collector_connections_shed",
                                        "Connections dropped at the connection cap: idle_closed (waiting for a "
                                        "request, closed to make room) or refused (503, every one busy)",
                                        ("action",), registry=self.registry)

    def published(self, events: int, seconds: float, ok: bool) -> None:
        result = "ok" if ok else "failed"
        self.publish_seconds.labels(result).observe(seconds)
        self.published_messages.labels(result).inc()
        if ok:
            self.published_events.inc(events)

    def render(self) -> bytes:
        return generate_latest(self.registry)
