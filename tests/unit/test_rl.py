"""Meta-RL environments and returns: hand-computed cases and loop references."""

from __future__ import annotations

import math

import pytest
import torch

from metalab.rl import BatchedNavigation2D, LinearFeatureBaseline, Nav2DTasks, discounted_returns, gae
from metalab.rl.nav2d import step_positions
from metalab.utils.errors import MetalabError

# ---------------------------------------------------------------------------- 2D navigation


def test_tasks_are_goals_in_the_unit_square_and_seeded():
    tasks = Nav2DTasks().sample_tasks(500, torch.Generator().manual_seed(0))
    goals = torch.tensor([t["goal"] for t in tasks])
    assert goals.shape == (500, 2) and goals.min() >= -0.5 and goals.max() <= 0.5
    assert goals.min() < -0.45 and goals.max() > 0.45  # the whole square
    assert Nav2DTasks().sample_tasks(500, torch.Generator().manual_seed(0)) == tasks
    assert Nav2DTasks().sample_tasks(3, torch.Generator().manual_seed(1)) != tasks[:3]


def test_reward_is_minus_the_euclidean_distance_after_a_clipped_move():
    env = BatchedNavigation2D([{"goal": (0.3, -0.4)}, {"goal": (-0.2, 0.1)}], episodes=1)
    obs = env.reset()
    assert torch.equal(obs, torch.zeros(2, 1, 2))
    obs, reward, running = env.step(torch.tensor([[[0.5, -0.05]], [[0.0, 0.02]]]))
    torch.testing.assert_close(obs, torch.tensor([[[0.1, -0.05]], [[0.0, 0.02]]]))  # 0.5 clipped to 0.1
    expected = [-math.hypot(0.1 - 0.3, -0.05 + 0.4), -math.hypot(0.0 + 0.2, 0.02 - 0.1)]
    torch.testing.assert_close(reward, torch.tensor([[expected[0]], [expected[1]]]))
    assert running.all()


def test_an_episode_ends_within_001_of_the_goal_and_then_stays_put_with_zero_reward():
    env = BatchedNavigation2D([{"goal": (0.105, 0.0)}], episodes=2)
    env.reset()
    _, reward, running = env.step(torch.tensor([[[0.1, 0.0], [0.05, 0.0]]]))
    assert running.all() and reward[0, 0].item() == pytest.approx(-0.005)  # reached: |dx| < 0.01
    obs, reward, running = env.step(torch.tensor([[[0.1, 0.1], [0.05, 0.0]]]))
    assert running.tolist() == [[False, True]]
    assert reward[0, 0].item() == 0.0 and obs[0, 0].tolist() == pytest.approx([0.1, 0.0])
    assert reward[0, 1].item() == pytest.approx(-0.005)  # the second episode reached it now


def test_the_horizon_is_enforced_and_bad_actions_are_named():
    env = BatchedNavigation2D([{"goal": (0.5, 0.5)}], episodes=1, horizon=2)
    env.reset()
    for _ in range(2):
        env.step(torch.zeros(1, 1, 2))
    with pytest.raises(MetalabError, match="over"):
        env.step(torch.zeros(1, 1, 2))
    env.reset()
    with pytest.raises(MetalabError, match=r"shape \(1, 1, 2\)"):
        env.step(torch.zeros(2))
    with pytest.raises(MetalabError, match="goal"):
        BatchedNavigation2D([{"target": 1.0}], episodes=1)


def test_standing_still_scores_about_minus_38_as_table_4_before_adaptation():
    tasks = Nav2DTasks().sample_tasks(4000, torch.Generator().manual_seed(0))
    env = BatchedNavigation2D(tasks, episodes=1)
    env.reset()
    total = sum(env.step(torch.zeros(4000, 1, 2))[1] for _ in range(100))
    assert total.mean().item() == pytest.approx(-38.3, abs=1.0)


def test_gymnasium_env_matches_the_batched_one_and_resets_reproducibly():
    pytest.importorskip("gymnasium")
    from metalab.rl.nav2d_env import Navigation2DEnv

    task = {"goal": (0.25, -0.1)}
    env = Navigation2DEnv()
    obs, info = env.reset(seed=0, options={"task": task})
    assert obs.tolist() == [0.0, 0.0] and info["task"] == task
    batched = BatchedNavigation2D([task], episodes=1, dtype=torch.float64)
    batched.reset()
    g = torch.Generator().manual_seed(3)
    for t in range(100):
        action = torch.empty(2, dtype=torch.float64).uniform_(-0.2, 0.2, generator=g)
        obs, reward, terminated, truncated, _ = env.step(action.numpy())
        b_obs, b_reward, _ = batched.step(action.view(1, 1, 2))
        assert reward == pytest.approx(b_reward.item()) and obs.tolist() == pytest.approx(b_obs.view(-1).tolist())
        assert truncated == (t == 99)
        if terminated:
            break
    assert env.action_space.high.tolist() == pytest.approx([0.1, 0.1])
    # no task given: the goal comes from the seeded environment generator
    a, b = Navigation2DEnv(), Navigation2DEnv()
    assert a.reset(seed=5)[1]["task"] == b.reset(seed=5)[1]["task"]
    a.reset_task({"goal": (0.0, 0.1)})
    assert a.task == {"goal": (0.0, 0.1)}


