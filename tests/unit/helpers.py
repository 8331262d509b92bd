"""Small synthetic tasks for exact unit tests (the real-data tests use Omniglot)."""

from __future__ import annotations

import torch

from metalab.data import ClassDataset, EpisodeBatch, EpisodeSampler, SinusoidTasks
from metalab.func import params_of


def image_batch(tasks=3, n_way=3, k_shot=2, n_query=2, size=16, dtype=torch.float64, seed=0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    data = torch.rand(8, 6, 1, size, size, generator=g, dtype=dtype)
    ds = ClassDataset(data, tuple(range(8)), tuple(f"c{i}" for i in range(8)))
    return EpisodeSampler(ds, n_way, k_shot, n_query, seed=seed).batch(0, tasks)


def sinusoid_batch(tasks=4, k_shot=5, n_query=6, dtype=torch.float64, seed=0) -> EpisodeBatch:
    return SinusoidTasks(k_shot, n_query, seed=seed).batch(0, tasks).to(dtype)


def assert_every_parameter_gets_a_gradient(module: torch.nn.Module) -> None:
    """Every parameter of ``module`` has a finite gradient, nonzero unless it cannot change the output.

    Those that cannot: a convolution's bias followed by batch norm with batch statistics (every
    ``ConvBlock`` in training), which subtracts it again, so its exact gradient is zero. Conv4's
    closed-form first block (``metalab.nn.backbones.first_block``) computes that zero exactly; the
    blocks as written leave rounding noise. Meta-SGD's learned rate of such a bias multiplies that
    gradient, so it inherits the zero. Such parameters must still have a (finite) gradient tensor.
    """
    cancelled = {name for name, _ in module.named_parameters() if name.endswith("conv.bias")}
    if isinstance(getattr(module, "lrs", None), torch.nn.ParameterList):  # Meta-SGD: lrs[i] is the i-th parameter's
        cancelled |= {f"lrs.{i}" for i, name in enumerate(params_of(module.model)) if name.endswith("conv.bias")}
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"no finite gradient reaches {name}"
        if name not in cancelled:
            assert p.grad.abs().sum() > 0, f"the gradient of {name} is zero"


def flat_grad(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.parameters()])


def finite_difference_grad(loss_fn, module: torch.nn.Module, eps: float = 1e-6, coords=None) -> torch.Tensor:
    """Central differences of ``loss_fn()`` w.r.t. every parameter of ``module``, or only at
    ``coords``: a list of ``(parameter, flat index)``."""
    if coords is None:
        coords = [(p, i) for p in module.parameters() for i in range(p.numel())]
    grads = []
    with torch.no_grad():
        for p, i in coords:
            flat = p.view(-1)
            old = flat[i].item()
            flat[i] = old + eps
            up = loss_fn().item()
            flat[i] = old - eps
            down = loss_fn().item()
            flat[i] = old
            grads.append((up - down) / (2 * eps))
    return torch.tensor(grads, dtype=torch.float64)
