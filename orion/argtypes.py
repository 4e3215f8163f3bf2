"""argparse types the commands share: numbers in range, ports, Pub/Sub names, an output
directory. Each refuses a bad value with argparse's usage error (exit 2), never a
traceback later.

    python -c "from orion.argtypes import non_negative; print(non_negative('1.5'))"
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative(text: str) -> float:
    """A finite number, 0 or more."""
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number, 0 or more, not {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number over 0."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number more than 0, not {text}")
    return value


def port(text: str) -> int:
    """A TCP port to listen on: 0 (any free one) to 65535."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {value}")
    return value


def _pubsub_name(text: str, kind: str) -> str:
    parts = text.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != kind or not parts[1] or not parts[3]:
        raise argparse.ArgumentTypeError(f"{text!r} is not projects/PROJECT/{kind}/{kind[:-1].upper()}")
    return text


def pubsub_topic(text: str) -> str:
    return _pubsub_name(text, "topics")


def pubsub_subscription(text: str) -> str:
    return _pubsub_name(text, "subscriptions")


def new_file(text: str) -> Path:
    """A file to write (the command makes its folder): not a folder, nor under a file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{parent} is a file, so {text} cannot be made")
            break
    return path


def printable(text: str) -> str:
    """Text as one field of a line a command prints: tabs, line breaks and other control
    characters written as escapes (\\t, \\n, \\x1b ...), so one value stays one field of
    one line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
