"""Turning what sources deliver into activities or dead letters, engine-neutral.

A file is read line by line (JSONL), in order, with `ReplayLateness`. A message (Pub/Sub)
carries one activity, a JSON array of activities, or JSONL lines: collectors aggregate
many events per message to cut cost, as the personalization vendor did. Every element
that is not a valid activity becomes a DeadLetter with its reason; the rest go on.

The input limits of `orion.activities` hold per activity, whatever carries it: a line, a
message, or an item of a JSON array (a message may be far larger than one activity).
An item over MAX_ACTIVITY_BYTES is `too_large`; one that breaks the array for orjson
(nested too deep, a lone surrogate, a syntax error) is refused alone, the other items of
its array are judged on their own.

Memory stays bounded whatever a file holds: it is read in chunks (`bounded_lines`), so a
line over the limit (a gigabyte, or a whole file without a line feed) is counted and let
go as it is read, never held, and becomes one `too_large` dead letter; the lines after it
are read as usual. A `too_large` dead letter keeps only the first TOO_LARGE_KEPT_BYTES of
its element, and says how large the element was.

    python -c "from orion.intake import parse_payload; from orion.activities import ActivityTypes; print(list(parse_payload(b'[1]', ActivityTypes(), 'demo')))"
"""
from __future__ import annotations

import bz2
import codecs
import gzip
import json
import zlib
from typing import IO, Iterable, Iterator, NamedTuple

import orjson

from orion.activities import (
    MALFORMED_JSON,
    MAX_ACTIVITY_BYTES,
    TOO_LARGE,
    Activity,
    ActivityTypes,
    BadActivity,
    json_text_size,
    parse_activity,
    split_json_array,
    too_large,
)
from orion.deadletters import DeadLetter
from orion.sequencing import LATE, ReplayLateness

# A dead letter of an element over the size limit keeps its beginning only: enough to see
# what it was and who sent it, without a megabyte or more per letter in memory and in the
# dead-letter files.
TOO_LARGE_KEPT_BYTES = 1_000

# Files are read this much at a time, whatever the length of their lines.
READ_CHUNK_BYTES = 64 * 1024


class OverlongLine(NamedTuple):
    """A line of a file longer than the size limit, read past without being held: its
    first TOO_LARGE_KEPT_BYTES, its length (line end excluded) and whether it is only
    white space (then it is skipped, as any blank line)."""

    head: bytes | str
    size: int
    blank: bool


class _Skipping:
    """The overlong line being read past: what of it is kept, and what is counted."""

    __slots__ = ("head", "size", "blank", "last")

    def __init__(self, start: bytes | str):
        self.head = start[:TOO_LARGE_KEPT_BYTES]
        self.size = len(start)
        self.blank = not start.strip()
        self.last = start[-1:]

    def add(self, part: bytes | str) -> None:
        if not part:
            return
        if len(self.head) < TOO_LARGE_KEPT_BYTES:
            self.head += part[:TOO_LARGE_KEPT_BYTES - len(self.head)]
        self.size += len(part)
        if self.blank and part.strip():
            self.blank = False
        self.last = part[-1:]

    def line(self) -> OverlongLine:
        # A carriage return before the line feed ends the line; it is no part of its size.
        carriage_return = self.last in ("\r", b"\r")
        return OverlongLine(self.head, self.size - carriage_return, self.blank)


def _overlong(line: bytes | str) -> OverlongLine:
    return _Skipping(line).line()


def decompressing(file: IO, name: str) -> IO:
    """A binary file object, decompressed by its name's suffix (.gz, .bz2) as it is read,
    a block at a time: read in chunks (bounded_lines), a very compressible overlong line
    is never inflated whole in memory."""
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=file, mode="rb")
    if name.endswith(".bz2"):
        return bz2.BZ2File(file, mode="rb")
    return file


