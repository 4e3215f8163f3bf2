"""Per-tenant rollout from the legacy MySQL store to the new one, one customer at a time:
the tenant registry (registry.py), the per-tenant counters a running job writes
(metrics.py), the report on one tenant (report.py) and `orion tenants ...` (commands.py).
How a running job applies the stages is orion/store/migrating.py; how to roll a tenant
out is docs/migration.md.

    orion tenants list --store sqlite:///orion-data/activities.db
"""
