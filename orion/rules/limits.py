"""The budgets that keep one tenant's rules, templates and flows from stopping, stalling
or exhausting memory for everyone: defaults, the ceilings a tenant may raise them to,
and the fixed limits of reading rule files and rendering templates. docs/rules.md
("Limits") and docs/campaigns.md describe them for rule authors.

A tenant sets its own under `settings.limits` (checked by the schema against the
ceilings here); `tenant_limit` reads one with its default.

    python -c "from orion.rules.limits import *; print(DEFAULT_MAX_EMAIL_BYTES, DEFAULT_MAX_CASCADE_ACTIVITIES)"
"""
from __future__ import annotations

# One assembled email (the MIME message, headers and both parts), in bytes.
DEFAULT_MAX_EMAIL_BYTES = 1_000_000
MIN_EMAIL_BYTES = 10_000
MAX_EMAIL_BYTES = 10_000_000

# Activities the flows of one lead may generate from one input activity (or one wake-up),
# all cascade depths together.
DEFAULT_MAX_CASCADE_ACTIVITIES = 100
MAX_CASCADE_ACTIVITIES = 10_000

# Template files and names (orion/rules/template_lookup.py). What a render may do (steps,
# range, nesting, number sizes) is in orion/templates/sandbox.py; the size of what it
# builds is the tenant's max_email_bytes.
TEMPLATE_MAX_FILE_BYTES = 1_000_000  # one template file
TEMPLATE_MAX_NAME_CHARS = 200

LIMIT_DEFAULTS = {
    "max_email_bytes": DEFAULT_MAX_EMAIL_BYTES,
    "max_cascade_activities": DEFAULT_MAX_CASCADE_ACTIVITIES,
}


def tenant_limit(limits: dict | None, name: str) -> int:
    """A tenant's setting `name` from its `settings.limits`, or the default."""
    if limits:
        value = limits.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return LIMIT_DEFAULTS[name]
