"""metafew.stopping: a signal sets the flag; inside an abandonable region it stops at once."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from metafew.config import Config
from metafew.data import load_data
from metafew.errors import Interrupted
from metafew.evaluation import evaluate
from metafew.learner import build_learner
from metafew.stopping import StopSignal, abandonable
from metafew.tasks import EpisodeSampler


@pytest.fixture
def usr1() -> StopSignal:
    """A StopSignal installed for SIGUSR1 (pytest keeps SIGINT/SIGTERM), restored afterwards."""
    stop = StopSignal()
    previous = signal.signal(signal.SIGUSR1, stop.receive)
    yield stop
    signal.signal(signal.SIGUSR1, previous)


def test_a_signal_outside_a_region_only_sets_the_flag(usr1: StopSignal) -> None:
    assert not usr1()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert usr1() and usr1.signal == signal.SIGUSR1


def test_a_signal_inside_a_region_raises_at_once(usr1: StopSignal) -> None:
    started = time.monotonic()
    with pytest.raises(Interrupted), usr1.abandonable():
        os.kill(os.getpid(), signal.SIGUSR1)
        while time.monotonic() - started < 30:  # Python code between two bytecodes: the handler runs
            pass
    assert time.monotonic() - started < 5 and usr1()


def test_entering_a_region_after_the_signal_raises_and_regions_nest() -> None:
    stop = StopSignal()
    with stop.abandonable(), stop.abandonable():
        pass
    assert stop._abandonable == 0
    stop.receive(signal.SIGTERM)
    with pytest.raises(Interrupted), stop.abandonable():
        raise AssertionError("not reached")
    assert stop._abandonable == 0


def test_an_error_the_interruption_caused_is_reported_as_the_interruption() -> None:
    """The handler's Interrupted can land inside a library's own cleanup, which then fails in its
    own way (torch.func: an INTERNAL ASSERT on its transform stack): after a signal, any error
    out of the region is the stop; before one, errors stay what they are."""
    stop = StopSignal()
    with pytest.raises(RuntimeError, match="a real bug"), stop.abandonable():
        raise RuntimeError("a real bug")
    with pytest.raises(Interrupted, match="stopped") as caught, stop.abandonable():
        stop.signal = signal.SIGINT  # the handler ran; its Interrupted was lost in torch's cleanup
        raise RuntimeError("!dynamicLayerStack.empty() INTERNAL ASSERT FAILED")
    assert caught.value.__cause__ is None and stop._abandonable == 0


def test_a_plain_callable_has_no_region() -> None:
    with abandonable(lambda: True):
        ran = True
    assert ran


def test_evaluation_cut_inside_a_chunk_names_the_episodes_done(tiny_cfg: Config) -> None:
    data = load_data(tiny_cfg.data)
    learner = build_learner(tiny_cfg, torch.device("cpu"), len(data.meta_train.classes))
    sampler = EpisodeSampler(data.novel, 3, 2, 3, seed=1)
    stop = StopSignal()
    calls = []
    adapt = learner.algorithm.adapt

    def adapt_then_signal(*args, **kwargs):  # a signal lands in the middle of the second chunk
        calls.append(1)
        if len(calls) == 2:
            stop.receive(signal.SIGTERM)
        return adapt(*args, **kwargs)

    learner.algorithm.adapt = adapt_then_signal  # type: ignore[method-assign]
    with pytest.raises(Interrupted, match=r"stopped after 1 of 5 episodes"):
        evaluate(
            learner, sampler, 5, 2, None, "support", chunk=1, stop_requested=stop
        )  # vmap: one adapt per chunk
