"""orion.transforms.dofn_specs: Beam's DoFn state and timer specs found once per class,
with the same answers and errors as Beam's own, and the local runner's shorter sampling."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.coders import VarIntCoder
from apache_beam.runners.direct import transform_evaluator
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.runners.worker import statesampler
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.counters import CounterFactory

from orion.transforms import dofn_specs
from orion.transforms.dofn_specs import cached_dofn_specs
from orion.transforms.evaluate import _LeadStepFn
from orion.transforms.rollups import _RollUpShardsFn


class _CountFn(beam.DoFn):
    COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)

    def process(self, element, count=beam.DoFn.StateParam(COUNT), flush=beam.DoFn.TimerParam(FLUSH)):
        count.write((count.read() or 0) + 1)
        yield element

    @on_timer(FLUSH)
    def on_flush(self, count=beam.DoFn.StateParam(COUNT)):
        count.clear()


class _PlainFn(beam.DoFn):
    def process(self, element):
        yield element


class _TwiceFn(beam.DoFn):
    """Two state parameters with one name: Beam refuses it."""

    A = ReadModifyWriteStateSpec("same", VarIntCoder())
    B = ReadModifyWriteStateSpec("same", VarIntCoder())

    def process(self, element, a=beam.DoFn.StateParam(A), b=beam.DoFn.StateParam(B)):
        yield element


def _names(specs):
    states, timers = specs
    return sorted(spec.name for spec in states), sorted(spec.name for spec in timers)


@pytest.mark.parametrize("make", [
    _CountFn, _PlainFn,
    lambda: _RollUpShardsFn("sqlite:///unused.db", 1000, 1000),
    lambda: _LeadStepFn.__new__(_LeadStepFn),  # specs live on the class; no settings needed
], ids=["count", "plain", "rollup-shards", "lead-step"])
def test_the_cache_answers_as_beam_does(make):
    first, second = make(), make()
    expected = dofn_specs._original(first)
    assert _names(cached_dofn_specs(first)) == _names(expected)
    assert _names(cached_dofn_specs(second)) == _names(expected)  # the class's answer, for another instance
    assert cached_dofn_specs(first)[0] == expected[0] and cached_dofn_specs(first)[1] == expected[1]


def test_stateful_dofns_are_found_stateful_through_the_cache():
    assert _names(cached_dofn_specs(_CountFn())) == (["count"], ["ts-flush"])
    assert cached_dofn_specs(_PlainFn()) == (set(), set())
    rows, timers = _names(cached_dofn_specs(_RollUpShardsFn("sqlite:///unused.db", 1000, 1000)))
    assert rows == ["rows"] and timers == ["ts-expire"]


def test_callers_get_sets_of_their_own():
    states, timers = cached_dofn_specs(_CountFn())
    states.clear()
    timers.clear()
    assert _names(cached_dofn_specs(_CountFn())) == (["count"], ["ts-flush"])


def test_an_instance_with_methods_of_its_own_is_inspected_itself():
    plain = _PlainFn()
    counting = _CountFn()
    plain.process = counting.process  # a bound method of a stateful DoFn, on a plain instance
    assert _names(cached_dofn_specs(plain)) == (["count"], ["ts-flush"])
    assert cached_dofn_specs(_PlainFn()) == (set(), set())


def test_beam_still_refuses_a_malformed_dofn():
    dofn_specs.install()
    with pytest.raises(ValueError, match="duplicate process method parameters"):
        userstate.validate_stateful_dofn(_TwiceFn())


def test_install_reaches_every_caller_once():
    dofn_specs.install()
    dofn_specs.install()
    assert userstate.get_dofn_specs is cached_dofn_specs
    assert transform_evaluator.get_dofn_specs is cached_dofn_specs
    assert userstate.is_stateful_dofn(_CountFn()) and not userstate.is_stateful_dofn(_PlainFn())


class _RunningCountFn(beam.DoFn):
    COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())

    def process(self, element, count=beam.DoFn.StateParam(COUNT)):
        seen = (count.read() or 0) + 1
        count.write(seen)
        yield element[0], seen


def test_a_stateful_pipeline_keeps_its_state_with_the_cache():
    dofn_specs.install()
    with beam.Pipeline() as pipeline:
        counted = pipeline | beam.Create([("a", 1), ("a", 2), ("b", 3)]) | beam.ParDo(_RunningCountFn())
        assert_that(counted, equal_to([("a", 1), ("a", 2), ("b", 1)]))


def test_shorten_sampling_bounds_new_samplers():
    before = statesampler.StateSampler.__init__.__defaults__
    try:
        dofn_specs.shorten_sampling(15)
        assert statesampler.StateSampler("step", CounterFactory()).sampling_period_ms == 15
    finally:
        statesampler.StateSampler.__init__.__defaults__ = before
    assert statesampler.StateSampler("step", CounterFactory()).sampling_period_ms == before[0]
