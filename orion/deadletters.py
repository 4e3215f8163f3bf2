"""The one shape of a dead letter, used by every stage: the element as it arrived, a short
reason code, and a detail that says what was wrong. Nothing bad is dropped silently.

    python -c "from orion.deadletters import DeadLetter; print(DeadLetter('{', 'malformed_json', 'x').to_json())"
"""
from __future__ import annotations

import json
from typing import Any, NamedTuple


class DeadLetter(NamedTuple):
    element: Any  # raw text as received where there was text, else the record
    reason: str
    detail: str
    source: str | None = None  # where it came from, e.g. "events.jsonl:17"

    def to_json(self) -> str:
        element = self.element
        if isinstance(element, (bytes, bytearray)):
            element = element.decode("utf-8", errors="replace")
        record = {"element": element, "reason": self.reason, "detail": self.detail, "source": self.source}
        text = json.dumps(record, ensure_ascii=False, default=str)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Text that is not valid Unicode (a lone surrogate, say: one reason a store
            # refuses a row) is kept as \uXXXX escapes, so the dead letter can be written.
            text = json.dumps(record, ensure_ascii=True, default=str)
        return text