def test_step_positions_broadcasts_over_any_batch():
    moved, reward, done = step_positions(torch.zeros(3, 4, 2), torch.full((3, 4, 2), 0.3), torch.tensor([0.1, 0.1]))
    assert moved.shape == (3, 4, 2) and reward.shape == done.shape == (3, 4) and done.all()


# ---------------------------------------------------------------------------- returns and baselines


def _loop_returns(rewards, mask, gamma):
    out = torch.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        for t in range(rewards.shape[1]):
            out[i, t] = sum(gamma ** (k - t) * rewards[i, k] * mask[i, k] for k in range(t, rewards.shape[1])) * mask[i, t]
    return out


def _trajectories():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 7, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 7, dtype=torch.float64)
    mask[1, 4:] = 0.0  # an episode that ended after 4 steps
    return rewards * mask, mask, g


def test_discounted_returns_match_a_loop():
    rewards, mask, _ = _trajectories()
    torch.testing.assert_close(discounted_returns(rewards, mask, 0.9), _loop_returns(rewards, mask, 0.9))
    torch.testing.assert_close(discounted_returns(rewards, mask, 1.0)[:, 0], rewards.sum(1))


def test_gae_matches_a_loop_and_its_limits():
    rewards, mask, g = _trajectories()
    values = torch.randn(3, 7, generator=g, dtype=torch.float64) * mask
    gamma, lam = 0.95, 0.8
    expected = torch.zeros_like(rewards)
    for i in range(3):
        n = int(mask[i].sum())
        for t in range(n):
            deltas = [rewards[i, k] + gamma * (values[i, k + 1] if k + 1 < n else 0.0) - values[i, k] for k in range(t, n)]
            expected[i, t] = sum((gamma * lam) ** j * d for j, d in enumerate(deltas))
    torch.testing.assert_close(gae(rewards, values, mask, gamma, lam), expected)
    torch.testing.assert_close(gae(rewards, values, mask, gamma, 1.0), discounted_returns(rewards, mask, gamma) - values)
    with pytest.raises(MetalabError, match="lam"):
        gae(rewards, values, mask, gamma, 1.5)


def test_linear_baseline_fits_returns_that_are_linear_in_its_features():
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(6, 20, 2, generator=g, dtype=torch.float64)
    mask = torch.ones(6, 20, dtype=torch.float64)
    mask[2, 10:] = 0
    w = torch.randn(8, generator=g, dtype=torch.float64)
    returns = (LinearFeatureBaseline.features(obs) @ w) * mask
    baseline = LinearFeatureBaseline(reg=1e-10).fit(obs, returns, mask)
    torch.testing.assert_close(baseline.predict(obs, mask), returns, atol=1e-6, rtol=1e-6)
    assert (baseline.predict(obs, mask)[2, 10:] == 0).all()
    with pytest.raises(MetalabError, match="fit the baseline"):
        LinearFeatureBaseline().predict(obs, mask)


# ---------------------------------------------------------------------------- MuJoCo task families


@pytest.mark.parametrize("name", ["cheetah-vel", "cheetah-dir", "ant-dir"])
def test_locomotion_rewards_are_the_reference_ones_and_tasks_change_them(name):
    pytest.importorskip("mujoco")
    import numpy as np

    from metalab.rl.locomotion import FAMILIES

    family = FAMILIES[name]
    env = family()
    key = family.task_key
    tasks = [{key: 0.5}, {key: 1.5}] if key == "velocity" else [{key: 1.0}, {key: -1.0}]
    rewards = []
    for task in tasks:
        obs, info = env.reset(seed=7, options={"task": task})
        assert info["task"] == task and obs.shape == env.observation_space.shape
        action = np.full(env.action_space.shape, 0.3, dtype=np.float32)
        _, reward, _, _, info = env.step(action * 5)  # clipped to 1 before acting and in the cost
        v = info["x_velocity"]
        if name == "cheetah-vel":
            expected = -abs(v - task["velocity"]) - 0.05 * env.action_space.shape[0]
        elif name == "cheetah-dir":
            expected = task["direction"] * v - 0.05 * env.action_space.shape[0]
        else:
            expected = task["direction"] * v - 0.005 * env.action_space.shape[0] + info["reward_contact"] + 0.05
        assert reward == pytest.approx(expected)
        rewards.append(reward)
    assert rewards[0] != rewards[1]  # same start state and action, another task: another reward
    with pytest.raises(MetalabError, match=key):
        env.reset_task({"speed": 1.0})
    drawn = env.sample_tasks(200, torch.Generator().manual_seed(1))
    values = [t[key] for t in drawn]
    if key == "velocity":
        assert 0.0 <= min(values) and max(values) <= 2.0
    else:
        assert set(values) == {1.0, -1.0}


