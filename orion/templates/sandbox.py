"""The sandbox email templates render in: Jinja2's immutable sandbox (no Python internals,
no changing the lead's data), made to refuse outright what the stock sandbox renders as
nothing, and given budgets so one tenant's template cannot exhaust a worker's CPU or
memory (STYLE 18):

- every loop iteration, call, attribute look-up, intercepted operator, filter and output
  piece is a step; a render may take `max_steps` of them (a count, so the same template
  and lead give the same answer on any machine and engine) and, as a backstop,
  `max_seconds` of wall-clock time: past either, TemplateBudgetExceeded
  (`template_budget`);
- `range()` gives at most `max_range` numbers; macros may nest `max_call_depth` deep;
- no value a template builds, and not the output, may hold more than `max_chars`
  characters (the tenant's email size limit): `*`, `+` and `%` on text and lists,
  padding and joining (`center`, `indent`, `join`, `replace`, `format`, `ljust`, ...) are
  checked before they run, everything else after; whole numbers may not grow past
  `max_int_bits` bits (`9**(9**9)`): past any of these, TemplateTooLarge
  (`template_too_large`).

Limits apply to the renders inside `rendering(limits)` (one per email, per thread);
outside one (compiling a template) only the size limits apply.

    python -c "from orion.templates.sandbox import *; print(render_text('{{ range(3)|join }}'))"
"""
from __future__ import annotations

import difflib
import re
import threading
import time
from string import Formatter
from typing import Any, NamedTuple

from jinja2 import nodes, pass_context
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg, generate_lorem_ipsum
from jinja2.visitor import NodeTransformer

# The default budgets of a render (docs/rules.md, "Limits"). Steps are loop iterations,
# calls, attribute look-ups, operators, filters and output pieces. The size limit is the
# tenant's email size limit (settings.limits.max_email_bytes, orion/rules/limits.py).
DEFAULT_MAX_CHARS = 1_000_000
TEMPLATE_MAX_RANGE = 10_000  # numbers range() gives
TEMPLATE_MAX_STEPS = 1_000_000
TEMPLATE_MAX_SECONDS = 5.0
TEMPLATE_MAX_CALL_DEPTH = 64  # macros (and loop(...)) calling each other
TEMPLATE_MAX_INT_BITS = 4_096  # results of ** and * on whole numbers

TEMPLATE_TOO_LARGE = "template_too_large"
TEMPLATE_BUDGET = "template_budget"

# Internal filters the code generator wraps loops and `~` concatenations in.
_LOOP_FILTER = "orion_loop"
_CONCAT_FILTER = "orion_concat"


class TemplateLimitError(Exception):
    """A template went past one of its budgets; `reason` is the dead-letter reason."""

    reason = TEMPLATE_BUDGET


class TemplateTooLarge(TemplateLimitError):
    reason = TEMPLATE_TOO_LARGE


class TemplateBudgetExceeded(TemplateLimitError):
    reason = TEMPLATE_BUDGET


class TemplateLimits(NamedTuple):
    """The budgets of one render (one email: its subject, text and HTML together)."""

    max_chars: int = DEFAULT_MAX_CHARS
    max_steps: int = TEMPLATE_MAX_STEPS
    max_seconds: float = TEMPLATE_MAX_SECONDS
    max_range: int = TEMPLATE_MAX_RANGE
    max_call_depth: int = TEMPLATE_MAX_CALL_DEPTH
    max_int_bits: int = TEMPLATE_MAX_INT_BITS


