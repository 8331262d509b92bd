"""RL² (Duan, Schulman, Chen, Bartlett, Sutskever & Abbeel 2016, "RL²: Fast Reinforcement
Learning via Slow Reinforcement Learning"), trained with PPO (Schulman et al. 2017).

The learner is a recurrent policy: a GRU whose hidden state carries across the episodes of
one *trial* on the same task (it is reset only between trials), so the weights encode a
learning algorithm and the hidden state what has been learnt about the task. At every step
the GRU reads ``[s_t, a_{t-1}, r_{t-1}, d_{t-1}]`` (the previous action, reward and
"previous step ended an episode" flag; zeros at the start of a trial) and outputs the mean
of a Gaussian policy (state-independent log std) and a value estimate.

A trial is ``episodes_per_trial`` episodes of the task; the trial is one sequence for the
advantages (GAE with ``gamma``, ``gae_lambda`` across episode boundaries, as the paper
treats a trial as one episode of the meta-MDP). PPO updates the weights on each batch of
trials: ``ppo_epochs`` passes of the clipped surrogate (``clip``) plus ``value_coef`` times
the value loss, Adam with ``lr``, the whole sequences recomputed at each pass.

Runs on the batched task environments of :mod:`metalab.rl` (``make_env``; 2D navigation by
default), one trial per task of a meta-batch, all stepped together. On the MetaAlgorithm
interface (``metalab train rl2 --benchmark nav2d``) the PPO update is handed to the trainer
as a gradient (:meth:`RL2.meta_gradient`); ``benchmarks/nav2d.py --method rl2`` drives
:meth:`RL2.meta_step` directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from metalab.algorithms.registry import register
from metalab.algorithms.rl_base import RLMethod, episode_score
from metalab.data.benchmarks import TaskSpec
from metalab.rl import gaussian
from metalab.rl.nav2d import navigation_2d
from metalab.rl.tasks import MakeEnv, TaskEpisode
from metalab.rl.returns import gae
from metalab.utils.errors import MetalabError, require_positive


@dataclass(frozen=True)
class RL2Config:
    """Hyper-parameters of RL² with PPO.

    Attributes:
        hidden: GRU units.
        episodes_per_trial: episodes of one task the hidden state carries across.
        gamma, gae_lambda: discount and GAE parameter over the trial.
        clip: PPO's ratio clip.
        ppo_epochs: passes over each batch of trials.
        lr: Adam's learning rate.
        value_coef: weight of the value loss.
        max_grad_norm: clip the gradient norm of each pass.
        action_scale: the environment executes ``action_scale * action``.
        init_log_std: initial log standard deviation.
    """

    hidden: int = 64
    episodes_per_trial: int = 2
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    ppo_epochs: int = 5
    lr: float = 3e-4
    value_coef: float = 0.5
    max_grad_norm: float = 0.5
    action_scale: float = 0.1
    init_log_std: float = 0.0

    def __post_init__(self) -> None:
        require_positive(hidden=self.hidden, episodes_per_trial=self.episodes_per_trial, ppo_epochs=self.ppo_epochs)
        for name in ("clip", "lr", "max_grad_norm", "action_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise MetalabError(f"{name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True)
class Trials:
    """One trial per task, the episodes one after another (time last but one).

    Attributes:
        inputs: ``(T, L, in_dim)`` what the GRU read at each step.
        actions: ``(T, L, a)``.
        rewards, mask: ``(T, L)``; mask 1 for steps that happened.
        episode: ``(L,)`` the episode index of each step within the trial.
        success: ``(T, episodes)`` each episode's success flag, for environments that report one.
    """

    inputs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    episode: Tensor
    success: Tensor | None = None

    def episode_returns(self, episodes: int) -> Tensor:
        """``(T, episodes)``: the return of each episode of each trial."""
        return torch.stack([(self.rewards * self.mask)[:, self.episode == k].sum(1) for k in range(episodes)], 1)


@register
class RL2(RLMethod):
    """A GRU policy meta-trained by PPO on trials of several episodes.

    ``spec``: observations of shape ``input_shape`` (a vector), actions of ``output_dim``.
    """

    name = "rl2"
    Config = RL2Config

    def __init__(self, spec: TaskSpec, config: RL2Config):
        super().__init__(spec, config)
        observation_dim, action_dim = spec.input_shape[0], spec.output_dim
        self.observation_dim, self.action_dim = observation_dim, action_dim
        self.input_dim = observation_dim + action_dim + 2
        self.cell = nn.GRUCell(self.input_dim, self.config.hidden)
        self.mean = nn.Linear(self.config.hidden, action_dim)
        # the value estimate has a recurrent network of its own, so that its large loss does not
        # swamp the policy's gradient in the shared clipping
        self.value_cell = nn.GRUCell(self.input_dim, self.config.hidden)
        self.value = nn.Linear(self.config.hidden, 1)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(self.config.init_log_std)))
        self.optimizer = torch.optim.Adam(self.parameters(), lr=self.config.lr)

    def initial_state(self, tasks: int) -> Tensor:
        """The hidden state at the start of a trial, policy and value GRUs: zeros ``(T, 2 * hidden)``."""
        return torch.zeros(tasks, 2 * self.config.hidden)

    def step(self, hidden: Tensor, inputs: Tensor, alive: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step of both GRUs; rows not ``alive`` (their episode ended) keep their hidden state.

        Returns:
            new hidden ``(T, 2 * hidden)``, action mean ``(T, a)``, value ``(T,)``.
        """
        h_policy, h_value = hidden.chunk(2, dim=-1)
        new = torch.cat([self.cell(inputs, h_policy), self.value_cell(inputs, h_value)], -1)
        new = torch.where(alive.unsqueeze(-1), new, hidden)
        h_policy, h_value = new.chunk(2, dim=-1)
        return new, self.mean(h_policy), self.value(h_value).squeeze(-1)

    def trial(self, tasks: list[dict[str, Any]], generator: torch.Generator,
              make_env: MakeEnv = navigation_2d) -> Trials:
        """Run one trial per task: ``episodes_per_trial`` episodes, the hidden state carried across."""
        cfg = self.config
        env = make_env(tasks, 1, torch.float32, generator)
        hidden = self.initial_state(len(tasks))
        prev = torch.zeros(len(tasks), self.action_dim + 2)  # previous action, reward, done flag
        inputs, actions, rewards, masks, episode, success = [], [], [], [], [], []
        with torch.no_grad():
            for k in range(cfg.episodes_per_trial):
                if k:
                    success.append(getattr(env, "success", None))
                obs = env.reset()[:, 0]
                for _ in range(env.horizon):
                    alive = env.running[:, 0].clone()
                    x = torch.cat([obs, prev], -1)
                    hidden, mean, _ = self.step(hidden, x, alive)
                    noise = torch.randn(mean.shape, generator=generator)
                    action = mean + self.log_std.exp() * noise
                    next_obs, reward, running = env.step((action * cfg.action_scale).unsqueeze(1))
                    running, reward = running[:, 0], reward[:, 0]
                    inputs.append(x)
                    actions.append(action)
                    rewards.append(reward)
                    masks.append(running.float())
                    episode.append(k)
                    ended = running & ~env.running[:, 0]
                    last_step = len(episode) % env.horizon == 0
                    done_flag = (ended | torch.tensor(last_step)).float()
                    prev = torch.where(running.unsqueeze(-1),
                                       torch.cat([action, reward.unsqueeze(-1), done_flag.unsqueeze(-1)], -1), prev)
                    obs = next_obs[:, 0]
        success.append(getattr(env, "success", None))
        flags = None if success[-1] is None else torch.cat([s.clone() for s in success], dim=1)  # (T, episodes)
        return Trials(torch.stack(inputs, 1), torch.stack(actions, 1), torch.stack(rewards, 1),
                      torch.stack(masks, 1), torch.tensor(episode), flags)

    def replay(self, trials: Trials) -> tuple[Tensor, Tensor]:
        """Recompute log-probabilities and values of a trial's actions: ``(T, L)`` each."""
        hidden = self.initial_state(trials.inputs.shape[0])
        means, values = [], []
        for t in range(trials.inputs.shape[1]):
            hidden, mean, value = self.step(hidden, trials.inputs[:, t], trials.mask[:, t].bool())
            means.append(mean)
            values.append(value)
        return gaussian.log_prob(trials.actions, torch.stack(means, 1), self.log_std), torch.stack(values, 1)

    def meta_step(self, tasks: list[dict[str, Any]], generator: torch.Generator,
                  make_env: MakeEnv = navigation_2d) -> dict[str, float]:
        """One batch of trials (one per task), then ``ppo_epochs`` PPO passes on it."""
        cfg = self.config
        trials = self.trial(tasks, generator, make_env)
        with torch.no_grad():
            old_logp, values = self.replay(trials)
            adv = gae(trials.rewards, values, trials.mask, cfg.gamma, cfg.gae_lambda)
            targets = adv + values * trials.mask
            valid = trials.mask.bool()
            adv = (adv - adv[valid].mean()) / (adv[valid].std() + 1e-8) * trials.mask
        count = trials.mask.sum().clamp_min(1.0)
        for _ in range(cfg.ppo_epochs):
            logp, value = self.replay(trials)
            ratio = torch.exp(logp - old_logp)
            surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv)
            policy_loss = -(surrogate * trials.mask).sum() / count
            value_loss = (((value - targets) ** 2) * trials.mask).sum() / count
            loss = policy_loss + cfg.value_coef * value_loss
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
        returns = trials.episode_returns(cfg.episodes_per_trial).mean(0)
        return {**{f"return_episode{k + 1}": r for k, r in enumerate(returns.tolist())},
                "policy_loss": policy_loss.item(), "value_loss": value_loss.item()}

    def trial_returns(self, tasks: list[dict[str, Any]], generator: torch.Generator,
                      make_env: MakeEnv = navigation_2d) -> Tensor:
        """``(T, episodes_per_trial)``: the return of each episode of one trial per task."""
        return self.trial(tasks, generator, make_env).episode_returns(self.config.episodes_per_trial)

    # ------------------------------------------------------------------ the MetaAlgorithm interface

    def get_extra_state(self) -> Any:
        """PPO's Adam state travels in ``state_dict()``, so checkpoints resume exactly."""
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def update_loss(self, metrics: dict[str, float]) -> float:
        return metrics["policy_loss"] + self.config.value_coef * metrics["value_loss"]

    def evaluate_episode(self, episode: TaskEpisode, steps: int | None = None) -> float:
        """Return (or success, if the task is scored by ``success``) of episode ``steps + 1`` of
        one trial on the task (``steps`` earlier episodes of experience; default: the last
        episode of the trial), from the task's own seed."""
        k = self.config.episodes_per_trial - 1 if steps is None else steps
        if not 0 <= k < self.config.episodes_per_trial:
            raise MetalabError(f"a trial has {self.config.episodes_per_trial} episodes: steps must be in "
                               f"0..{self.config.episodes_per_trial - 1}, got {steps}")
        trials = self.trial([episode.task], torch.Generator().manual_seed(episode.seed), episode.make_env)
        returns = trials.episode_returns(self.config.episodes_per_trial)
        success = None if trials.success is None else trials.success[:, k:k + 1]
        return episode_score(returns[:, k:k + 1], success, episode.metric)[0].item()