def bounded_lines(file: IO, limit: int = MAX_ACTIVITY_BYTES,
                  chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes | str | OverlongLine]:
    """The lines of a file object, in order and without their line feeds, read
    `chunk_bytes` at a time: at most about `limit` plus one chunk is held at once. A line
    longer than `limit` plus one (a carriage return may end a line) comes as an
    OverlongLine. Binary files (plain, gzip, bz2, Beam's compressed files) give bytes;
    text files give str, measured in characters."""
    read = getattr(file, "read1", None) or file.read  # read1: what has arrived, without waiting for more
    longest = limit + 1
    chunk = read(chunk_bytes)
    if not chunk:
        return
    newline = "\n" if isinstance(chunk, str) else b"\n"
    empty = chunk[:0]
    pieces: list = []  # the line begun in earlier chunks, while it can still be short enough
    held = 0  # the length of `pieces`
    skipping: _Skipping | None = None  # the line begun in earlier chunks, once it is too long
    while chunk:
        parts = chunk.split(newline)
        tail = parts.pop()  # the start of a line that later chunks go on with
        first = 0
        if parts and skipping is not None:
            skipping.add(parts[0])
            yield skipping.line()
            skipping, first = None, 1
        elif parts and pieces:
            pieces.append(parts[0])
            line = empty.join(pieces)
            pieces, held, first = [], 0, 1
            yield line if len(line) <= longest else _overlong(line)
        for n in range(first, len(parts)):
            line = parts[n]
            yield line if len(line) <= longest else _overlong(line)
        if tail:
            if skipping is not None:
                skipping.add(tail)
            else:
                pieces.append(tail)
                held += len(tail)
                if held > longest:
                    skipping = _Skipping(empty.join(pieces))
                    pieces, held = [], 0
        del parts, tail
        chunk = read(chunk_bytes)
    if skipping is not None:
        yield skipping.line()
    elif pieces:
        line = empty.join(pieces)
        yield line if len(line) <= longest else _overlong(line)


def _text(raw: str | bytes) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else raw


def _excerpt(raw: str | bytes | bytearray) -> str:
    """The first TOO_LARGE_KEPT_BYTES of text (UTF-8), never a character cut in two."""
    if isinstance(raw, str):
        raw = raw[:TOO_LARGE_KEPT_BYTES].encode("utf-8", "surrogatepass")
    # Not final: an incomplete character at the cut is held back, not replaced.
    return codecs.getincrementaldecoder("utf-8")("replace").decode(bytes(raw[:TOO_LARGE_KEPT_BYTES]))


def _kept(detail: str) -> str:
    return f"{detail}; the dead letter keeps its first {TOO_LARGE_KEPT_BYTES:,} bytes"


def _too_large_letter(raw: str | bytes | bytearray, size: int, source: str) -> DeadLetter:
    return DeadLetter(_excerpt(raw), TOO_LARGE, _kept(too_large(size).detail), source)


def _element_text(value) -> str:
    """A decoded element as JSON text for its dead letter, whatever it holds."""
    try:
        return json.dumps(value, default=str)
    except (RecursionError, TypeError, ValueError) as err:  # nested past the stack, odd keys
        return f"<a {type(value).__name__} that cannot be written as JSON: {type(err).__name__}>"


def parse_one(raw, types: ActivityTypes, source: str) -> Activity | DeadLetter:
    try:
        return parse_activity(raw, types)
    except BadActivity as bad:
        if isinstance(raw, (str, bytes, bytearray)):
            if bad.reason == TOO_LARGE:
                return DeadLetter(_excerpt(raw), TOO_LARGE, _kept(bad.detail), source)
            element = _text(raw)
        else:
            element = _element_text(raw)
        return DeadLetter(element.rstrip("\n"), bad.reason, bad.detail, source)


def _compact_size(item) -> tuple[int, bytes | None]:
    """An array item's size as compact JSON (the collector publishes exactly that)."""
    try:
        encoded = orjson.dumps(item)
    except TypeError:  # nested past orjson's limit: parse_activity refuses it for its depth
        return 0, None
    return len(encoded), encoded


