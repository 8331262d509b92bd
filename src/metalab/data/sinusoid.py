"""Sinusoid regression tasks of the MAML paper (Finn et al. 2017, section 5.1).

A task is ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5.0]``, phase
``phi ~ U[0, pi]``; inputs ``x ~ U[-5, 5]``. Each episode's metadata carries A and phi.
"""

from __future__ import annotations

import math

import torch

from metalab.data.episode import Episode, EpisodeMeta
from metalab.data.sampler import TaskSource
from metalab.utils.errors import MetalabError, require_positive
from metalab.utils.seeding import derive_seed


def _check_range(name: str, bounds: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(b) for b in bounds)
    if not low <= high:
        raise MetalabError(f"{name} range must be (low, high) with low <= high, got {bounds}")
    return low, high


class SinusoidTasks(TaskSource):
    """Seeded stream of sinusoid regression episodes.

    Args:
        k_shot: support points per task.
        n_query: query points per task.
        amplitude: ``(low, high)`` of the uniform amplitude.
        phase: ``(low, high)`` of the uniform phase.
        x_range: ``(low, high)`` of the uniform inputs.
        seed: the stream's seed.

    Episodes have ``support_x`` of shape ``(k_shot, 1)``, ``support_y`` ``(k_shot, 1)``
    float32, and likewise for the query.
    """

    def __init__(
        self,
        k_shot: int = 5,
        n_query: int = 10,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        seed: int = 0,
    ):
        require_positive(k_shot=k_shot, n_query=n_query)
        self.k_shot, self.n_query, self.seed = k_shot, n_query, seed
        self.amplitude = _check_range("amplitude", amplitude)
        self.phase = _check_range("phase", phase)
        self.x_range = _check_range("x", x_range)

    def episode(self, index: int) -> Episode:
        seed = derive_seed(self.seed, index)
        g = torch.Generator().manual_seed(seed)
        u = torch.rand(2, generator=g, dtype=torch.float64)
        amp = self.amplitude[0] + (self.amplitude[1] - self.amplitude[0]) * u[0].item()
        phase = self.phase[0] + (self.phase[1] - self.phase[0]) * u[1].item()
        lo, hi = self.x_range
        x = lo + (hi - lo) * torch.rand(self.k_shot + self.n_query, 1, generator=g)
        y = amp * torch.sin(x - phase)
        k = self.k_shot
        return Episode(
            support_x=x[:k],
            support_y=y[:k],
            query_x=x[k:],
            query_y=y[k:],
            meta=EpisodeMeta(
                task_id=index,
                seed=seed,
                n_way=None,
                k_shot=k,
                n_query=self.n_query,
                params={"amplitude": amp, "phase": phase},
            ),
        )