class RenderBudget:
    """What one render has used. `metered` False: sizes are checked, steps not counted
    (outside a render, when a template compiles)."""

    __slots__ = ("limits", "steps", "depth", "metered", "_clock", "_deadline", "_next_clock_check")

    CLOCK_EVERY = 1024  # steps between looks at the clock

    def __init__(self, limits: TemplateLimits = TemplateLimits(), *, metered: bool = True, clock=time.monotonic):
        self.limits = limits
        self.steps = 0
        self.depth = 0
        self.metered = metered
        self._clock = clock
        self._deadline = clock() + limits.max_seconds if metered else None
        self._next_clock_check = self.CLOCK_EVERY

    def tick(self, n: int = 1) -> None:
        if not self.metered:
            return
        self.steps += n
        if self.steps > self.limits.max_steps:
            raise TemplateBudgetExceeded(
                f"the template took more than {self.limits.max_steps:,} steps (loop iterations, calls, "
                "look-ups); make its loops smaller")
        if self.steps >= self._next_clock_check:
            self._next_clock_check = self.steps + self.CLOCK_EVERY
            if self._clock() > self._deadline:
                raise TemplateBudgetExceeded(
                    f"the template took longer than {self.limits.max_seconds:g} s to render; make it simpler")

    def chars(self, n: int, what: str) -> None:
        if n > self.limits.max_chars:
            raise TemplateTooLarge(f"{what} would hold {n:,} characters, more than the {self.limits.max_chars:,} "
                                   "an email may hold")

    def int_bits(self, bits: int) -> None:
        if bits > self.limits.max_int_bits:
            raise TemplateTooLarge(f"a number of about {bits:,} bits, more than {self.limits.max_int_bits:,}")

    def enter(self) -> None:
        self.depth += 1
        if self.metered and self.depth > self.limits.max_call_depth:
            raise TemplateBudgetExceeded(f"macros call each other more than {self.limits.max_call_depth} deep "
                                         "(a macro calling itself without end?)")

    def leave(self) -> None:
        self.depth -= 1


_UNMETERED = RenderBudget(metered=False)
_local = threading.local()


def _budget() -> RenderBudget:
    return getattr(_local, "budget", None) or _UNMETERED


class rendering:  # noqa: N801 - used as `with rendering(limits) as budget:`, like a function
    """Renders in this thread, inside the block, share one budget under `limits`. (A
    class rather than a contextlib generator, which costs a generator and several more
    calls on every render: a decision renders a snippet in about 13 µs.)"""

    __slots__ = ("budget", "_outer")

    def __init__(self, limits: TemplateLimits):
        self.budget = RenderBudget(limits)

    def __enter__(self) -> RenderBudget:
        self._outer = getattr(_local, "budget", None)
        _local.budget = self.budget
        return self.budget

    def __exit__(self, *exc) -> None:
        _local.budget = self._outer


# --- size checks -------------------------------------------------------------------------

_SIZED = (str, bytes, list, tuple, dict, set, frozenset)


def _check_value(budget: RenderBudget, value: Any, what: str = "a value") -> None:
    if isinstance(value, _SIZED):
        budget.chars(len(value), what)
    elif isinstance(value, int) and not isinstance(value, bool):
        budget.int_bits(value.bit_length())


def _as_int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_printf(budget: RenderBudget, text: str) -> None:
    """Widths and precisions of a `%` format pad the result: their sum is what they can add."""
    padding = 0
    for width, precision in _PRINTF.findall(text):
        if "*" in (width, precision):
            raise TemplateTooLarge("a `*` width in a % format; write the width as a number")
        padding += int(width or 0) + int(precision or 0)
    budget.chars(padding, "the padding of a % format")


def _check_format_string(budget: RenderBudget, text: str) -> None:
    """The same for `str.format`: every number in a field's format spec, added up."""
    padding = 0
    try:
        fields = list(Formatter().parse(text))
    except ValueError:
        return  # str.format raises the same error for the template
    for _, _, spec, _ in fields:
        if spec:
            if "{" in spec:
                raise TemplateTooLarge("a nested {} in a format spec; write the width as a number")
            padding += sum(int(number) for number in re.findall(r"\d+", spec))
    budget.chars(padding, "the padding of a format string")