def parse_payload(payload: str | bytes, types: ActivityTypes, source: str) -> Iterator[Activity | DeadLetter]:
    """One message -> its activities and dead letters, in message order."""
    stripped = payload.lstrip()
    if stripped[:1] in (b"[", "["):
        try:
            items = orjson.loads(payload)
        except orjson.JSONDecodeError as err:
            parts = split_json_array(payload)
            if parts is None:
                detail = f"a batch is a JSON array: {err}"
                size = json_text_size(payload)
                if size > MAX_ACTIVITY_BYTES:
                    yield DeadLetter(_excerpt(payload), MALFORMED_JSON, f"{detail}; the message is {size:,} bytes, "
                                     f"the dead letter keeps its first {TOO_LARGE_KEPT_BYTES:,}", source)
                else:
                    yield DeadLetter(_text(payload), MALFORMED_JSON, detail, source)
                return
            for n, part in enumerate(parts):  # each judged alone, its text measured
                yield parse_one(part.strip(), types, f"{source}[{n}]")
            return
        # Each item may be an activity of the largest size; measured only when they could be.
        measure = json_text_size(payload) > MAX_ACTIVITY_BYTES
        for n, item in enumerate(items):
            if measure:
                size, encoded = _compact_size(item)
                if size > MAX_ACTIVITY_BYTES:
                    yield _too_large_letter(encoded, size, f"{source}[{n}]")
                    continue
            yield parse_one(item, types, f"{source}[{n}]")
        return
    lines = payload.splitlines()
    if len(lines) <= 1:
        yield parse_one(payload, types, source)
        return
    for n, line in enumerate(lines):
        if line.strip():
            yield parse_one(line, types, f"{source}:{n + 1}")


def _without_line_end(line: str | bytes) -> str | bytes:
    # The line end is no part of the activity's JSON text: a line of exactly the limit
    # followed by \n or \r\n is within it.
    line_feed, carriage_return = ("\n", "\r") if isinstance(line, str) else (b"\n", b"\r")
    if line.endswith(line_feed):
        line = line[:-1]
    return line[:-1] if line.endswith(carriage_return) else line


# A dead letter for the rest of a file that cannot be read (a compressed file cut short,
# or one that is not what its suffix says).
UNREADABLE_FILE = "unreadable_file"


def _bad_compressed_data(err: BaseException) -> bool:
    """Whether reading raised for compressed data that is bad, not for the I/O under it:
    a gzip or bz2 file cut short (EOFError), a file that is not gzip (BadGzipFile), data
    zlib cannot inflate, bz2's invalid data (an OSError of its own words)."""
    return (isinstance(err, (EOFError, gzip.BadGzipFile, zlib.error))
            or (type(err) is OSError and not err.errno and "Invalid data stream" in str(err)))
_BOM_TEXT, _BOM_BYTES = "\ufeff", b"\xef\xbb\xbf"


def _without_bom(line):
    """A file's first line without the UTF-8 byte order mark some editors put there."""
    if type(line) is bytes:
        return line[3:] if line.startswith(_BOM_BYTES) else line
    return line[1:] if line.startswith(_BOM_TEXT) else line


def read_lines(
    lines: IO | Iterable[str | bytes | OverlongLine], types: ActivityTypes, source: str,
    allowed_lateness_ms: int | None,
) -> Iterator[Activity | DeadLetter]:
    """A JSONL file, in order -> activities and dead letters (bad lines, and late lines
    unless allowed_lateness_ms is None: then the whole file is one batch, put in order).

    `lines` is the opened file (binary, as both engines open it, or text), read through
    `bounded_lines`, or its lines already read (with or without their line ends). A line
    over the size limit is one `too_large` dead letter citing `source:line`."""
    if hasattr(lines, "read"):
        lines = bounded_lines(lines)
    lateness = ReplayLateness(allowed_lateness_ms) if allowed_lateness_ms is not None else None
    number = 0
    try:
        for number, line in enumerate(lines, 1):
            if type(line) is OverlongLine:
                if not line.blank:
                    yield _too_large_letter(line.head, line.size, f"{source}:{number}")
                continue
            line = _without_line_end(line)
            if number == 1:
                line = _without_bom(line)
            if not line.strip():
                continue
            found = parse_one(line, types, f"{source}:{number}")
            if lateness is not None and isinstance(found, Activity):
                late = lateness.check(found)
                if late is not None:
                    found = DeadLetter(_text(line), LATE, late, f"{source}:{number}")
            yield found
    except (EOFError, OSError, zlib.error) as err:
        if not _bad_compressed_data(err):
            raise  # an I/O error: the bundle fails and is retried, as any other
        # A compressed file cut short, or not compressed at all: what was read went
        # through, the rest is one dead letter, and the other files go on.
        where = "the file cannot be read" if not number else f"the file cannot be read past line {number:,}"
        yield DeadLetter("", UNREADABLE_FILE, f"{where}: {type(err).__name__}: {str(err)[:300]}"
                         + ("; the lines before it were read" if number else ""), f"{source}:{number + 1}")
