"""Correct counters on Beam's bundle-based DirectRunner (the local streaming runner).

That runner gives every bundle a fresh metrics container and enters it through the worker
thread's state sampler, but the sampler caches its scoped states by step name, with the
container they were first created with. From a thread's second bundle of a step on, the
step's counters go to a container that was already committed and is never read again: a
streaming `orion run` reported the events of its first Pub/Sub pull only. `install()`
makes the sampler drop a cached state whose container is not the one asked for, so each
bundle counts into its own container. Runners that keep one container per step (the
FnApiRunner, Dataflow, Flink) ask for the cached one and are unaffected.

    python -c "from orion.runners.direct_metrics import install; install()"
"""
from __future__ import annotations

import threading

from apache_beam.runners import common
from apache_beam.runners.worker import statesampler
from apache_beam.utils.counters import CounterName

_lock = threading.Lock()
_installed = [False]


def install() -> None:
    """Patch the state sampler once per process (idempotent)."""
    with _lock:
        if _installed[0]:
            return
        original = statesampler.StateSampler.scoped_state

        def scoped_state(self, name_context, state_name, io_target=None, metrics_container=None):
            if metrics_container is not None:
                context = (name_context if isinstance(name_context, common.NameContext)
                           else common.NameContext(name_context))
                key = CounterName(state_name + "-msecs", stage_name=self._prefix,
                                  step_name=context.metrics_name(), io_target=io_target)
                cached = self._states_by_name.get(key)
                if cached is not None and cached.metrics_container is not metrics_container:
                    del self._states_by_name[key]
            return original(self, name_context, state_name, io_target, metrics_container)

        statesampler.StateSampler.scoped_state = scoped_state
        _installed[0] = True
