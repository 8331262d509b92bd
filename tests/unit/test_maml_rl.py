"""MAML-RL on batched 2D navigation: the inner step, the TRPO step and a learning smoke test."""

from __future__ import annotations

import math

import pytest
import torch

from metalab.algorithms.maml_rl import MAMLRL, MAMLRLConfig, conjugate_gradient
from metalab.data import TaskSpec
from metalab.rl import Nav2DTasks
from metalab.utils.errors import MetalabError

SMALL = MAMLRLConfig(hidden=(16, 16), episodes_per_task=4)

NAV = TaskSpec((2,), 2, False)


def _tasks(n, seed=0):
    return Nav2DTasks().sample_tasks(n, torch.Generator().manual_seed(seed))


def test_conjugate_gradient_solves_a_positive_definite_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a, b = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(conjugate_gradient(lambda v: a @ v, b, 6), torch.linalg.solve(a, b))


def test_the_batched_inner_step_equals_one_task_at_a_time():
    torch.manual_seed(0)
    algo = MAMLRL(NAV, SMALL).double()
    tasks = _tasks(3)
    stacked = {k: v.unsqueeze(0).expand(3, *v.shape) for k, v in algo.params().items()}
    traj = algo.sample(stacked, tasks, torch.Generator().manual_seed(1))
    assert traj.observations.dtype == torch.float64
    adv = algo.advantages(traj)
    together = algo.inner_step(stacked, traj, adv, create_graph=False)
    for t in range(3):
        one = {k: v[t:t + 1] for k, v in stacked.items()}
        part = type(traj)(*(x[t:t + 1] for x in (traj.observations, traj.actions, traj.rewards, traj.mask)))
        alone = algo.inner_step(one, part, adv[t:t + 1], create_graph=False)
        for k in together:
            torch.testing.assert_close(together[k][t], alone[k][0], rtol=1e-12, atol=1e-12)
    assert adv.shape == traj.rewards.shape
    valid = traj.mask.bool()
    assert abs(adv[0][valid[0]].mean().item()) < 1e-8 and adv[0][valid[0]].std().item() == pytest.approx(1.0, rel=0.05)


def test_trpo_step_respects_the_trust_region_and_moves_only_when_accepted():
    torch.manual_seed(0)
    algo = MAMLRL(NAV, SMALL)
    before = torch.nn.utils.parameters_to_vector(algo.parameters()).clone()
    metrics = algo.meta_step(_tasks(3), torch.Generator().manual_seed(2))
    after = torch.nn.utils.parameters_to_vector(algo.parameters())
    assert set(metrics) == {"return_pre", "return_post", "surrogate_gain", "kl", "ls_fraction"}
    assert 0 <= metrics["kl"] <= SMALL.max_kl
    if metrics["ls_fraction"] > 0:
        assert metrics["surrogate_gain"] > 0 and not torch.equal(before, after)
    else:
        assert torch.equal(before, after)


def test_maml_rl_learns_to_adapt_on_2d_navigation():
    torch.manual_seed(0)
    cfg = MAMLRLConfig(hidden=(32, 32), episodes_per_task=10)
    algo = MAMLRL(NAV, cfg)
    test_tasks = _tasks(20, seed=99)
    start = algo.adaptation_returns(test_tasks, 1, torch.Generator().manual_seed(5)).mean(0)
    g = torch.Generator().manual_seed(3)
    for _ in range(6):
        algo.meta_step(Nav2DTasks().sample_tasks(10, g), g)
    end = algo.adaptation_returns(test_tasks, 1, torch.Generator().manual_seed(5)).mean(0)
    assert end[1] > start[1] + 10, f"after one step: {start[1]:.1f} -> {end[1]:.1f}"
    assert end[1] > end[0], "adapting does not help"


def test_bad_settings_are_named():
    with pytest.raises(MetalabError, match="max_kl"):
        MAMLRLConfig(max_kl=0.0)
    with pytest.raises(MetalabError, match="ls_ratio"):
        MAMLRLConfig(ls_ratio=1.5)