def test_batched_gym_tasks_steps_every_copy_and_seeds_resets():
    pytest.importorskip("mujoco")
    from metalab.rl.locomotion import BatchedGymTasks, HalfCheetahVelocity

    tasks = [{"velocity": 0.5}, {"velocity": 1.5}]
    a = BatchedGymTasks(lambda: HalfCheetahVelocity(horizon=3), tasks, episodes=2, seed=4)
    b = BatchedGymTasks(lambda: HalfCheetahVelocity(horizon=3), tasks, episodes=2, seed=4)
    assert torch.equal(a.reset(), b.reset()) and a.reset().shape == (2, 2, 17)
    for t in range(3):
        obs, reward, running = a.step(torch.full((2, 2, 6), 0.1))
        assert running.all() and reward.shape == (2, 2)
    assert not a.running.any()
    with pytest.raises(MetalabError, match="over"):
        a.step(torch.zeros(2, 2, 6))


def test_environment_workers_step_the_same_episodes_in_parallel_and_fail_clearly():
    pytest.importorskip("mujoco")
    from metalab.rl.locomotion import BatchedGymTasks, HalfCheetahVelocity
    from metalab.rl.rollout import rollout

    tasks = [{"velocity": 0.5}, {"velocity": 1.5}, {"velocity": 1.0}]

    def episodes(workers):
        env = BatchedGymTasks(lambda: HalfCheetahVelocity(horizon=6), tasks, episodes=3, seed=4, workers=workers)
        g = torch.Generator().manual_seed(0)
        try:
            return rollout(env, lambda obs: torch.randn(3, 3, 6, generator=g)), env
        finally:
            env.close()

    alone, _ = episodes(0)
    for workers in (2, 4, 20):  # 20 > 9 environments: one worker per environment
        parallel, env = episodes(workers)
        assert len(env.blocks) == min(workers, 9) and not any(b.process.is_alive() for b in env.blocks)
        for field in ("observations", "actions", "rewards", "mask"):
            assert torch.equal(getattr(parallel, field), getattr(alone, field)), field
    env = BatchedGymTasks(lambda: HalfCheetahVelocity(horizon=6), tasks, episodes=1, workers=2)
    env.blocks[1].process.kill()
    env.blocks[1].process.join()
    with pytest.raises(MetalabError, match="environment worker 1 died.*--env-workers"):
        env.step(torch.zeros(3, 1, 6))
    env.close()
    with pytest.raises(MetalabError, match="workers must be an integer >= 0"):
        BatchedGymTasks(lambda: HalfCheetahVelocity(horizon=6), tasks, episodes=1, workers=-1)


def test_gaussian_log_prob_and_kl_match_torch_distributions():
    from torch.distributions import Independent, Normal, kl_divergence

    from metalab.rl import gaussian

    g = torch.Generator().manual_seed(0)
    m1, m2, a = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    s1, s2 = (0.3 * torch.randn(3, generator=g, dtype=torch.float64) for _ in range(2))
    p, q = Independent(Normal(m1, s1.exp()), 1), Independent(Normal(m2, s2.exp()), 1)
    torch.testing.assert_close(gaussian.log_prob(a, m1, s1), p.log_prob(a))
    torch.testing.assert_close(gaussian.kl(m1, s1, m2, s2), kl_divergence(p, q))


# ---------------------------------------------------------------------------- Meta-World


