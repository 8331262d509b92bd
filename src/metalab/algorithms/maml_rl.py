"""MAML for reinforcement learning (Finn, Abbeel & Levine 2017, section 3.2 and 5.3).

The learner is a Gaussian MLP policy ``pi_theta(a | s) = N(mu_theta(s), diag(exp(log_std))^2)``
(two hidden layers of 100 ReLU units, a state-independent log standard deviation). For each
task of a meta-batch:

1. sample ``episodes_per_task`` episodes with ``theta``; fit the linear feature baseline on
   their returns, advantages by GAE, normalised over the task's steps;
2. inner step, REINFORCE (the paper's eq. 4 with the vanilla policy gradient):
   ``theta' = theta - alpha grad_theta L_in(theta)``, ``L_in = -mean_steps log pi_theta(a|s) A``
   (more steps: resample with ``theta'`` and repeat);
3. sample episodes with ``theta'`` (the post-update data, advantages as in 1).

The outer update maximises the post-update surrogate ``mean_tasks mean_steps
pi_theta'(a|s) / pi_theta'_old(a|s) A`` (``theta'`` a function of ``theta`` through the inner
step, so second order unless ``first_order``) under the trust region ``mean KL(pi_theta'_old ||
pi_theta') <= max_kl`` by TRPO (Schulman et al. 2015): conjugate gradient on Hessian-vector
products of the KL (through the inner step too), step scaled to the trust region, then a
backtracking line search that keeps the KL bound and an improving surrogate.

The settings follow the authors' reference code for 2D navigation (github.com/cbfinn/maml_rl,
``maml_examples/maml_trpo_point.py``): 20 episodes per task, 40 tasks per meta-batch,
``max_kl`` 0.01, linear feature baseline, policy outputs scaled by 0.1 into the [-0.1, 0.1]
action box (rllab's ``normalize``), Glorot-uniform weights and zero biases (``init="xavier"``,
so the pre-update mean at the start state is 0). The initialisation matters here: with
``nn.Linear``'s default (``init="torch"``) two of three seeds ended in a basin where the
pre-update mean saturates far outside the action box and the policy runs off to a corner, from
where one inner step recovers only part of the return (docs/RESULTS.md, "torch init" rows).
The defaults keep the paper's text (inner step 0.1); the preset ``maml_rl-nav2d`` follows the
run that produced Table 4 (``maml_examples/test_maml_point.py``): inner step 0.5 on 20 tasks x
20 episodes, and at test 40 episodes per step with the second and later steps at half the rate.

This module runs on batched task environments (:mod:`metalab.rl`; ``make_env``, 2D
navigation by default, MuJoCo families through :class:`metalab.rl.locomotion.BatchedGymTasks`):
every episode of every task is stepped together and the per-task policies are stacked tensors.
On the MetaAlgorithm interface (``metalab train maml_rl --benchmark nav2d``) the TRPO step is
handed to the trainer as a gradient (:meth:`MAMLRL.meta_gradient`); ``benchmarks/nav2d.py``
drives :meth:`MAMLRL.meta_step` directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from metalab.algorithms.registry import register
from metalab.algorithms.rl_base import RLMethod, episode_score
from metalab.data.benchmarks import TaskSpec
from metalab.rl import gaussian
from metalab.rl.nav2d import navigation_2d
from metalab.rl.tasks import MakeEnv, TaskEpisode
from metalab.rl.returns import LinearFeatureBaseline, discounted_returns, gae
from metalab.rl.rollout import Trajectories, rollout
from metalab.utils.errors import MetalabError, require_non_negative, require_positive

Params = dict[str, Tensor]
INITS = ("xavier", "torch")


@dataclass(frozen=True)
class MAMLRLConfig:
    """Hyper-parameters of MAML-RL (defaults: 2D navigation as in the paper and its code).

    Attributes:
        hidden: hidden layer widths of the policy.
        inner_lr: ``alpha``, the inner policy-gradient step size.
        inner_steps: inner steps in meta-training. 0: no adaptation in meta-training, TRPO on
            the pre-update policy over the task mixture: the paper's "pretrained" baseline
            (one policy trained on all tasks, fine-tuned at test by the same policy-gradient
            steps: evaluate it after 1, 2, ... steps).
        episodes_per_task: episodes sampled per task for each inner step and for the outer step.
        gamma, gae_lambda: discount and GAE parameter of the advantages.
        max_kl: TRPO's trust region on the mean KL divergence.
        cg_iters, cg_damping: conjugate-gradient iterations and the damping added to the
            Fisher-vector products.
        ls_steps, ls_ratio: backtracking line search: tries and shrink factor.
        first_order: treat ``theta'`` as ``theta`` plus a constant (no second derivatives).
        action_scale: the environment executes ``action_scale * action``.
        init_log_std: initial log standard deviation of the policy.
        init: initialisation of the policy's layers: ``"xavier"`` (Glorot-uniform weights, zero
            biases, as the authors' policy, ``maml_minimal_gauss_mlp_policy.py``: the mean at
            the origin starts at exactly 0) or ``"torch"`` (``nn.Linear``'s default, the
            setting of the records made before this option existed).
        test_episodes_per_task: episodes sampled per adaptation step at evaluation (``None``:
            ``episodes_per_task``; the authors' test script: 40, twice the training batch).
        test_later_lr_scale: at evaluation, the inner rate of the second and later steps is
            ``inner_lr`` times this (the authors' test script: 0.5).
    """

    hidden: tuple[int, ...] = (100, 100)
    inner_lr: float = 0.1
    inner_steps: int = 1
    episodes_per_task: int = 20
    gamma: float = 0.99
    gae_lambda: float = 1.0
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_steps: int = 15
    ls_ratio: float = 0.8
    first_order: bool = False
    action_scale: float = 0.1
    init_log_std: float = 0.0
    init: str = "xavier"
    test_episodes_per_task: int | None = None
    test_later_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.test_episodes_per_task is not None:
            require_positive(test_episodes_per_task=self.test_episodes_per_task)
        if not (isinstance(self.test_later_lr_scale, (int, float)) and 0 <= self.test_later_lr_scale < math.inf):
            raise MetalabError(f"test_later_lr_scale must be a finite number >= 0, got {self.test_later_lr_scale!r}")
        require_non_negative("the pretrained baseline", inner_steps=self.inner_steps)
        if self.init not in INITS:
            raise MetalabError(f"init must be one of {sorted(INITS)}, got {self.init!r}")
        require_positive(episodes_per_task=self.episodes_per_task, cg_iters=self.cg_iters, ls_steps=self.ls_steps)
        for name in ("inner_lr", "max_kl", "action_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise MetalabError(f"{name} must be a positive finite number, got {value!r}")
        if not 0 < self.ls_ratio < 1:
            raise MetalabError(f"ls_ratio must be in (0, 1), got {self.ls_ratio!r}")


@dataclass(frozen=True)
class Collected:
    """The episodes of one meta-iteration and the sampling policy's statistics on the post-update ones."""

    tasks: int
    inner: list[tuple[Trajectories, Tensor]]  # per inner step: episodes and their advantages
    post: Trajectories
    post_advantages: Tensor
    old_mean: Tensor
    old_log_std: Tensor
    old_logp: Tensor


def per_task(params: Params, tasks: int) -> Params:
    """One copy of every parameter per task (views: gradients flow back to ``params``)."""
    return {k: v.unsqueeze(0).expand(tasks, *v.shape) for k, v in params.items()}


def _masked_task_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over each task's steps that happened, then over tasks: ``(T, E, H)`` -> scalar."""
    return ((x * mask).sum((1, 2)) / mask.sum((1, 2)).clamp_min(1.0)).mean()


@register
class MAMLRL(RLMethod):
    """A Gaussian MLP policy meta-trained by MAML with a TRPO outer step.

    ``spec``: observations of shape ``input_shape`` (a vector), actions of ``output_dim``.
    """

    name = "maml_rl"
    Config = MAMLRLConfig

    def __init__(self, spec: TaskSpec, config: MAMLRLConfig):
        super().__init__(spec, config)
        widths = (spec.input_shape[0], *self.config.hidden, spec.output_dim)
        self.layers = len(widths) - 1
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            layer = nn.Linear(n_in, n_out)  # nn.Linear's default initialisation, kept by init="torch"
            if self.config.init == "xavier":
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
            self.register_parameter(f"w{i}", layer.weight)
            self.register_parameter(f"b{i}", layer.bias)
        self.log_std = nn.Parameter(torch.full((spec.output_dim,), float(self.config.init_log_std)))

    # ------------------------------------------------------------------ the policy, per task

    def params(self) -> Params:
        return dict(self.named_parameters())

    def distribution(self, params: Params, observations: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(T, ..., a)`` and log std ``(T, 1.., a)`` for stacked ``params`` and ``observations`` ``(T, ..., d)``."""
        t = observations.shape[0]
        h = observations.reshape(t, -1, observations.shape[-1])
        for i in range(self.layers):
            h = torch.baddbmm(params[f"b{i}"].unsqueeze(1), h, params[f"w{i}"].transpose(1, 2))
            if i < self.layers - 1:
                h = torch.relu(h)
        mean = h.reshape(*observations.shape[:-1], h.shape[-1])
        log_std = params["log_std"].view(t, *([1] * (observations.dim() - 2)), -1)
        return mean, log_std

    def log_prob(self, params: Params, observations: Tensor, actions: Tensor) -> Tensor:
        mean, log_std = self.distribution(params, observations)
        return gaussian.log_prob(actions, mean, log_std)

    def sampler(self, params: Params, generator: torch.Generator) -> Callable[[Tensor], Tensor]:
        def act(observations: Tensor) -> Tensor:
            mean, log_std = self.distribution(params, observations)
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
            return mean + log_std.exp() * noise
        return act

    def sample(self, params: Params, tasks: list[dict[str, Any]], generator: torch.Generator,
               make_env: MakeEnv = navigation_2d, episodes: int | None = None) -> Trajectories:
        detached = {k: v.detach() for k, v in params.items()}
        env = make_env(tasks, episodes or self.config.episodes_per_task, detached["log_std"].dtype, generator)
        return rollout(env, self.sampler(detached, generator), self.config.action_scale)

    # ------------------------------------------------------------------ advantages and the inner step

    def advantages(self, trajectories: Trajectories) -> Tensor:
        """GAE with the linear feature baseline fitted per task, normalised over each task's steps."""
        cfg = self.config
        returns = discounted_returns(trajectories.rewards, trajectories.mask, cfg.gamma)
        values = torch.stack([LinearFeatureBaseline().fit(obs, ret, mask).predict(obs, mask)
                              for obs, ret, mask in zip(trajectories.observations, returns, trajectories.mask)])
        adv = gae(trajectories.rewards, values, trajectories.mask, cfg.gamma, cfg.gae_lambda)
        mask = trajectories.mask
        count = mask.sum((1, 2), keepdim=True).clamp_min(1.0)
        mean = (adv * mask).sum((1, 2), keepdim=True) / count
        std = (((adv - mean) * mask) ** 2).sum((1, 2), keepdim=True).div(count).sqrt()
        return (adv - mean) / (std + 1e-8) * mask

    def inner_step(self, params: Params, trajectories: Trajectories, advantages: Tensor, create_graph: bool,
                   lr: float | None = None) -> Params:
        """``theta' = theta - alpha grad L_in`` for every task at once (stacked ``params``)."""
        logp = self.log_prob(params, trajectories.observations, trajectories.actions)
        # summed over tasks: the gradient w.r.t. each task's copy is that task's gradient
        loss = -((logp * advantages * trajectories.mask).sum((1, 2))
                 / trajectories.mask.sum((1, 2)).clamp_min(1.0)).sum()
        names = list(params)
        grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=create_graph)
        lr = self.config.inner_lr if lr is None else lr
        return {k: params[k] - lr * g for k, g in zip(names, grads)}

    # ------------------------------------------------------------------ meta-training

    def collect(self, tasks: list[dict[str, Any]], generator: torch.Generator,
                make_env: MakeEnv = navigation_2d) -> "Collected":
        """Sample the data of one meta-iteration: the pre-update episodes of every inner step
        (each with the parameters adapted so far) and the post-update episodes."""
        inner_data, current = [], per_task(self.params(), len(tasks))
        for _ in range(self.config.inner_steps):
            traj = self.sample(current, tasks, generator, make_env)
            inner_data.append((traj, self.advantages(traj)))
            current = self.inner_step(current, *inner_data[-1], create_graph=False)
        post = self.sample(current, tasks, generator, make_env)
        with torch.no_grad():
            old_mean, old_log_std = self.distribution(current, post.observations)
            old_logp = self.log_prob(current, post.observations, post.actions)
        return Collected(len(tasks), inner_data, post, self.advantages(post), old_mean, old_log_std, old_logp)

    def surrogate_and_kl(self, data: "Collected", create_graph: bool) -> tuple[Tensor, Tensor]:
        """The post-update surrogate and mean KL to the sampling policy, as functions of the
        current parameters through the inner steps on ``data`` (second order with ``create_graph``
        unless ``first_order``: without it the inner gradients are constants, d theta'/d theta = I)."""
        theta = per_task(self.params(), data.tasks)
        for traj, adv in data.inner:
            theta = self.inner_step(theta, traj, adv, create_graph=create_graph and not self.config.first_order)
        post = data.post
        logp = self.log_prob(theta, post.observations, post.actions)
        surrogate = _masked_task_mean(torch.exp(logp - data.old_logp) * data.post_advantages, post.mask)
        mean, log_std = self.distribution(theta, post.observations)
        kl = gaussian.kl(data.old_mean, data.old_log_std, mean, log_std)
        return surrogate, _masked_task_mean(kl, post.mask)

    def meta_step(self, tasks: list[dict[str, Any]], generator: torch.Generator,
                  make_env: MakeEnv = navigation_2d) -> dict[str, float]:
        """One meta-iteration on ``tasks``: sample, adapt, TRPO step on the parameters in place.

        Returns:
            metrics: mean episode return before and after adaptation, the surrogate improvement,
            the KL of the accepted step and the fraction of the full step taken by the line
            search (``ls_fraction``; 0: rejected, no update).
        """
        cfg = self.config
        params = list(self.parameters())
        data = self.collect(tasks, generator, make_env)

        surrogate, kl = self.surrogate_and_kl(data, create_graph=True)
        g = _flat(torch.autograd.grad(surrogate, params, retain_graph=True))
        kl_grad = _flat(torch.autograd.grad(kl, params, create_graph=True))

        def fisher_vector(v: Tensor) -> Tensor:
            return _flat(torch.autograd.grad(kl_grad @ v, params, retain_graph=True)) + cfg.cg_damping * v

        direction = conjugate_gradient(fisher_vector, g, cfg.cg_iters)
        curvature = direction @ fisher_vector(direction)
        old = nn.utils.parameters_to_vector(params).detach()
        old_surrogate = surrogate.item()
        accepted, step_kl, improvement = 0.0, 0.0, 0.0
        if curvature.item() > 0 and torch.isfinite(direction).all():
            full_step = direction * torch.sqrt(2 * cfg.max_kl / curvature)
            for k in range(cfg.ls_steps):
                fraction = cfg.ls_ratio ** k
                with torch.no_grad():
                    nn.utils.vector_to_parameters(old + fraction * full_step, params)
                new_surrogate, new_kl = self.surrogate_and_kl(data, create_graph=False)
                if new_kl.item() <= cfg.max_kl and new_surrogate.item() > old_surrogate:
                    accepted, step_kl, improvement = fraction, new_kl.item(), new_surrogate.item() - old_surrogate
                    break
            else:
                with torch.no_grad():
                    nn.utils.vector_to_parameters(old, params)
        pre = data.inner[0][0] if data.inner else data.post  # no inner step: the sampled episodes are both
        return {"return_pre": pre.episode_returns().mean().item(),
                "return_post": data.post.episode_returns().mean().item(),
                "surrogate_gain": improvement, "kl": step_kl, "ls_fraction": accepted}

    # ------------------------------------------------------------------ evaluation

    def adaptation_episodes(self, tasks: list[dict[str, Any]], steps: int, generator: torch.Generator,
                            make_env: MakeEnv = navigation_2d) -> list[Trajectories]:
        """The episodes sampled after 0, 1, ..., ``steps`` inner steps on each task (evaluation).

        Each step adapts on the episodes sampled with the current parameters (as at training),
        ``test_episodes_per_task`` of them, the second and later steps at ``inner_lr *
        test_later_lr_scale``.
        """
        cfg = self.config
        theta = {k: v.detach() for k, v in per_task(self.params(), len(tasks)).items()}
        out = []
        for step in range(steps + 1):
            out.append(self.sample(theta, tasks, generator, make_env, cfg.test_episodes_per_task))
            if step < steps:
                lr = cfg.inner_lr * (1.0 if step == 0 else cfg.test_later_lr_scale)
                theta = {k: v.detach().requires_grad_() for k, v in theta.items()}
                theta = {k: v.detach() for k, v in self.inner_step(theta, out[-1], self.advantages(out[-1]),
                                                                   False, lr).items()}
        return out

    def adaptation_returns(self, tasks: list[dict[str, Any]], steps: int, generator: torch.Generator,
                           make_env: MakeEnv = navigation_2d) -> Tensor:
        """Mean episode return of each task after 0, 1, ..., ``steps`` inner steps: ``(T, steps + 1)``."""
        return torch.stack([t.episode_returns().mean(1)
                            for t in self.adaptation_episodes(tasks, steps, generator, make_env)], 1)

    # ------------------------------------------------------------------ the MetaAlgorithm interface

    def update_loss(self, metrics: dict[str, float]) -> float:
        return -metrics["return_post"]

    def evaluate_episode(self, episode: TaskEpisode, steps: int | None = None) -> float:
        """Mean return (or success rate, if the task is scored by ``success``) of
        ``episodes_per_task`` episodes after ``steps`` inner steps on the task (default:
        ``inner_steps``), from the task's own seed (the same every time)."""
        steps = self.config.inner_steps if steps is None else steps
        if steps < 0:
            raise MetalabError(f"adaptation steps must be >= 0, got {steps}")
        last = self.adaptation_episodes([episode.task], steps, torch.Generator().manual_seed(episode.seed),
                                        episode.make_env)[-1]
        return episode_score(last.episode_returns(), last.success, episode.metric)[0].item()


def _flat(tensors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, iterations: int, tol: float = 1e-10) -> Tensor:
    """Solve ``A x = b`` for a symmetric positive-definite ``A`` given as ``matvec``."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iterations):
        if rr.item() < tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x
