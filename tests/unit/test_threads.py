"""task_mode="threads": the loop's tasks shared out among threads, one core each.

The meta-gradient, loss and metrics must be the loop's (float64), whatever the number of
threads and tasks; the thread-local state torch does not pass to new threads (grad mode,
autocast) must reach the jobs; what threads cannot share must be refused by name.
"""

import threading

import pytest
import torch
from torch import nn

from metalab.algorithms import ANIL, MAML, MetaSGD, Reptile, make_config
from metalab.data import TaskSpec
from metalab.func import map_tasks, on_threads, task_shares
from metalab.nn import MLP, Conv4
from metalab.utils import MetalabError

from .helpers import flat_grad, image_batch, sinusoid_batch

IMAGES = TaskSpec((1, 16, 16), 3, True)


def _build(cls, mode, spec=IMAGES, model=None, **hparams):
    torch.manual_seed(0)
    if model is None:
        model = Conv4(1, image_size=16, hidden=2, out_features=3) if spec is IMAGES else MLP((1, 6, 6, 1))
    return cls(spec, make_config(cls.name, task_mode=mode, **hparams), model=model).double()


def test_task_shares_deal_the_tasks_round_robin(two_threads):
    assert task_shares(5) == [range(0, 5, 2), range(1, 5, 2)]
    assert task_shares(5, workers=3) == [range(0, 5, 3), range(1, 5, 3), range(2, 5, 3)]
    assert task_shares(1) == [range(0, 1, 1)]  # never more workers than tasks
    assert task_shares(0) == [range(0, 0, 1)]
    assert task_shares(5, torch.device("meta")) == [range(5)]  # off the CPU: one share, a loop


def test_on_threads_runs_each_job_on_its_own_thread_with_one_core_and_returns_in_order(two_threads):
    def job(i):
        return i, threading.current_thread().name, torch.get_num_threads()

    results = on_threads([lambda i=i: job(i) for i in range(3)])
    assert [r[0] for r in results] == [0, 1, 2]
    assert [r[1] for r in results] == [f"metalab-task-share-{i}" for i in range(3)]
    assert [r[2] for r in results] == [1, 1, 1]
    assert torch.get_num_threads() == 2  # restored


def test_on_threads_carries_grad_mode_and_autocast_to_the_jobs(two_threads):
    a = torch.ones(4, 4)

    def job():
        return torch.is_grad_enabled(), (a @ a).dtype

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert on_threads([job, job]) == [(False, torch.bfloat16)] * 2
    assert on_threads([job, job]) == [(True, torch.float32)] * 2


def test_on_threads_raises_a_jobs_exception_and_restores_the_thread_count(two_threads):
    def bad():
        raise ValueError("task 1 went wrong")

    with pytest.raises(ValueError, match="task 1 went wrong"):
        on_threads([lambda: 0, bad])
    assert torch.get_num_threads() == 2


CASES = [
    (MAML, {}), (MAML, {"first_order": True}), (MAML, {"inner_steps": 2, "inner_grad_clip": 0.5}),
    (MetaSGD, {}), (ANIL, {"inner_steps": 2}),
]


