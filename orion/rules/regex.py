"""Regular expressions of the rule language (`matches`), run by RE2: the time a search
takes grows linearly with the text, whatever the pattern, so `^(a+)+$` against a long
run of `a`s costs microseconds instead of hanging the worker that evaluates it.

RE2 takes nearly every pattern Python's `re` takes; what it refuses (backreferences,
look-around, possessive and atomic groups, `\\Z`, ...) is refused when the rules load,
with what is unsupported and how to write it instead (`RegexError`). The syntax is
https://github.com/google/re2/wiki/Syntax.

`required_literal` reads a pattern (RE2 syntax) for a text every match contains, which
the trigger index files the condition under.

    python -c "from orion.rules.regex import compile_search as c; print(c('^(a+)+$')('a' * 36 + '!'))"
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

from orion.native import import_extension

re2 = import_extension("re2")  # on a thread Python started: see orion.native

# Memory one compiled pattern may use (its program and its DFA cache); RE2 refuses a
# pattern whose program does not fit, and falls back to its (still linear) NFA when the
# cache fills up.
MAX_PATTERN_MEMORY = 8 << 20
MAX_PATTERN_CHARS = 2_000


# RE2 instructions all of one tenant's patterns may compile to (program_budget): compiling
# takes about a microsecond an instruction, so one tenant's rules cannot stall a load for
# minutes with a few hundred small patterns that each compile to a large program
# (`\pN{1000}` is 233,000 instructions); a rule's usual pattern is a few dozen.
MAX_TENANT_PROGRAM = 2_000_000


class RegexError(ValueError):
    """A pattern RE2 does not take; the message says what and how to fix it."""


_budget: contextvars.ContextVar[list | None] = contextvars.ContextVar("orion_regex_budget", default=None)


@contextlib.contextmanager
def program_budget(limit: int = MAX_TENANT_PROGRAM) -> Iterator[None]:
    """The patterns compiled inside share `limit` RE2 instructions: past it,
    compile_search raises RegexError (the rules compiler gives each tenant one)."""
    token = _budget.set([limit, limit])
    try:
        yield
    finally:
        _budget.reset(token)


def _spend(size: int) -> None:
    """Take `size` instructions from the budget (0: only check that some are left, before
    compiling: once it is spent, no further pattern is compiled at all)."""
    budget = _budget.get()
    if budget is None:
        return
    budget[1] -= size
    if budget[1] < 0 or (size == 0 and budget[1] == 0):
        raise RegexError(f"the tenant's patterns compile to more than {budget[0]:,} RE2 instructions in all; "
                         "use fewer or simpler patterns (large repeats of character classes such as \\pN{1000} "
                         "are the costly ones)")


def _options():
    options = re2.Options()
    options.log_errors = False  # the error goes to the rule author, not to stderr
    options.max_mem = MAX_PATTERN_MEMORY
    return options


_OPTIONS = _options()


def _explain(problem: str) -> str:
    """RE2's error text -> what is not supported and how to write it instead."""
    if problem.startswith("invalid escape sequence: \\") and problem[-1:].isdigit():
        return "RE2 does not support backreferences (\\1, \\2, ...); match the text itself or split the condition"
    if problem.startswith("invalid perl operator: (?=") or problem.startswith("invalid perl operator: (?!"):
        return "RE2 does not support look-ahead ((?=...), (?!...)); use a second condition (not_contains, ...)"
    if problem.startswith("invalid perl operator: (?<"):
        return "RE2 does not support look-behind ((?<=...), (?<!...)); use a second condition"
    if problem.startswith("invalid perl operator: (?P=") or problem.startswith("invalid perl operator: (?P>"):
        return "RE2 does not support named backreferences ((?P=name)); match the text itself"
    if problem.startswith("invalid perl operator: (?>"):
        return "RE2 does not support atomic groups ((?>...)); a plain group (?:...) is as fast in RE2"
    if problem.startswith("invalid perl operator: (?("):
        return "RE2 does not support conditionals ((?(1)...|...)); use two conditions"
    if problem.startswith("invalid perl operator: (?#"):
        return "RE2 does not support comments in patterns ((?#...)); remove them"
    if problem.startswith("invalid perl operator"):
        return (f"{problem}: RE2 takes only the flags i, m, s and U ((?i), (?s:...)); "
                "remove the others (patterns are Unicode already)")
    if problem.startswith("bad repetition operator: ") and problem[-1:] == "+":
        return f"{problem}: RE2 does not support possessive repeats (*+, ++, ?+); drop the last +"
    if problem == "invalid escape sequence: \\Z":
        return "RE2 writes the end of the text as \\z (or $), not \\Z"
    if problem.startswith("invalid escape sequence"):
        return f"{problem}: RE2 does not know this escape; write the character itself, or escape only punctuation"
    if problem.startswith("invalid repetition size"):
        return f"{problem}: RE2 repeats at most 1000 times ({{n,m}} with n, m <= 1000)"
    if problem.startswith("pattern too large"):
        return "the pattern is too large for RE2 (nested or large repeats); simplify it"
    return f"{problem}; escape special characters with \\"


