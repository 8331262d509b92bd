"""metalab.nn.pooling.pooled_product: the 2x2 max-pool of a patches-by-filters product, a chunk of images at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metalab.nn.pooling import pooled_product

N, H, W, K, C = 5, 7, 6, 4, 3  # odd height: the pool drops the last row


def _written_out(cols: torch.Tensor, operand: torch.Tensor, size=(N, H, W)) -> torch.Tensor:
    n, h, w = size
    return F.max_pool2d((cols @ operand).view(n, h, w, -1).permute(0, 3, 1, 2), 2)


def _inputs(tie: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    cols = torch.randn(N * H * W, K, generator=g, dtype=torch.float64)
    if tie:  # a window of equal rows (as a blank background gives): both pools route the gradient to its first
        cols[W:W + 2] = cols[0]
        cols[:2] = cols[0]
    operand = torch.randn(K, C, generator=g, dtype=torch.float64)
    return cols.requires_grad_(), operand.requires_grad_()


@pytest.mark.parametrize("images", [1, 2, N])
def test_pooled_product_is_the_product_then_max_pool2d_to_second_order(images):
    for cols, operand in (_inputs(tie=True), _inputs()):
        out, ref = pooled_product(cols, operand, (N, H, W), images), _written_out(cols, operand)
        assert torch.equal(out, ref) and out.is_contiguous(memory_format=torch.channels_last)
        # the incoming gradient carries a graph too, as it does in second-order MAML
        g = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
        ours = torch.autograd.grad(out, (cols, operand), g, create_graph=True)
        theirs = torch.autograd.grad(ref, (cols, operand), g, create_graph=True)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
        # second order: a function of both first derivatives, differentiated again (the MAML pattern)
        v = [torch.randn(t.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) for t in ours]
        second = [torch.autograd.grad(sum((d * u).sum() for d, u in zip(first, v)), (cols, operand, g),
                                      allow_unused=True, materialize_grads=True) for first in (ours, theirs)]
        for a, b in zip(*second):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
        assert second[0][0].abs().sum() > 0 and second[0][2].abs().sum() > 0
    fn = lambda c, o: pooled_product(c, o, (N, H, W), images)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (cols, operand)) and torch.autograd.gradgradcheck(fn, (cols, operand))


def test_pooled_product_keeps_its_inputs_and_the_indices_not_the_full_resolution_map():
    cols, operand = _inputs()

    def kept(fn) -> list[tuple[torch.dtype, tuple[int, ...]]]:
        saved = []

        def pack(t):
            saved.append((t.dtype, tuple(t.shape)))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(cols, operand)
        return saved

    full = (torch.float64, (N, C, H, W))
    pooled = (C, H // 2, W // 2)
    assert kept(lambda c, o: pooled_product(c, o, (N, H, W), 2)) == [  # the indices chunk by chunk: 2, 2 and 1 images
        (torch.float64, (N * H * W, K)), (torch.float64, (K, C)), (torch.int64, (2, *pooled)),
        (torch.int64, (2, *pooled)), (torch.int64, (1, *pooled))]
    assert full in kept(_written_out)  # F.max_pool2d keeps its input, the whole map


def test_pooled_product_runs_under_vmap_to_second_order_like_the_written_out_form():
    g = torch.Generator().manual_seed(3)
    cols = torch.randn(2, N * H * W, K, generator=g, dtype=torch.float64)
    operand = torch.randn(K, C, generator=g, dtype=torch.float64)

    def per_sample_curvature(fn):
        inner = torch.func.grad(lambda o, c: fn(c, o).pow(3).sum())
        return torch.func.vmap(torch.func.grad(lambda c: inner(operand, c).pow(2).sum()))(cols)

    chunked = lambda c, o: pooled_product(c, o, (N, H, W), 2)  # noqa: E731
    assert torch.equal(torch.func.vmap(chunked, (0, None))(cols, operand),
                       torch.func.vmap(_written_out, (0, None))(cols, operand))
    torch.testing.assert_close(per_sample_curvature(chunked), per_sample_curvature(_written_out),
                               rtol=1e-12, atol=1e-12)


def test_pooled_product_rejects_a_size_that_does_not_fit_and_empty_chunks():
    cols, operand = _inputs()
    with pytest.raises(ValueError, match="rows of cols"):
        pooled_product(cols, operand, (N, H + 1, W), 1)
    with pytest.raises(ValueError, match="at least 1"):
        pooled_product(cols, operand, (N, H, W), 0)


def test_pooled_product_under_bfloat16_autocast_is_autocasts_product_then_max_pool2d():
    """Under autocast the product runs in bfloat16 (its inputs float32); the gradients come back float32, as
    autocast's product gives them (the chunked products are summed in float32, hence the tolerance)."""
    g = torch.Generator().manual_seed(4)
    cols = torch.randn(N * H * W, K, generator=g).requires_grad_()
    operand = torch.randn(K, C, generator=g).requires_grad_()
    weights = torch.randn(N, C, H // 2, W // 2, generator=g)
    results = []
    for fn in (lambda: pooled_product(cols, operand, (N, H, W), 2), lambda: _written_out(cols, operand)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn()
        grads = torch.autograd.grad((out.float() * weights).sum(), (cols, operand))
        results.append((out, *grads))
    (out, *grads), (ref, *ref_grads) = results
    assert out.dtype == ref.dtype == torch.bfloat16 and torch.equal(out, ref)
    for a, b in zip(grads, ref_grads):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
