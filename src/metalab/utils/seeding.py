"""Explicit randomness: seeds are derived from tuples of integers, never from global state."""

from __future__ import annotations

import torch

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """Mix integers (run seed, rank, worker, index, ...) into one 63-bit seed.

    The result is stable across processes and Python versions (no ``hash()``), so a
    stream of episodes can be addressed by index: a resumed or distributed run draws
    exactly the episodes an uninterrupted single-process run would.
    """
    state = 0x6D6574616C6162  # "metalab"
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, int):
            raise TypeError(f"derive_seed takes integers, got {part!r}")
        state = _splitmix64(state ^ (part & _MASK))
    return state & ((1 << 63) - 1)


def make_generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*parts)``."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(*parts))
    return generator
