"""Cheaper DoFn introspection for Beam 2.61: state and timer specs found once per class.

Beam asks `userstate.get_dofn_specs(dofn)` whether a DoFn is stateful and which timers
it has many times per DoFn: when the graph is built, when it is turned into its runner
form, and every time a worker builds a bundle processor for it. Each call wraps every
method the DoFn has (about thirty, with DoFn's own) and inspects its signature, so an
`orion run` of a hundred events spent a third of its fixed cost there (0.2 s of CPU), and
the bundle-based DirectRunner (local streaming), which builds a DoFnRunner for every
bundle, paid it on every bundle.

The specs are the default values of the class's methods' parameters (`StateParam`,
`TimerParam`), so one answer serves every instance of a class; `install()` makes
`get_dofn_specs` keep it per class. An instance that holds bound methods of its own
(none of Orion's; a wrapped callable's `process` is a plain function, which Beam skips)
is inspected as before. Callers get fresh sets, so none can change another's.

`shorten_sampling(ms)` is for the in-process local runner only: each bundle processor's
state sampler (Beam's time-per-step bookkeeping, which Orion reads nowhere) sleeps up to
200 ms between samples, and stopping it at the end of a bundle waits for the sleep to
end; a bounded run of a dozen stages waited a quarter of a second doing nothing.
"""
from __future__ import annotations

import threading
import types
import weakref

from apache_beam.runners.worker import statesampler
from apache_beam.transforms import userstate

_lock = threading.Lock()
_installed = [False]
_by_class: "weakref.WeakKeyDictionary[type, tuple[frozenset, frozenset]]" = weakref.WeakKeyDictionary()
_original = userstate.get_dofn_specs


def _has_own_methods(dofn) -> bool:
    own = getattr(dofn, "__dict__", None)
    return own is None or any(isinstance(value, types.MethodType) for value in own.values())


def cached_dofn_specs(dofn):
    """`userstate.get_dofn_specs`, answered once per class: (state specs, timer specs)."""
    if _has_own_methods(dofn):
        return _original(dofn)
    cls = type(dofn)
    found = _by_class.get(cls)
    if found is None:
        states, timers = _original(dofn)  # raises as Beam does for a malformed DoFn
        found = _by_class[cls] = (frozenset(states), frozenset(timers))
    return set(found[0]), set(found[1])


def install() -> None:
    """Route Beam's `userstate.get_dofn_specs` through the per-class cache, once per
    process (idempotent), for every caller: those that look it up on the module and the
    bundle-based DirectRunner, which imported it by name."""
    with _lock:
        if _installed[0]:
            return
        from apache_beam.runners.direct import transform_evaluator

        userstate.get_dofn_specs = cached_dofn_specs
        # The bundle-based DirectRunner imported the function by name.
        transform_evaluator.get_dofn_specs = cached_dofn_specs
        _installed[0] = True


def shorten_sampling(period_ms: int = 20) -> None:
    """Make the state samplers created from now on in this process sample every
    `period_ms` at most (Beam's default 200), so a bundle's end waits that long at most."""
    defaults = statesampler.StateSampler.__init__.__defaults__
    if defaults is None or len(defaults) != 1:
        raise RuntimeError(f"unexpected StateSampler signature {defaults!r}: check orion.transforms.dofn_specs "
                           "against this Beam release")
    statesampler.StateSampler.__init__.__defaults__ = (period_ms,)