@pytest.mark.parametrize("tasks", [1, 3, 4])
@pytest.mark.parametrize("cls, hparams", CASES, ids=lambda v: v.__name__ if isinstance(v, type) else str(v))
def test_threads_give_the_loops_meta_gradient_loss_and_metrics(cls, hparams, tasks, two_threads):
    data = image_batch(tasks=tasks, k_shot=1, n_query=3)
    results = []
    for mode in ("loop", "threads"):
        algo = _build(cls, mode, **hparams)
        assert algo.task_mode == mode
        out = algo.meta_gradient(data)
        results.append((out.loss, out.metrics, flat_grad(algo)))
        loss_only = algo.meta_loss(data)  # the forward pass of threads is the loop's
        torch.testing.assert_close(loss_only.loss.detach(), out.loss, rtol=1e-12, atol=0)
    (loss, metrics, grad), (t_loss, t_metrics, t_grad) = results
    torch.testing.assert_close(t_loss, loss, rtol=1e-12, atol=0)
    assert t_metrics == pytest.approx(metrics, rel=1e-12)
    torch.testing.assert_close(t_grad, grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("tasks", [1, 5])
@pytest.mark.parametrize("cls, hparams", [(MAML, {}), (MAML, {"first_order": True, "inner_steps": 2}), (MetaSGD, {})],
                         ids=lambda v: v.__name__ if isinstance(v, type) else str(v))
def test_batched_groups_dealt_to_threads_give_the_loops_meta_gradient(cls, hparams, tasks, two_threads):
    """With two intra-op threads, task_mode=batched deals the tasks to two threads and runs each share
    in groups: 5 queries per class over 1 shot make groups of 2 tasks, so the shares of 5 tasks
    (tasks 0, 2, 4 and 1, 3) run as groups of 2 and 1 and of 2."""
    data = image_batch(tasks=tasks, k_shot=1, n_query=5)
    results = []
    for mode in ("loop", "batched"):
        algo = _build(cls, mode, **hparams)
        out = algo.meta_gradient(data)
        results.append((out.loss, out.metrics, flat_grad(algo)))
    (loss, metrics, grad), (b_loss, b_metrics, b_grad) = results
    torch.testing.assert_close(b_loss, loss, rtol=1e-12, atol=0)
    assert b_metrics == pytest.approx(metrics, rel=1e-12)
    torch.testing.assert_close(b_grad, grad, rtol=1e-10, atol=1e-13)


def test_threads_add_to_existing_gradients_as_backward_does_and_repeat_bit_for_bit(two_threads):
    data = image_batch(tasks=5, k_shot=1, n_query=3)
    grads = []
    for mode in ("loop", "threads", "threads"):
        algo = _build(MAML, mode)
        algo.meta_gradient(data)
        algo.meta_gradient(data)  # accumulates: twice the meta-gradient
        grads.append(flat_grad(algo))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-13)
    assert torch.equal(grads[1], grads[2])


def test_threads_map_tasks_for_reptile_and_vectors(two_threads):
    """Reptile's inner loops run through map_tasks; the sinusoid MLP is a pure function too."""
    for spec, data in ((IMAGES, image_batch(tasks=3)), (TaskSpec((1,), 1, False), sinusoid_batch(tasks=3))):
        grads = []
        for mode in ("loop", "threads"):
            algo = _build(Reptile, mode, spec=spec, inner_steps=2)
            algo.meta_gradient(data)
            grads.append(flat_grad(algo))
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-13)


def test_map_tasks_threads_stacks_outputs_in_task_order(two_threads):
    x = torch.arange(5.0)
    (out,) = map_tasks(lambda v: (v * 10,), [x], "threads")
    torch.testing.assert_close(out, x * 10)


def test_a_non_finite_task_loss_is_raised_from_its_thread(two_threads):
    data = image_batch(tasks=3, k_shot=1, n_query=3)
    data.query_x[2].fill_(float("nan"))
    with pytest.raises(MetalabError, match="meta_gradient"):
        _build(MAML, "threads").meta_gradient(data)
    assert torch.get_num_threads() == 2


def test_threads_refuse_models_that_swap_parameters_and_running_statistics():
    plain = nn.Sequential(nn.Flatten(), nn.Linear(256, 3))  # runs through torch.func.functional_call
    with pytest.raises(MetalabError, match="threads: its model Sequential runs through torch.func.functional_call"):
        _build(MAML, "threads", model=plain)
    tracked = Conv4(1, image_size=16, hidden=2, out_features=3, track_running_stats=True)
    with pytest.raises(MetalabError, match="threads: its batch norm keeps running statistics"):
        _build(MAML, "threads", model=tracked)
    assert _build(MAML, "loop", model=plain).task_mode == "loop"
