"""A cheaper size estimate for the Beam SDK worker's user-state cache.

Beam 2.61's state cache weighs every value it caches with `objsize.get_deep_size`, and
objsize begins each call by walking the globals of every loaded module (about two
thousand with the GCP extras) to exclude them. That walk costs about a millisecond, and
the cache calls it on every state read that misses and every state write: a stateful
DoFn with a few state cells then spends over 90% of its time weighing, and the graph runs
at a few hundred events/s (profile: `python -m benchmarks.bench_graph --profile`).

`install()` swaps in an estimate with the same purpose (a byte weight for LRU eviction):
a walk of the value's own referents that skips types, modules and functions (shared, as
objsize also skips them) and samples long lists and tuples instead of walking every
element. It is installed in every process that runs Orion's stateful DoFns (their
`setup`), so multi-process workers get it too. Nothing changes what state holds.

    python -c "from orion.transforms.state_sizing import estimate_size; print(estimate_size([{'a': 1}] * 3))"
"""
from __future__ import annotations

import gc
import sys
import types
import weakref

# Long sequences are weighed from this many evenly spaced elements.
SAMPLE = 32
# Shared objects that do not belong to the value (objsize skips them too).
_SHARED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
           types.CodeType, weakref.ReferenceType, weakref.ProxyType, weakref.CallableProxyType)


def estimate_size(*objs) -> int:
    """Approximate deep size in bytes of `objs` (at least 1)."""
    seen: set[int] = set()
    total = 0
    stack = [(obj, 1.0) for obj in objs]
    while stack:
        obj, scale = stack.pop()
        key = id(obj)
        if key in seen or isinstance(obj, _SHARED) or obj is None:
            continue
        seen.add(key)
        total += sys.getsizeof(obj, 64) * scale
        if isinstance(obj, (str, bytes, int, float, bool)):
            continue
        if isinstance(obj, (list, tuple)) and len(obj) > SAMPLE:
            step = len(obj) / SAMPLE
            weight = scale * len(obj) / SAMPLE
            stack.extend((obj[int(i * step)], weight) for i in range(SAMPLE))
            continue
        stack.extend((child, scale) for child in gc.get_referents(obj))
    return max(1, int(total))


def install() -> None:
    """Make this process's Beam state cache weigh values with `estimate_size`."""
    from apache_beam.runners.worker import statecache

    if statecache.get_deep_size is not estimate_size:
        statecache.get_deep_size = estimate_size
