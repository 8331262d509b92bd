import pytest
import torch
import torch.nn.functional as F

from metalab.func import SGD, class_prototypes, map_tasks, squared_euclidean
from metalab.nn import BatchNorm, Conv4
from metalab.utils import derive_seed, mean_ci95


@pytest.mark.parametrize("vmap_safe", [False, True])
def test_batchnorm_matches_torch_in_training_and_eval(vmap_safe):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    ours = BatchNorm(3, track_running_stats=True, vmap_safe=vmap_safe).double()
    ref = torch.nn.BatchNorm2d(3).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2), ours.bias.uniform_(-1, 1)
        ref.weight.copy_(ours.weight), ref.bias.copy_(ours.bias)
    for _ in range(3):
        torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("vmap_safe", [False, True])
def test_batchnorm_without_running_stats_always_uses_the_batch(vmap_safe):
    bn = BatchNorm(2, vmap_safe=vmap_safe).double().eval()
    x = torch.randn(4, 2, 3, dtype=torch.float64) * 5 + 3
    out = bn(x)
    torch.testing.assert_close(out, F.batch_norm(x, None, None, bn.weight, bn.bias, training=True))
    assert not hasattr(bn, "running_mean")


def test_conv4_shapes():
    assert Conv4()(torch.zeros(2, 1, 28, 28)).shape == (2, 64)
    assert Conv4(out_features=5)(torch.zeros(2, 1, 28, 28)).shape == (2, 5)
    assert Conv4(3, image_size=84, hidden=32)(torch.zeros(1, 3, 84, 84)).shape == (1, 32 * 25)


def test_prototypes_equal_per_class_means():
    torch.manual_seed(1)
    emb = torch.randn(12, 4, dtype=torch.float64)
    labels = torch.tensor([2, 0, 1, 2, 2, 0, 1, 1, 0, 0, 2, 1])
    protos = class_prototypes(emb, labels, 3)
    for k in range(3):
        torch.testing.assert_close(protos[k], emb[labels == k].mean(0))


def test_squared_euclidean_against_cdist():
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(squared_euclidean(a, b), torch.cdist(a, b) ** 2)


def test_sgd_per_step_rates():
    rule = SGD([0.1, 0.01])
    p, g = {"w": torch.tensor(1.0)}, {"w": torch.tensor(2.0)}
    assert rule(p, g, None, 0)[0]["w"].item() == pytest.approx(0.8)
    assert rule(p, g, None, 1)[0]["w"].item() == pytest.approx(0.98)
    assert rule(p, g, None, 5)[0]["w"].item() == pytest.approx(0.98)


def test_map_tasks_loop_equals_vmap_and_threads():
    x = torch.randn(3, 4, 2)

    def fn(t):
        return t.sum(0), (t ** 2).mean()

    loop = map_tasks(fn, (x,), "loop")
    for mode in ("vmap", "threads"):
        for a, b in zip(loop, map_tasks(fn, (x,), mode)):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="task mode"):
        map_tasks(fn, (x,), "parallel")


def test_mean_ci95_analytic():
    mean, ci = mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert ci == pytest.approx(1.96 * (5 / 3) ** 0.5 / 2)


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, 1) == derive_seed(0, 1)
    assert len({derive_seed(0, i) for i in range(1000)}) == 1000
    assert derive_seed(1, 0) != derive_seed(0, 1)
    assert derive_seed(5) == 1754367730389710213  # pinned: streams must not change between versions


@pytest.mark.parametrize("first_order", [False, True])
def test_inner_loop_autograd_gradients_equal_torch_func_ones_to_second_order(first_order):
    """``torch.autograd.grad`` (loop, threads) and ``torch.func.grad_and_value`` (``under_vmap``) adapt a float64
    Conv4 to the same parameters and give the same meta-gradient; under ``torch.no_grad`` both still adapt; a
    parameter the loss does not use gets a zero gradient from both."""
    from metalab.func import forward, inner_loop, params_of, task_loss

    g = torch.Generator().manual_seed(0)
    model = Conv4(hidden=8, out_features=5).double()
    x, y = torch.rand(10, 1, 28, 28, generator=g, dtype=torch.float64), torch.arange(10) % 5
    qx = torch.rand(10, 1, 28, 28, generator=g, dtype=torch.float64)
    unused = torch.ones(3, dtype=torch.float64, requires_grad=True)
    theta = {**params_of(model), "unused": unused}

    def support_loss(p):
        return task_loss(forward(model, {k: v for k, v in p.items() if k != "unused"}, x), y)

    def run(under_vmap):
        adapted = inner_loop(support_loss, theta, SGD(0.3), 2, first_order, under_vmap=under_vmap)
        query = task_loss(forward(model, {k: v for k, v in adapted.items() if k != "unused"}, qx), y)
        meta = torch.autograd.grad(query, list(theta.values()), allow_unused=True)
        with torch.no_grad():
            evaluated = inner_loop(support_loss, theta, SGD(0.3), 2, first_order, under_vmap=under_vmap)
        return [*adapted.values(), *(m for m in meta if m is not None), *evaluated.values()], adapted["unused"]

    ours, ours_unused = run(False)
    theirs, theirs_unused = run(True)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.equal(ours_unused, unused) and torch.equal(theirs_unused, unused)  # zero gradient: unchanged
    assert not ours[-1].requires_grad  # no graph under torch.no_grad
