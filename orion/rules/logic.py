"""Filter logic: `all`, `any`, or an advanced expression over filter numbers such as
`1 and (2 or not 3)`, parsed once into a function of "is filter i met?".

    python -c "from orion.rules.logic import parse_logic; f = parse_logic('1 and (2 or 3)', 3); print(f(lambda i: i != 2))"
"""
from __future__ import annotations

import re
from typing import Callable

from orion.rules.source import short_repr

FilterTest = Callable[[int], bool]
Logic = Callable[[FilterTest], bool]

_TOKEN = re.compile(r"\s*(?:(\d+)|(and|or|not)\b|([()])|(\S+))", re.IGNORECASE)


class LogicError(ValueError):
    """The expression is malformed; the message says where and how to fix it."""


def parse_logic(text: str, filter_count: int) -> Logic:
    """Compile `all`, `any` or an expression over filters 1..filter_count.

    Raises LogicError when the expression is malformed, names a filter that does not
    exist, or leaves a filter unused (an unused filter is almost always a mistake).
    """
    word = text.strip().lower()
    if word == "all":
        return lambda met: all(met(i) for i in range(1, filter_count + 1))
    if word == "any":
        return lambda met: filter_count == 0 or any(met(i) for i in range(1, filter_count + 1))
    if filter_count == 0:
        raise LogicError(f"logic {short_repr(text)} names filters, but the campaign has none")
    tokens = _tokens(text)
    parser = _Parser(tokens, text, filter_count)
    tree = parser.expression()
    if parser.pos != len(tokens):
        raise LogicError(f"unexpected {short_repr(tokens[parser.pos][1])} in logic {short_repr(text)}")
    unused = sorted(set(range(1, filter_count + 1)) - parser.used)
    if unused:
        raise LogicError(
            f"logic {short_repr(text)} does not use filter {', '.join(map(str, unused))}; "
            "use it in the expression or remove the filter"
        )
    return tree


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens = []
    for match in _TOKEN.finditer(text):
        number, word, paren, junk = match.groups()
        if junk is not None:
            raise LogicError(
                f"unexpected {short_repr(junk)} in logic {short_repr(text)}; "
                "write filter numbers with and, or, not and parentheses, e.g. 1 and (2 or 3)"
            )
        if number is not None:
            tokens.append(("num", number))
        elif word is not None:
            tokens.append((word.lower(), word))
        elif paren is not None:
            tokens.append((paren, paren))
    return tokens


class _Parser:
    """Recursive descent: expression := term (or term)*; term := factor (and factor)*;
    factor := not factor | NUMBER | ( expression )."""

    # Parentheses and `not`s nested deeper than this are refused: the parser and the
    # compiled logic recurse once per level.
    MAX_DEPTH = 50

    def __init__(self, tokens: list[tuple[str, str]], text: str, filter_count: int):
        self.tokens, self.text, self.count = tokens, text, filter_count
        self.pos = 0
        self.depth = 0
        self.used: set[int] = set()

    def _peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def expression(self) -> Logic:
        parts = [self.term()]
        while self._peek() == "or":
            self.pos += 1
            parts.append(self.term())
        if len(parts) == 1:
            return parts[0]
        return lambda met: any(p(met) for p in parts)

    def term(self) -> Logic:
        parts = [self.factor()]
        while self._peek() == "and":
            self.pos += 1
            parts.append(self.factor())
        if len(parts) == 1:
            return parts[0]
        return lambda met: all(p(met) for p in parts)

    def factor(self) -> Logic:
        kind = self._peek()
        if kind is None:
            raise LogicError(f"logic {short_repr(self.text)} ends too early; a filter number is missing")
        self.pos += 1
        if kind in ("not", "("):
            self.depth += 1
            if self.depth > self.MAX_DEPTH:
                raise LogicError(f"logic {short_repr(self.text)} nests parentheses and `not` more than "
                                 f"{self.MAX_DEPTH} deep; simplify it")
            try:
                return self._nested(kind)
            finally:
                self.depth -= 1
        return self._simple(kind)

    def _nested(self, kind: str) -> Logic:
        if kind == "not":
            inner = self.factor()
            return lambda met: not inner(met)
        inner = self.expression()
        if self._peek() != ")":
            raise LogicError(f"logic {short_repr(self.text)} has an unclosed '('")
        self.pos += 1
        return inner

    def _simple(self, kind: str) -> Logic:
        if kind == "num":
            digits = self.tokens[self.pos - 1][1]
            number = int(digits) if len(digits) <= 9 else 0  # past int()'s digit limit otherwise
            if not 1 <= number <= self.count:
                raise LogicError(
                    f"logic {short_repr(self.text)} names filter {short_repr(digits)[1:-1]}, but filters are numbered "
                    f"1 to {self.count}"
                )
            self.used.add(number)
            return lambda met: met(number)
        raise LogicError(
            f"unexpected {short_repr(self.tokens[self.pos - 1][1])} in logic {short_repr(self.text)}; "
            "expected a filter number, 'not' or '('"
        )