def test_maml_rl_runs_on_a_mujoco_family():
    pytest.importorskip("mujoco")
    from metalab.rl.locomotion import BatchedGymTasks, HalfCheetahVelocity

    def make_env(tasks, episodes, dtype, generator):
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
        return BatchedGymTasks(lambda: HalfCheetahVelocity(horizon=15), tasks, episodes, seed=seed, dtype=dtype)

    torch.manual_seed(0)
    algo = MAMLRL(TaskSpec((17,), 6, False), MAMLRLConfig(hidden=(16,), episodes_per_task=2, action_scale=1.0))
    tasks = HalfCheetahVelocity().sample_tasks(2, torch.Generator().manual_seed(0))
    metrics = algo.meta_step(tasks, torch.Generator().manual_seed(1), make_env)
    assert all(map(math.isfinite, metrics.values())) and 0 <= metrics["kl"] <= 0.01
    returns = algo.adaptation_returns(tasks, 1, torch.Generator().manual_seed(2), make_env)
    assert returns.shape == (2, 2) and torch.isfinite(returns).all()


@pytest.mark.parametrize("first_order", [False, True])
def test_outer_gradient_through_the_inner_step_matches_finite_differences(first_order):
    """float64: the second-order surrogate gradient is the derivative of the surrogate as a
    function of theta (through theta'); the first-order one is not."""
    from metalab.rl.nav2d import BatchedNavigation2D

    def short(tasks, episodes, dtype, generator):
        return BatchedNavigation2D(tasks, episodes, horizon=8, dtype=dtype)

    torch.manual_seed(0)
    algo = MAMLRL(NAV, MAMLRLConfig(hidden=(5,), episodes_per_task=3, inner_lr=0.5, first_order=first_order)).double()
    data = algo.collect(_tasks(2), torch.Generator().manual_seed(4), short)
    surrogate, _ = algo.surrogate_and_kl(data, create_graph=True)
    grad = torch.autograd.grad(surrogate, [algo.w0])[0]
    eps, numeric = 1e-6, torch.zeros(4)
    coords = [(0, 0), (1, 1), (3, 0), (4, 1)]
    for n, (i, j) in enumerate(coords):
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                algo.w0[i, j] += sign * eps
            values.append(algo.surrogate_and_kl(data, create_graph=False)[0].item())
            with torch.no_grad():
                algo.w0[i, j] -= sign * eps
        numeric[n] = (values[0] - values[1]) / (2 * eps)
    analytic = torch.stack([grad[i, j] for i, j in coords]).float()
    if first_order:
        assert not torch.allclose(analytic, numeric, rtol=1e-3, atol=1e-6)
    else:
        torch.testing.assert_close(analytic, numeric, rtol=1e-4, atol=1e-7)


def test_tasks_scored_by_success_report_the_success_rate():
    pytest.importorskip("metaworld")
    from metalab.rl.benchmarks import _gym_env
    from metalab.rl.metaworld_tasks import MetaWorldTasks
    from metalab.rl.nav2d import navigation_2d
    from metalab.rl.tasks import TaskEpisode

    tasks = MetaWorldTasks("ML1", "reach-v3", "test", horizon=5)
    torch.manual_seed(0)
    algo = MAMLRL(TaskSpec((39,), 4, False), MAMLRLConfig(hidden=(8,), episodes_per_task=2, action_scale=1.0))
    task = tasks.sample_tasks(1, torch.Generator().manual_seed(0))[0]
    by_return = algo.evaluate_episode(TaskEpisode(task, 3, _gym_env(tasks.make_env)), 1)
    by_success = algo.evaluate_episode(TaskEpisode(task, 3, _gym_env(tasks.make_env), "success"), 1)
    assert by_success in (0.0, 0.5, 1.0) and by_return != by_success
    with pytest.raises(MetalabError, match="no success flag"):
        MAMLRL(NAV, SMALL).evaluate_episode(TaskEpisode(_tasks(1)[0], 3, navigation_2d, "success"), 0)


