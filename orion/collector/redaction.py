"""Secrets never leave the collector: an API key (in Authorization, X-Orion-Key, other
key headers, or a `?key=` query) is cut out of every log line and every error answer,
even when it arrives inside a malformed request that aiohttp quotes back.

`redact(text)` does it to one text; `install_log_redaction()` puts a filter that does it
on the loggers the collector and aiohttp write to and on the root logger's handlers.

    python -c "from orion.collector.redaction import redact; print(redact('Authorization: Bearer ok_0123456789abcdef_s3cr3t'))"
"""
from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"

_SECRETS = (
    # a header line, well formed or not: everything after the name, to the line's end
    (re.compile(r"(?i)\b(proxy-authorization|authorization|x-orion-key|x-api-key|api[-_]key|cookie)"
                r"(\s*[:=]?\s*)[^\r\n'\"]*"), r"\1\2" + REDACTED),
    # a query parameter carrying a key or token
    (re.compile(r"(?i)([?&;](?:key|api_key|apikey|token|access_token)=)[^&\s'\"#]*"), r"\1" + REDACTED),
    (re.compile(r"(?i)\bbearer\s+[^\s'\"]+"), "Bearer " + REDACTED),
    # a collector key anywhere: its id names it and may stay; its secret may not
    (re.compile(r"\bok_([0-9a-f]{16})_[A-Za-z0-9_-]+"), r"ok_\1_" + REDACTED),
)

# The loggers a request's text can reach; the root's handlers get the filter as well.
LOGGERS = ("aiohttp.access", "aiohttp.server", "aiohttp.web", "aiohttp.internal", "asyncio",
           "orion.collector", "orion.collector.app", "orion.collector.commands", "orion.collector.publisher",
           "orion.collector.serving")


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites a record's message, traceback and stack so no key is in them."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the format: keep both, as text
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message), ()
        if record.exc_info:
            # The formatted traceback replaces the exception itself, whose text may hold a key.
            record.exc_text = redact(self._formatter.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactSecrets()


def install_log_redaction() -> None:
    """Add the filter to the collector's and aiohttp's loggers and to every handler of
    the root logger; adding it again changes nothing."""
    targets = [logging.getLogger(name) for name in LOGGERS] + list(logging.getLogger().handlers)
    for target in targets:
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)
