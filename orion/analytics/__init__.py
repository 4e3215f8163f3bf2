"""Real-time analytics over what the activity graph does: event-time roll-ups built at
ingest (per tenant and minute, with hours and days built from the minutes), kept in a
roll-up store beside the activities, and read by `orion analytics query`, an HTTP API and
a dashboard.

- `orion.analytics.rollup`: the engine-neutral core: what the lead step emits in,
  (tenant, bucket, dimensions) aggregates out (counts, HyperLogLog sketches of the
  leads, sums), mergeable; the per-bucket state both engines keep.
- `orion.store.rollups_*`: the roll-up store (SQLite, MySQL, Bigtable), by URI.
- `orion.analytics.query`: the query engine; `orion.analytics.commands`: the CLI;
  `orion.analytics.app`: the HTTP API and the dashboard.
- `orion.transforms.rollups` (Beam) and `orion.flink.rollups` (Flink): the engines'
  adapters.

    orion analytics query --tenant acme --metric events --by type --granularity hour \\
        --from 2026-11-22T00:00:00Z --to 2026-11-23T00:00:00Z
"""
