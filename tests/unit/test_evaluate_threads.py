"""evaluate() scores episodes side by side on threads where a method allows it.

The result must be the one of the episodes scored one after another (real Omniglot, every
method that allows threads), every episode scored once, on more than one thread; methods
that keep state are refused by name, and an error in one episode stops the others.
"""

import threading

import pytest
import torch
from torch import nn

import metalab
from metalab import build, evaluate
from metalab.algorithms import MAML, make_config
from metalab.data import TaskSpec
from metalab.utils import MetalabError

THREADED = ["maml", "fomaml", "anil", "meta_sgd", "reptile", "meta_lstm", "protonet", "matching_net",
            "relation_net", "siamese"]


class Recording(MAML):
    """MAML whose episodes record where they ran (and may fail at one episode)."""

    def __init__(self, *args, fail_at=None, **kw):
        super().__init__(*args, **kw)
        self.scored, self.fail_at = [], fail_at

    def evaluate_episode(self, episode, steps=None):
        if episode.meta.task_id == self.fail_at:
            raise RuntimeError(f"episode {self.fail_at} failed")
        self.scored.append((episode.meta.task_id, threading.current_thread().name, torch.get_num_threads()))
        return super().evaluate_episode(episode, steps)


def _recording(spec, model=None, **kw):
    torch.manual_seed(0)
    return Recording(spec, make_config("maml", inner_lr=0.4), model=model, **kw)


@pytest.mark.parametrize("method", THREADED)
def test_threads_give_the_episodes_one_after_another_result_on_real_omniglot(method, omniglot_5w1s, two_threads):
    torch.manual_seed(0)
    algo = build(method, omniglot_5w1s.spec)
    assert algo.evaluates_on_threads
    alone = evaluate(algo, omniglot_5w1s.test, 12, steps=1, threads=False)
    side_by_side = evaluate(algo, omniglot_5w1s.test, 12, steps=1)
    # accuracies are multiples of 1/5 per episode: any episode scored differently moves the mean by 1/60
    assert side_by_side.mean == pytest.approx(alone.mean, abs=1e-9)
    assert side_by_side.ci95 == pytest.approx(alone.ci95, abs=1e-9)
    assert 0.0 < alone.ci95 and torch.get_num_threads() == 2 and algo.training


def test_every_episode_is_scored_once_on_both_threads_with_one_core_each(omniglot_5w1s, two_threads):
    algo = _recording(omniglot_5w1s.spec)
    evaluate(algo, omniglot_5w1s.test, 7, steps=1)
    assert sorted(task for task, _, _ in algo.scored) == list(range(7))
    assert {name for _, name, _ in algo.scored} == {"metalab-task-share-0", "metalab-task-share-1"}
    assert {cores for _, _, cores in algo.scored} == {1}
    algo.scored.clear()
    evaluate(algo, omniglot_5w1s.test, 7, steps=1, threads=False)  # asked for: on the calling thread
    assert [task for task, _, _ in algo.scored] == list(range(7))
    assert {name for _, name, _ in algo.scored} == {threading.current_thread().name}


def test_a_model_run_through_functional_call_is_scored_on_the_calling_thread(two_threads):
    spec = TaskSpec((1,), 1, False)
    source = metalab.make_benchmark(metalab.BenchmarkConfig("sinusoid", k_shot=5)).test
    algo = _recording(spec, model=nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)))
    assert not algo.evaluates_on_threads
    evaluate(algo, source, 5, steps=1)
    assert {name for _, name, _ in algo.scored} == {threading.current_thread().name}
    with pytest.raises(MetalabError, match="maml cannot score episodes on threads"):
        evaluate(algo, source, 5, steps=1, threads=True)


@pytest.mark.parametrize("method", ["mann", "lstm"])
def test_methods_that_keep_state_are_refused_threads(method, omniglot_5w1s, two_threads):
    algo = build(method, omniglot_5w1s.spec)
    assert not algo.evaluates_on_threads
    with pytest.raises(MetalabError, match=f"{method} cannot score episodes on threads"):
        evaluate(algo, omniglot_5w1s.test, 4, threads=True)


def test_an_error_in_one_episode_stops_the_other_threads_and_is_raised(omniglot_5w1s, two_threads):
    algo = _recording(omniglot_5w1s.spec, fail_at=2)
    with pytest.raises(RuntimeError, match="episode 2 failed"):
        evaluate(algo, omniglot_5w1s.test, 40, steps=1)
    # thread 0 fails at its second episode; thread 1 stops at its next one, far before its 20
    assert len(algo.scored) < 10, algo.scored
    assert torch.get_num_threads() == 2 and algo.training