def compile_search(pattern: str) -> Callable[[str], bool]:
    """`pattern` compiled by RE2, as `search(text) -> bool` (does it match anywhere?).

    Raises RegexError with a message for the rule author."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RegexError(f"the pattern is {len(pattern):,} characters long, more than {MAX_PATTERN_CHARS:,}; "
                         "shorten it or split the condition")
    _spend(0)
    fast, size = _fast_search(pattern)  # compiled once: its program's size, and its search when it has one
    if size is not None:
        _spend(size)
    if fast is not None:
        return fast
    try:
        compiled = re2.compile(pattern, _OPTIONS)  # (what RE2 says of a pattern it refuses)
    except re2.error as err:
        problem = err.args[0] if err.args else ""
        if isinstance(problem, bytes):
            problem = problem.decode("utf-8", "replace")
        raise RegexError(_explain(str(problem))) from None

    def search(text: str) -> bool:
        try:
            return compiled.search(text) is not None
        except UnicodeEncodeError:  # a lone surrogate: no pattern means one
            return False

    return search


def _fast_search(pattern: str) -> tuple[Callable[[str], bool] | None, int | None]:
    """(the search through the binding's RE2 object itself, with no capture groups: a
    third of the cost of `compiled.search` for the short texts rules see; the size of
    the pattern's program). The search is None when the pattern does not compile, or the
    binding does not have the shape this expects (then the public API serves); the size
    is None when it is not known."""
    size = None
    try:
        from re2 import _re2

        options = _options()
        options.never_capture = True
        regexp = _re2.RE2(pattern.encode("utf-8"), options)
        if not regexp.ok():
            return None, None
        size = regexp.ProgramSize()
        match = regexp.Match
        unanchored = _re2.RE2.Anchor.UNANCHORED
        no_match = (-1, -1)
        if match(unanchored, b"", 0, 0)[0] not in (no_match, (0, 0)):
            return None, size
    except (ImportError, AttributeError, TypeError, ValueError):
        return None, size

    def search(text: str) -> bool:
        data = text.encode("utf-8", "surrogatepass")
        return match(unanchored, data, 0, len(data))[0] != no_match

    return search, size


# ASCII characters whose case-insensitive matches are exactly the characters that casefold
# to the same text, in Python's `re` and in RE2 alike: every one but I and i, which `re`
# also matches with the Turkish dotted and dotless i (casefolded "i̇" and "ı").
# tests/test_properties.py and tests/test_operators.py check this against every code point.
CASEFOLD_SAFE_UNDER_IGNORECASE = frozenset(chr(c) for c in range(128)) - {"I", "i"}

_PUNCTUATION = frozenset(chr(c) for c in range(33, 127) if not chr(c).isalnum())


def required_literal(pattern: str) -> str | None:
    """A casefolded text that `value.casefold()` contains whenever the pattern (RE2
    syntax) finds a match in `value`, so the trigger index can file a `matches` condition
    under it as if it were a `contains` (the regular expression is still run on what it
    finds). None when the pattern has no literal of two characters or more outside
    groups, classes, alternatives and repeats.

    Only literal characters at the top level of the pattern count: they occur, in order
    and adjacent, in every match. Anything this does not read with certainty (an escape
    that is not punctuation, `\\Q...\\E`, a flag group) ends the current run or, when it
    could change what the rest means, the reading; under a case-insensitive flag a
    character counts only when case-insensitive matching agrees with casefolding
    (CASEFOLD_SAFE_UNDER_IGNORECASE)."""
    if "\\Q" in pattern:
        return None
    best = run = ""
    pending = None  # the last literal character, until we know no repeat follows it
    ignore_case = False
    i, n = 0, len(pattern)

    def take(char):
        nonlocal run, best
        run += char
        if len(run) > len(best):
            best = run

    def end_run():
        nonlocal run
        run = ""

    while i < n:
        char = pattern[i]
        if char in "*+?":
            pending = None
            end_run()
            i += 1
            continue
        if char == "{":
            close = pattern.find("}", i)
            body = pattern[i + 1:close] if close > 0 else ""
            low, comma, high = body.partition(",")
            if low.isdigit() and (not comma or high == "" or high.isdigit()):
                pending = None  # a repeat of what came before
                end_run()
                i = close + 1
                continue
        if pending is not None:
            take(pending)
            pending = None
        if char == "|":
            return None  # alternatives at the top: no text every match holds
        if char == "(":
            if pattern.startswith("(?", i) and not pattern.startswith("(?P", i):
                close = pattern.find(")", i)
                colon = pattern.find(":", i)
                flags_end = close if colon < 0 or (0 <= close < colon) else colon
                if "i" in pattern[i + 2:flags_end]:
                    if close >= 0 and (colon < 0 or close < colon):
                        ignore_case = True  # (?i) sets the flag for the rest of the pattern
            end = _group_end(pattern, i)
            if end is None:
                return None
            end_run()
            i = end
            continue
        if char == "[":
            end = _class_end(pattern, i)
            if end is None:
                return None
            end_run()
            i = end
            continue
        if char == "\\":
            if i + 1 >= n:
                return None
            escaped = pattern[i + 1]
            if escaped in _PUNCTUATION:
                pending = _literal(escaped, ignore_case)
                if pending is None:
                    end_run()
                i += 2
                continue
            end_run()
            if escaped in "pPx" and pattern.startswith("{", i + 2):
                close = pattern.find("}", i + 2)
                if close < 0:
                    return None
                i = close + 1
            elif escaped in "pP":
                i += 3
            elif escaped == "x":
                i += 4
            elif escaped.isdigit():
                i += 2
                while i < n and pattern[i].isdigit():
                    i += 1
            else:
                i += 2
            continue
        if char in ".^$)":
            end_run()
            i += 1
            continue
        pending = _literal(char, ignore_case)
        if pending is None:
            end_run()
        i += 1
    if pending is not None:
        take(pending)
    return best.casefold() if len(best) >= 2 else None


def _literal(char: str, ignore_case: bool) -> str | None:
    if ignore_case and char not in CASEFOLD_SAFE_UNDER_IGNORECASE:
        return None
    return char


def _group_end(pattern: str, start: int) -> int | None:
    """The index after the `)` closing the group opened at `start`; None if unclosed."""
    depth = 0
    i, n = start, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if char == "[":
            end = _class_end(pattern, i)
            if end is None:
                return None
            i = end
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _class_end(pattern: str, start: int) -> int | None:
    """The index after the `]` closing the class opened at `start` (RE2's rules: a `]`
    first is a member, `[:name:]` is a named class); None if unclosed."""
    i, n = start + 1, len(pattern)
    if i < n and pattern[i] == "^":
        i += 1
    if i < n and pattern[i] == "]":
        i += 1
    while i < n:
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if pattern.startswith("[:", i):
            close = pattern.find(":]", i + 2)
            if close >= 0:
                i = close + 2
                continue
        if char == "]":
            return i + 1
        i += 1
    return None