def _check_method_call(budget: RenderBudget, method: Any, args: tuple, kwargs: dict) -> tuple:
    """Refuse a call of a text method that would build more than the budget allows, before
    it runs; returns the arguments to call with (`join`'s items, materialized)."""
    owner = getattr(method, "__self__", None)
    name = getattr(method, "__name__", "")
    if isinstance(owner, (str, bytes)):
        if name in ("center", "ljust", "rjust", "zfill"):
            width = args[0] if args else kwargs.get("width", 0)
            budget.chars(_as_int(width), f"{name}()")
        elif name == "expandtabs":
            size = _as_int(args[0] if args else kwargs.get("tabsize", 8), 8)
            budget.chars(len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * max(size, 0),
                         "expandtabs()")
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], type(owner)) \
                and isinstance(args[1], type(owner)):
            budget.chars(_replaced_size(owner, args[0], args[1], args[2] if len(args) > 2 else -1), "replace()")
        elif name == "join" and args:
            items = args[0] if isinstance(args[0], (list, tuple, str, bytes)) else list(args[0])
            budget.tick(len(items) // 64)
            budget.chars(len(owner) * max(len(items) - 1, 0)
                         + sum(len(item) for item in items if isinstance(item, (str, bytes))), "join()")
            return (items,) + tuple(args[1:])
        elif name == "translate" and args and isinstance(args[0], dict):
            longest = max((len(v) for v in args[0].values() if isinstance(v, (str, bytes))), default=1)
            budget.chars(len(owner) * max(longest, 1), "translate()")
    elif isinstance(owner, int) and name == "to_bytes":
        budget.chars(_as_int(args[0] if args else kwargs.get("length", 1), 1), "to_bytes()")
    return args


def _replaced_size(text, old, new, count) -> int:
    count = _as_int(count, -1)
    found = text.count(old) if old else len(text) + 1
    if count >= 0:
        found = min(found, count)
    return len(text) + found * max(len(new) - len(old), 0)


# --- filters -----------------------------------------------------------------------------


def _check_filter(budget: RenderBudget, name: str, args: list, kwargs: dict) -> None:
    """Refuse, before it runs, a filter call whose arguments would build too much;
    `args[0]` is the filtered value (`join`'s and `sum`'s items are materialized in place)."""

    def arg(position: int, keyword: str, default: Any = None) -> Any:
        return args[position] if len(args) > position else kwargs.get(keyword, default)

    value = args[0] if args else None
    if name == "center":
        budget.chars(_as_int(arg(1, "width", 80)), "center")
    elif name == "indent":
        width = arg(1, "width", 4)
        text = str(value)
        pad = len(width) if isinstance(width, str) else _as_int(width, 4)
        budget.chars(len(text) + (text.count("\n") + 1) * max(pad, 0), "indent")
    elif name == "wordwrap":
        text = str(value)
        width = max(_as_int(arg(1, "width", 79), 79), 1)
        wrapstring = arg(3, "wrapstring") or "\n"
        budget.chars(len(text) + (len(text) // width + 1) * len(str(wrapstring)), "wordwrap")
    elif name == "replace" and isinstance(value, str):
        old, new = arg(1, "old", ""), arg(2, "new", "")
        if isinstance(old, str) and isinstance(new, str):
            budget.chars(_replaced_size(value, old, new, arg(3, "count", -1)), "replace")
    elif name == "join" and args:
        items = value if isinstance(value, (list, tuple, str)) else list(value)
        args[0] = items
        budget.tick(len(items) // 64)
        separator = arg(1, "d", "")
        budget.chars(len(str(separator)) * max(len(items) - 1, 0)
                     + sum(len(item) for item in items if isinstance(item, str)), "join")
    elif name == "format":
        _check_printf(budget, str(value))
    elif name == "urlize":
        extra = len(str(arg(3, "target") or "")) + len(str(arg(4, "rel") or ""))
        if extra > 200:
            raise TemplateTooLarge("urlize's target and rel may hold 200 characters together")
    elif name == "tojson":
        if _as_int(arg(1, "indent", 0)) > 16:
            raise TemplateTooLarge("tojson indents at most 16 spaces")
    elif name in ("slice", "batch"):
        count = _as_int(arg(1, "slices" if name == "slice" else "linecount", 1), 1)
        if count > budget.limits.max_range:
            raise TemplateBudgetExceeded(f"{name} takes at most {budget.limits.max_range:,}, got {count:,}")
    elif name == "sum" and args:
        start = arg(2, "start", 0)
        if not isinstance(start, (int, float)):
            items = value if isinstance(value, (list, tuple)) else list(value)
            args[0] = items
            total = sum(len(item) for item in items if isinstance(item, _SIZED)) + len(start) \
                if isinstance(start, _SIZED) else 0
            budget.chars(total, "sum")
            budget.tick(len(items) * total // 64)  # adding up sequences copies them, again and again


def _metered_filter(name: str, function):
    """`function`, called with a step counted, its arguments checked and its result
    checked. Takes the context (so it is never run at compile time, by constant folding)
    and passes on what `function` wants of it."""
    passes = _PassArg.from_obj(function)

    @pass_context
    def metered(context, *args, **kwargs):
        budget = _budget()
        budget.tick()
        args = list(args)
        _check_filter(budget, name, args, kwargs)
        if passes is _PassArg.context:
            result = function(context, *args, **kwargs)
        elif passes is _PassArg.eval_context:
            result = function(context.eval_ctx, *args, **kwargs)
        elif passes is _PassArg.environment:
            result = function(context.environment, *args, **kwargs)
        else:
            result = function(*args, **kwargs)
        _check_value(budget, result, f"the result of the {name} filter")
        return result

    metered.__name__ = getattr(function, "__name__", name)
    return metered


@pass_context
def _loop_items(context, iterable):
    """What a `{% for %}` loops over, one step per item."""
    budget = _budget()
    for item in iterable:
        budget.tick()
        yield item


@pass_context
def _concat(context, pieces: list):
    """`a ~ b ~ c`, with the size checked before the text is built."""
    budget = _budget()
    budget.tick()
    budget.chars(sum(len(piece) for piece in pieces if isinstance(piece, str)), "a ~ concatenation")
    joined = markup_join(pieces) if context.eval_ctx.autoescape else str_join(pieces)
    _check_value(budget, joined, "a ~ concatenation")
    return joined


class _Meter(NodeTransformer):
    """Wraps every loop's iterable and every `~` in the metering filters above."""

    def __init__(self, environment):
        self.environment = environment

    def _filter(self, node, name: str, lineno: int):
        made = nodes.Filter(node, name, [], [], None, None, lineno=lineno)
        made.set_environment(self.environment)
        return made

    def visit_For(self, node):
        node = self.generic_visit(node)
        node.iter = self._filter(node.iter, _LOOP_FILTER, node.lineno)
        return node

    def visit_Concat(self, node):
        node = self.generic_visit(node)
        listed = nodes.List(node.nodes, lineno=node.lineno)
        listed.set_environment(self.environment)
        return self._filter(listed, _CONCAT_FILTER, node.lineno)


class _MeteredCodeGenerator(CodeGenerator):
    def visit_Template(self, node, frame=None):
        _Meter(self.environment).visit(node)
        super().visit_Template(node, frame)


# --- the environment ---------------------------------------------------------------------


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002 (Jinja's names)
    if _as_int(n) > 20 or _as_int(max) > 200 or _as_int(min) > 200:
        raise TemplateTooLarge("lipsum makes at most 20 paragraphs of at most 200 words")
    return generate_lorem_ipsum(n, html, min, max)


class TemplateSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with the budgets of this module. Reaching for an unsafe
    attribute raises SecurityError at once instead of yielding an undefined value that
    renders as nothing."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _MeteredCodeGenerator

    def __init__(self, loader=None, autoescape: bool = False):
        super().__init__(loader=loader, autoescape=autoescape, auto_reload=False, cache_size=-1)
        self.globals["range"] = _range
        self.globals["lipsum"] = _lipsum
        self.filters = {name: _metered_filter(name, function) for name, function in self.filters.items()}
        self.filters[_LOOP_FILTER] = _loop_items
        self.filters[_CONCAT_FILTER] = _concat

    def unsafe_undefined(self, obj, attribute):
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def getattr(self, obj, attribute):
        _budget().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        _budget().tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value):
        wrapper = super().wrap_str_format(value)
        if wrapper is not None:
            _check_format_string(_budget(), value.__self__)
        return wrapper

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (the sandbox's own signature)
        budget = _budget()
        budget.tick()
        args = _check_method_call(budget, __obj, args, kwargs)
        budget.enter()
        try:
            result = super().call(__context, __obj, *args, **kwargs)
        finally:
            budget.leave()
        _check_value(budget, result, "the result of a call")
        return result

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.tick()
        if operator == "*":
            _check_product(budget, left, right)
        elif operator == "**":
            _check_power(budget, left, right)
        elif operator == "+" and isinstance(left, _SIZED) and isinstance(right, _SIZED):
            budget.chars(len(left) + len(right), "a + sum")
        elif operator == "%" and isinstance(left, str):
            _check_printf(budget, left)
        result = super().call_binop(context, operator, left, right)
        _check_value(budget, result, f"the result of {operator}")
        return result


def _check_product(budget: RenderBudget, left: Any, right: Any) -> None:
    for sequence, times in ((left, right), (right, left)):
        if isinstance(sequence, _SIZED) and isinstance(times, int) and not isinstance(times, bool):
            budget.chars(len(sequence) * max(times, 0), "a repetition (*)")
            return
    if isinstance(left, int) and isinstance(right, int):
        budget.int_bits(left.bit_length() + right.bit_length())


def _check_power(budget: RenderBudget, base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and not isinstance(exponent, bool) \
            and exponent > 0 and abs(base) > 1:
        if exponent > budget.limits.max_int_bits:
            budget.int_bits(exponent)  # at least a bit per unit of exponent
        budget.int_bits(base.bit_length() * exponent)


def _range(*args) -> range:
    numbers = range(*args)
    try:
        size = len(numbers)
    except OverflowError:
        size = None
    limit = _budget().limits.max_range
    if size is None or size > limit:
        raise TemplateBudgetExceeded(f"range() gives at most {limit:,} numbers")
    return numbers


def render_text(source: str, limits: TemplateLimits = TemplateLimits(), **context) -> str:
    """Render `source` in the sandbox under `limits` (for trying a template out)."""
    environment = TemplateSandbox()
    template = environment.from_string(source)
    with rendering(limits) as budget:
        out = []
        size = 0
        for piece in template.root_render_func(template.new_context(context)):
            budget.tick()
            size += len(piece)
            budget.chars(size, "the output")
            out.append(piece)
    return "".join(out)


# Filters that take the name of a test (select, reject: their first argument; selectattr,
# rejectattr: their second) or of a filter (map: its first) as text.
_TEST_NAME_ARGUMENT = {"select": 0, "reject": 0, "selectattr": 1, "rejectattr": 1}
_FILTER_NAME_ARGUMENT = {"map": 0}


def unknown_name(environment, tree: nodes.Template) -> tuple[int, str] | None:
    """(line, message) for the first filter or test a parsed template names that
    `environment` does not have, or None. Jinja refuses such a name when it compiles the
    template only outside `{% if %}` blocks; inside one the template compiles and fails
    when that block renders, for the leads that reach it. Names given as text to select,
    reject, selectattr, rejectattr and map are checked too."""
    found: list[tuple[int, str]] = []

    def missing(kind: str, name: str, known, lineno: int) -> None:
        if name not in known:
            close = difflib.get_close_matches(name, [n for n in known if not n.startswith("orion_")], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            found.append((lineno, f"no {kind} named {name[:80]!r}{hint}"))

    for node in tree.find_all((nodes.Filter, nodes.Test)):
        if isinstance(node, nodes.Test):
            missing("test", node.name, environment.tests, node.lineno)
            continue
        missing("filter", node.name, environment.filters, node.lineno)
        for positions, kind, known in ((_TEST_NAME_ARGUMENT, "test", environment.tests),
                                       (_FILTER_NAME_ARGUMENT, "filter", environment.filters)):
            position = positions.get(node.name)
            if position is not None and len(node.args) > position:
                argument = node.args[position]
                if isinstance(argument, nodes.Const) and isinstance(argument.value, str):
                    missing(kind, argument.value, known, node.lineno)
    return min(found) if found else None
