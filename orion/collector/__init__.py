"""The HTTP intake collector: web pages, mobile apps and devices POST events; each is
checked against its tenant's activity schemas with the key's tenant; accepted events go
to Pub/Sub or Kafka, many per message or record, for the graph's parsers. See
docs/collector.md.

    orion collect --topic projects/P/topics/activities --keys orion-data/collector-keys.yaml
    orion collect --kafka-servers 127.0.0.1:9092 --kafka-topic activities --keys orion-data/collector-keys.yaml

Modules: `keys` (hashed API keys), `limits` (per-key rate limit), `checking` (body ->
per-event verdicts, decompression), `publisher` (aggregation, Pub/Sub, backpressure),
`kafka` (the Kafka sink: a lead's events in one partition), `metrics` (Prometheus),
`redaction` (no key in a log line or an answer), `settings` (the collector's settings
and defaults), `app` (aiohttp routes, timeouts, the connection cap), `commands` (the
command line).
"""
from orion.collector.commands import add_collect_command

__all__ = ["add_collect_command"]
