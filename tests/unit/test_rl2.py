"""RL²: the hidden state carries across the episodes of a trial and restarts with each trial."""

from __future__ import annotations

import pytest
import torch

from metalab.algorithms.rl2 import RL2, RL2Config
from metalab.data import TaskSpec
from metalab.rl import Nav2DTasks
from metalab.utils.errors import MetalabError

NAV = TaskSpec((2,), 2, False)


def _tasks(n, seed=0):
    return Nav2DTasks().sample_tasks(n, torch.Generator().manual_seed(seed))


def test_hidden_state_persists_across_episodes_and_resets_between_trials():
    torch.manual_seed(0)
    algo = RL2(NAV, RL2Config(hidden=16, episodes_per_trial=2))
    trials = algo.trial(_tasks(3), torch.Generator().manual_seed(1))
    horizon = 100
    assert trials.inputs.shape == (3, 2 * horizon, 2 + 2 + 2) and trials.episode.tolist() == [0] * 100 + [1] * 100
    # every trial starts from the zero state with zero previous action, reward and flag
    assert torch.equal(trials.inputs[:, 0, 2:], torch.zeros(3, 4))
    fresh = algo.initial_state(3)
    with torch.no_grad():
        _, first_mean, _ = algo.step(fresh, trials.inputs[:, 0], torch.ones(3, dtype=torch.bool))
        # the second episode starts at the origin again, but its first action depends on the first episode
        start2 = trials.inputs[:, horizon]
        assert torch.equal(start2[:, :2], torch.zeros(3, 2)) and (start2[:, -1] == 1).all()  # "an episode ended" flag
        _, from_scratch, _ = algo.step(fresh, start2, torch.ones(3, dtype=torch.bool))
    replay_logp, _ = algo.replay(trials)
    hidden = fresh
    with torch.no_grad():
        for t in range(horizon + 1):
            hidden, mean, _ = algo.step(hidden, trials.inputs[:, t], trials.mask[:, t].bool())
    assert not torch.allclose(mean, from_scratch), "the hidden state did not carry into the second episode"
    # a new trial restarts from zeros: its first action mean is the fresh one again
    again = algo.trial(_tasks(3, seed=5), torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, mean_again, _ = algo.step(fresh, again.inputs[:, 0], torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(mean_again, first_mean)
    assert replay_logp.shape == (3, 2 * horizon) and torch.isfinite(replay_logp).all()


def test_finished_episodes_freeze_the_state_and_are_masked():
    torch.manual_seed(0)
    algo = RL2(NAV, RL2Config(hidden=8))
    hidden = torch.randn(2, 16)
    new, _, _ = algo.step(hidden, torch.randn(2, 6), torch.tensor([True, False]))
    assert not torch.equal(new[0], hidden[0]) and torch.equal(new[1], hidden[1])


def test_rl2_learns_on_2d_navigation():
    torch.manual_seed(0)
    algo = RL2(NAV, RL2Config(hidden=32))
    test_tasks = _tasks(30, seed=99)
    before = algo.trial_returns(test_tasks, torch.Generator().manual_seed(4)).mean().item()
    g = torch.Generator().manual_seed(3)
    for _ in range(15):
        algo.meta_step(Nav2DTasks().sample_tasks(20, g), g)
    after = algo.trial_returns(test_tasks, torch.Generator().manual_seed(4)).mean().item()
    assert after > before + 10, f"mean episode return {before:.1f} -> {after:.1f}"


def test_bad_settings_are_named():
    with pytest.raises(MetalabError, match="clip"):
        RL2Config(clip=0.0)
    with pytest.raises(MetalabError, match="episodes_per_trial"):
        RL2Config(episodes_per_trial=0)