def test_evaluation_protocol_options_change_the_episodes_and_later_rates():
    def evaluate(scale):
        torch.manual_seed(0)
        algo = MAMLRL(NAV, MAMLRLConfig(hidden=(8,), episodes_per_task=3, test_episodes_per_task=5,
                                        test_later_lr_scale=scale))
        return algo.adaptation_episodes(_tasks(2), 2, torch.Generator().manual_seed(1))

    frozen, full = evaluate(0.0), evaluate(1.0)
    assert [t.rewards.shape[:2] for t in full] == [(2, 5)] * 3  # test_episodes_per_task
    # the first step uses inner_lr either way; only the second differs
    assert torch.equal(frozen[1].actions, full[1].actions) and not torch.equal(frozen[2].actions, full[2].actions)
    with pytest.raises(MetalabError, match="test_later_lr_scale"):
        MAMLRLConfig(test_later_lr_scale=-1.0)


def test_no_inner_step_is_the_pretrained_baseline_a_plain_policy_gradient_on_the_task_mixture():
    """inner_steps=0 (float64): the outer surrogate's gradient at the sampling policy is the
    vanilla policy gradient of the pre-update episodes, i.e. minus the inner step's gradient
    averaged over tasks; one meta-step trains it, and it adapts at test like MAML-RL."""
    from metalab.algorithms.maml_rl import per_task
    from metalab.rl.nav2d import BatchedNavigation2D

    def short(tasks, episodes, dtype, generator):
        return BatchedNavigation2D(tasks, episodes, horizon=8, dtype=dtype)

    torch.manual_seed(0)
    algo = MAMLRL(NAV, MAMLRLConfig(hidden=(5,), episodes_per_task=3, inner_steps=0)).double()
    tasks = _tasks(2)
    data = algo.collect(tasks, torch.Generator().manual_seed(4), short)
    assert data.inner == []
    surrogate, kl = algo.surrogate_and_kl(data, create_graph=True)
    assert kl.item() == pytest.approx(0.0, abs=1e-12)
    params = list(algo.parameters())
    outer = torch.autograd.grad(surrogate, params)
    stacked = per_task(algo.params(), len(tasks))
    adapted = algo.inner_step(stacked, data.post, data.post_advantages, create_graph=False, lr=1.0)
    # theta' = theta - 1 * grad L_in per task: the task-mean of (theta - theta') is grad L_in
    for p, g, name in zip(params, outer, algo.params()):
        inner_grad = (stacked[name] - adapted[name]).mean(0)
        torch.testing.assert_close(g, -inner_grad, rtol=1e-9, atol=1e-12)
    before = torch.nn.utils.parameters_to_vector(params).clone()
    metrics = algo.meta_step(tasks, torch.Generator().manual_seed(4), short)
    assert metrics["return_pre"] == metrics["return_post"] and metrics["ls_fraction"] > 0
    assert not torch.equal(before, torch.nn.utils.parameters_to_vector(params))
    returns = algo.adaptation_returns(tasks, 1, torch.Generator().manual_seed(5), short)
    assert returns.shape == (2, 2) and torch.isfinite(returns).all()
    with pytest.raises(MetalabError, match="inner_steps must be an integer >= 0"):
        MAMLRLConfig(inner_steps=-1)


def test_the_authors_initialisation_starts_the_mean_at_zero_at_the_origin():
    """Default ``init="xavier"``: Glorot-uniform weights within their bound and zero biases, so
    the pre-update mean at the start state (the origin) is exactly 0, as in the authors' policy;
    ``init="torch"`` keeps ``nn.Linear``'s default (non-zero biases)."""
    torch.manual_seed(0)
    algo = MAMLRL(NAV, MAMLRLConfig(hidden=(100, 100)))
    for i, (n_in, n_out) in enumerate([(2, 100), (100, 100), (100, 2)]):
        w, b = getattr(algo, f"w{i}"), getattr(algo, f"b{i}")
        bound = math.sqrt(6 / (n_in + n_out))
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound and torch.equal(b, torch.zeros_like(b))
    params = {k: v.unsqueeze(0) for k, v in algo.params().items()}
    mean, _ = algo.distribution(params, torch.zeros(1, 1, 2))
    assert torch.equal(mean, torch.zeros_like(mean))
    torch.manual_seed(0)
    legacy = MAMLRL(NAV, MAMLRLConfig(hidden=(100, 100), init="torch"))
    assert legacy.b2.abs().max() > 0 and legacy.w0.abs().max() > math.sqrt(6 / 102)
    with pytest.raises(MetalabError, match="init must be one of"):
        MAMLRLConfig(init="orthogonal")
