"""metalab.nn.pooling.max_pool2x2: F.max_pool2d(x, 2) whose backward pass keeps only the indices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metalab.nn.pooling import max_pool2x2


def _maps(channels_last: bool, tie: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 7, 6, generator=g, dtype=torch.float64)  # odd height: the last row is dropped
    if tie:  # both pools route the gradient to the same element (not differentiable there: no gradcheck)
        x[0, 0, :2, :2] = 1.0
    x = x.to(memory_format=torch.channels_last) if channels_last else x
    return x.requires_grad_()


@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pool2x2_is_max_pool2d_in_value_layout_and_first_and_second_derivatives(channels_last):
    for x in (_maps(channels_last, tie=True), _maps(channels_last)):
        out, ref = max_pool2x2(x), F.max_pool2d(x, 2)
        assert torch.equal(out, ref) and out.stride() == ref.stride()
        g = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        ours, theirs = (torch.autograd.grad(pool(x), x, g)[0] for pool in (max_pool2x2, lambda t: F.max_pool2d(t, 2)))
        assert torch.equal(ours, theirs) and ours.stride() == theirs.stride()
    assert torch.autograd.gradcheck(max_pool2x2, (x,)) and torch.autograd.gradgradcheck(max_pool2x2, (x,))
    assert torch.equal(torch.func.grad(lambda t: max_pool2x2(t).pow(2).sum())(x),
                       torch.func.grad(lambda t: F.max_pool2d(t, 2).pow(2).sum())(x))


def test_max_pool2x2_keeps_only_the_indices_for_its_backward_pass():
    x = _maps(True)

    def kept(pool) -> list[tuple[torch.dtype, tuple[int, ...]]]:
        saved = []

        def pack(t):
            saved.append((t.dtype, tuple(t.shape)))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            pool(x)
        return saved

    assert kept(max_pool2x2) == [(torch.int64, (3, 4, 3, 3))]
    assert (torch.float64, (3, 4, 7, 6)) in kept(lambda t: F.max_pool2d(t, 2))  # the built-in keeps its input


def test_max_pool2x2_runs_under_vmap_to_second_order_like_max_pool2d():
    x = torch.randn(3, 2, 4, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def per_sample_curvature(pool):
        inner = torch.func.grad(lambda u: pool(u).pow(3).sum())
        return torch.func.vmap(torch.func.grad(lambda t: inner(t).pow(2).sum()))(x)

    assert torch.equal(torch.func.vmap(max_pool2x2)(x), torch.func.vmap(lambda t: F.max_pool2d(t, 2))(x))
    torch.testing.assert_close(per_sample_curvature(max_pool2x2), per_sample_curvature(lambda t: F.max_pool2d(t, 2)),
                               rtol=1e-12, atol=1e-12)