def test_metaworld_ml1_tasks_switch_goals_and_report_success():
    pytest.importorskip("metaworld")
    import numpy as np

    from metalab.rl.locomotion import BatchedGymTasks
    from metalab.rl.metaworld_tasks import MetaWorldTasks

    train, test = MetaWorldTasks("ML1", "reach-v3", "train", horizon=5), MetaWorldTasks("ML1", "reach-v3", "test", horizon=5)
    assert len(train) == len(test) == 50
    drawn = train.sample_tasks(4, torch.Generator().manual_seed(0))
    assert drawn == train.sample_tasks(4, torch.Generator().manual_seed(0)) and all(t["env"] == "reach-v3" for t in drawn)
    env = train.make_env()
    rewards = []
    for index in (0, 1):
        obs, info = env.reset(seed=0, options={"task": {"env": "reach-v3", "index": index}})
        assert obs.shape == env.observation_space.shape and info["task"]["index"] == index
        _, reward, _, truncated, info = env.step(np.zeros(4, dtype=np.float32))
        assert "success" in info and not truncated
        rewards.append(reward)
    assert rewards[0] != rewards[1]  # another goal, another reward for the same move
    for _ in range(4):
        *_, truncated, _ = env.step(np.zeros(4, dtype=np.float32))
    assert truncated  # the horizon
    with pytest.raises(MetalabError, match="index"):
        env.reset_task({"env": "reach-v3", "index": 50})
    with pytest.raises(MetalabError, match="no ML1 environment"):
        MetaWorldTasks("ML1", "fly-v3")
    batched = BatchedGymTasks(test.make_env, test.sample_tasks(2, torch.Generator().manual_seed(1)), episodes=1)
    obs = batched.reset()
    assert obs.shape == (2, 1, 39) and batched.horizon == 5 and batched.action_dim == 4
    batched.step(torch.zeros(2, 1, 4))
    assert batched.success.shape == (2, 1)


def test_task_streams_are_addressed_by_index_so_shards_and_resumes_agree():
    from metalab.rl.benchmarks import rl_benchmark_parts

    parts = rl_benchmark_parts("nav2d", seed=3)
    whole = parts.train.batch(5, 8)
    halves = [parts.train.batch(5, 8, 0, 4), parts.train.batch(5, 8, 4, 4)]
    assert halves[0].tasks + halves[1].tasks == whole.tasks and len(whole) == 8
    assert halves[0].seed != halves[1].seed  # each rank rolls out with its own stream
    assert parts.train.batch(5, 8).tasks == whole.tasks and parts.train.batch(6, 8).tasks != whole.tasks
    assert parts.val.episode(0).task != parts.train.episode(0).task  # disjoint streams
    assert parts.test.episode(7) == parts.test.episode(7)
    with pytest.raises(MetalabError, match="not in a meta-batch"):
        parts.train.batch(0, 4, 3, 2)
    with pytest.raises(MetalabError, match="unknown meta-RL benchmark"):
        rl_benchmark_parts("nav3d", 0)
    with pytest.raises(MetalabError, match="env_workers must be 0"):
        rl_benchmark_parts("nav2d", 0, env_workers=2)
    with pytest.raises(MetalabError, match="env_workers must be an integer >= 0"):
        rl_benchmark_parts("cheetah-vel", 0, env_workers=-1)


def test_metaworld_ml10_holds_out_whole_environments():
    """ML10: the test split's environments are not among the training ones; one adapter switches
    between environments of its split, and the ``ml10`` benchmark trains on the train split and
    validates and tests on the test split by success rate."""
    pytest.importorskip("metaworld")
    import numpy as np

    from metalab.rl.benchmarks import rl_benchmark_parts
    from metalab.rl.metaworld_tasks import MetaWorldTasks

    parts = rl_benchmark_parts("ml10", seed=0)  # builds ML10 once (seconds)
    assert (parts.observation_dim, parts.action_dim) == (39, 4)
    assert parts.train.metric == "return" and parts.val.metric == parts.test.metric == "success"
    train, test = parts.train.distribution, parts.test.distribution
    assert isinstance(test, MetaWorldTasks) and test.split == "test" and test.benchmark is train.benchmark
    train_envs = {t.env_name for t in train.task_list}
    test_envs = {t.env_name for t in test.task_list}
    assert len(train_envs) == 10 and len(test_envs) == 5 and not train_envs & test_envs
    env = test.make_env()
    first = {}
    for name in sorted(test_envs)[:2]:
        index = next(i for i, t in enumerate(test.task_list) if t.env_name == name)
        obs, info = env.reset(seed=0, options={"task": {"env": name, "index": index}})
        assert obs.shape == (39,) and info["task"] == {"env": name, "index": index}
        first[name] = obs
        *_, info = env.step(np.zeros(4, dtype=np.float32))
        assert "success" in info
    a, b = first.values()
    assert not np.allclose(a, b)  # another environment, another scene
    with pytest.raises(MetalabError, match="task 0 of this split is"):
        env.reset_task({"env": "not-" + test.task_list[0].env_name, "index": 0})
