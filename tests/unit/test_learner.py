"""The learn2learn-style wrapper (metalab.learner) against the core algorithms, in float64."""

import pytest
import torch
from torch import nn

from metalab import algorithms
from metalab.algorithms import make_config
from metalab.data import TaskSpec
from metalab.func import forward, params_of, task_loss
from metalab.learner import MAML, Learner, MetaSGD
from metalab.nn import MLP, Conv4
from metalab.utils.errors import MetalabError

from .helpers import image_batch, sinusoid_batch

MLP_SPEC = TaskSpec((1,), 1, False)
CONV_SPEC = TaskSpec((1, 16, 16), 3, True)


def _mlp():
    torch.manual_seed(0)
    return MLP((1, 6, 6, 1)).double(), MLP_SPEC, sinusoid_batch()


def _conv():
    torch.manual_seed(0)
    return Conv4(1, image_size=16, hidden=2, out_features=3).double(), CONV_SPEC, image_batch(tasks=2)


def _grads(module):
    """``{name: grad}`` of every parameter, then the grads are reset to None."""
    grads = {}
    for name, p in module.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        grads[name] = p.grad.clone()
        p.grad = None
    return grads


def _wrapper_loop(wrapper, batch, steps):
    """The documented usage: a clone per task, ``steps`` adapt calls, per-task backward."""
    for episode in batch.episodes():
        learner = wrapper.clone()
        for _ in range(steps):
            learner.adapt(task_loss(learner(episode.support_x), episode.support_y))
        assert learner.step == steps
        loss2 = task_loss(learner(episode.query_x), episode.query_y) / len(batch)
        loss2.backward()


def _assert_same(ours, core):
    assert ours.keys() == core.keys()
    for name in core:
        torch.testing.assert_close(ours[name], core[name], rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


# 1. same meta-gradient as the core MAML --------------------------------------------------
@pytest.mark.parametrize("make", [_mlp, _conv], ids=["mlp", "conv4"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
def test_maml_meta_gradient_equals_core(make, steps, first_order):
    model, spec, batch = make()
    config = make_config("maml", inner_lr=0.3, inner_steps=steps, first_order=first_order, task_mode="loop")
    core = algorithms.MAML(spec, config, model=model)
    core.meta_loss(batch).loss.backward()
    expected = _grads(model)

    maml = MAML(model, lr=0.3, first_order=first_order)
    assert list(maml.parameters()) == list(model.parameters())
    _wrapper_loop(maml, batch, steps)
    _assert_same(_grads(model), expected)


# 2. same meta-gradient as the core Meta-SGD, rates included -------------------------------
META_SGD_CASES = [  # (make, steps, per_step, first_order): the full grid on the MLP, two on Conv4 (slow)
    *((_mlp, steps, per_step, fo) for steps, per_step in [(1, False), (3, False), (3, True)] for fo in (False, True)),
    (_conv, 3, True, False),
    (_conv, 1, False, True),
]


@pytest.mark.parametrize("make, steps, per_step, first_order", META_SGD_CASES,
                         ids=lambda v: v.__name__.strip("_") if callable(v) else str(v))
def test_meta_sgd_meta_gradient_equals_core(make, steps, per_step, first_order):
    model, spec, batch = make()
    config = make_config("meta_sgd", inner_lr=0.1, inner_steps=steps, first_order=first_order, task_mode="loop",
                         per_step_lrs=per_step, lr_init_range=(0.05, 0.3))  # random rates: coordinates differ
    core = algorithms.MetaSGD(spec, config, model=model)
    core.meta_loss(batch).loss.backward()
    expected = _grads(core)

    meta_sgd = MetaSGD(model, lr=(0.1,) * steps if per_step else 0.1, first_order=first_order)
    assert len(list(meta_sgd.parameters())) == 2 * len(list(model.parameters()))
    with torch.no_grad():
        for ours, theirs in zip(meta_sgd.lrs, core.lrs, strict=True):
            assert ours.shape == theirs.shape and torch.all(ours == 0.1)
            ours.copy_(theirs)
    _wrapper_loop(meta_sgd, batch, steps)
    ours = _grads(meta_sgd)
    assert any(g.abs().max() > 0 for name, g in ours.items() if name.startswith("lrs."))
    # the core names the model "model.*", the wrapper "module.*"; rates are "lrs.i" in both
    _assert_same({k.replace("module.", "model.", 1): v for k, v in ours.items()}, expected)


def test_meta_sgd_per_step_rates_start_at_each_entry():
    model, _, _ = _mlp()
    meta_sgd = MetaSGD(model, lr=[0.3, 0.2])
    for rate, p in zip(meta_sgd.lrs, model.parameters(), strict=True):
        assert rate.shape == (2, *p.shape) and rate.dtype == p.dtype
        assert torch.all(rate[0] == 0.3) and torch.all(rate[1] == 0.2)


# 3. per-step rates (MAML++) -------------------------------------------------------------------
@pytest.mark.parametrize("steps", [3, 4])  # 4 steps with 3 rates: the last rate is reused
def test_per_step_rates_equal_core(steps):
    rates = (0.3, 0.1, 0.05)
    model, spec, batch = _mlp()
    config = make_config("maml", inner_lr=rates, inner_steps=steps, task_mode="loop")
    algorithms.MAML(spec, config, model=model).meta_loss(batch).loss.backward()
    expected = _grads(model)

    _wrapper_loop(MAML(model, lr=rates), batch, steps)
    _assert_same(_grads(model), expected)

    _wrapper_loop(MAML(model, lr=0.3), batch, steps)  # the rates do matter
    constant = _grads(model)
    assert any(not torch.allclose(constant[k], expected[k], rtol=1e-4) for k in expected)


# 4. no copy, no mutation; clones; first order ------------------------------------------------
def test_adapt_leaves_the_model_untouched_and_starts_from_its_parameters():
    model, _, batch = _mlp()
    episode = batch[0]
    objects = list(model.parameters())
    values = {k: v.detach().clone() for k, v in model.state_dict().items()}
    maml = MAML(model, lr=0.3)
    torch.testing.assert_close(maml(episode.support_x), model(episode.support_x), rtol=0, atol=0)

    learner = maml.clone()
    assert isinstance(learner, Learner) and learner.module is model
    assert all(a is b for a, b in zip(learner.parameters(), model.parameters(), strict=True))
    for _ in range(2):
        learner.adapt(task_loss(learner(episode.support_x), episode.support_y))
    task_loss(learner(episode.query_x), episode.query_y).backward()

    assert list(model.parameters()) == objects and all(p.requires_grad for p in objects)
    for k, v in model.state_dict().items():
        assert torch.equal(v, values[k]), k
    assert [n for n, _ in learner.named_parameters()] == [n for n, _ in model.named_parameters()]
    for (name, fast), p in zip(learner.named_parameters(), model.parameters(), strict=True):
        assert fast is not p and not torch.equal(fast, p), name
    # the learner's output is the model run with the fast parameters
    torch.testing.assert_close(learner(episode.query_x), forward(model, learner.params, episode.query_x))


def test_clone_of_a_clone_keeps_the_graph():
    model, spec, batch = _mlp()
    config = make_config("maml", inner_lr=(0.3, 0.1), inner_steps=2, task_mode="loop")
    algorithms.MAML(spec, config, model=model).meta_loss(batch).loss.backward()
    expected = _grads(model)

    maml = MAML(model, lr=(0.3, 0.1))
    for episode in batch.episodes():
        first = maml.clone()
        first.adapt(task_loss(first(episode.support_x), episode.support_y))
        before = dict(first.params)
        second = first.clone()
        assert second.step == 1
        second.adapt(task_loss(second(episode.support_x), episode.support_y))  # uses the 2nd rate
        assert (first.step, second.step) == (1, 2)
        assert all(first.params[k] is before[k] for k in before)  # the clone's adapt left first alone
        (task_loss(second(episode.query_x), episode.query_y) / len(batch)).backward()
    _assert_same(_grads(model), expected)


def test_first_order_is_the_query_gradient_at_the_adapted_parameters():
    model, _, batch = _mlp()
    steps, lr = 2, 0.3
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for episode in batch.episodes():  # plain SGD by hand, detached every step
        params = {k: v.detach().clone().requires_grad_() for k, v in params_of(model).items()}
        for _ in range(steps):
            loss = task_loss(forward(model, params, episode.support_x), episode.support_y)
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {k: (v - lr * g).detach().requires_grad_() for (k, v), g in zip(params.items(), grads)}
        query = task_loss(forward(model, params, episode.query_x), episode.query_y)
        for name, g in zip(params, torch.autograd.grad(query, list(params.values()))):
            expected[name] += g / len(batch)

    _wrapper_loop(MAML(model, lr=lr, first_order=True), batch, steps)
    first = _grads(model)
    _assert_same(first, expected)
    _wrapper_loop(MAML(model, lr=lr, first_order=False), batch, steps)
    second = _grads(model)
    assert any(not torch.allclose(first[k], second[k], rtol=1e-3) for k in first)


def test_first_order_override_per_call_and_support_loss_reusable():
    model, _, batch = _mlp()
    episode = batch[0]
    maml = MAML(model, lr=0.3)  # second order by default, first order for this call
    learner = maml.clone()
    support = task_loss(learner(episode.support_x), episode.support_y)
    learner.adapt(support, first_order=True)
    assert all(p.grad_fn is not None for p in learner.parameters())
    # the support graph is kept, so the support loss may enter the meta-objective too
    (support + task_loss(learner(episode.query_x), episode.query_y)).backward()
    assert all(p.grad is not None for p in model.parameters())


# 5. errors, allow_unused, allow_nograd ---------------------------------------------------------
class TwoHeads(nn.Module):
    """Only ``used`` takes part in ``forward``."""

    def __init__(self):
        super().__init__()
        self.used = nn.Linear(2, 1).double()
        self.unused = nn.Linear(2, 1).double()

    def forward(self, x):
        return self.used(x)


def _xy():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 2, generator=g, dtype=torch.float64), torch.randn(5, 1, generator=g, dtype=torch.float64)


def test_unused_parameters_raise_unless_allowed():
    torch.manual_seed(0)
    model, (x, y) = TwoHeads(), _xy()
    learner = MAML(model, lr=0.1).clone()
    with pytest.raises(MetalabError, match=r"does not depend on parameter\(s\) \['unused.weight', "
                                           r"'unused.bias'\]; pass allow_unused=True"):
        learner.adapt(task_loss(learner(x), y))
    assert learner.step == 0 and all(a is b for a, b in zip(learner.parameters(), model.parameters()))

    for learner in (MAML(model, lr=0.1, allow_unused=True).clone(), MAML(model, lr=0.1).clone(allow_unused=True)):
        loss = task_loss(learner(x), y)
        grads = torch.autograd.grad(loss, [model.used.weight, model.used.bias], retain_graph=True)
        learner.adapt(loss)
        # unused -> zero gradient: same values; used -> one SGD step
        assert torch.equal(learner.params["unused.weight"], model.unused.weight)
        assert torch.equal(learner.params["unused.bias"], model.unused.bias)
        torch.testing.assert_close(learner.params["used.weight"], model.used.weight - 0.1 * grads[0])
        torch.testing.assert_close(learner.params["used.bias"], model.used.bias - 0.1 * grads[1])

    learner = MAML(model, lr=0.1).clone()
    learner.adapt(task_loss(learner(x), y), allow_unused=True)  # per-call override
    assert learner.step == 1


def test_loss_independent_of_every_parameter():
    torch.manual_seed(0)
    model, (x, _) = TwoHeads(), _xy()
    other = x.clone().requires_grad_()
    learner = MAML(model, lr=0.1).clone()
    with pytest.raises(MetalabError, match=r"\['used.weight', 'used.bias', 'unused.weight', 'unused.bias'\]"):
        learner.adapt((other ** 2).sum())
    learner.adapt((other ** 2).sum(), allow_unused=True)  # zero gradients: nothing moves
    assert learner.step == 1
    for fast, p in zip(learner.parameters(), model.parameters(), strict=True):
        assert torch.equal(fast, p)


def test_non_scalar_and_graphless_losses_raise():
    torch.manual_seed(0)
    model, (x, y) = TwoHeads(), _xy()
    learner = MAML(model, lr=0.1, allow_unused=True).clone()
    with pytest.raises(MetalabError, match=r"scalar loss tensor, got \(5, 1\); reduce it first"):
        learner.adapt((learner(x) - y) ** 2)
    with pytest.raises(MetalabError, match="scalar loss tensor, got float"):
        learner.adapt(1.0)
    with torch.no_grad():
        loss = task_loss(learner(x), y)
    with pytest.raises(MetalabError, match=r"has no graph.*outside torch.no_grad\(\)"):
        learner.adapt(loss)
    assert learner.step == 0


@pytest.mark.parametrize("wrapper", [MAML, MetaSGD])
def test_frozen_parameters_raise_unless_allow_nograd(wrapper):
    model, _, batch = _mlp()
    episode = batch[0]
    model.body[0].weight.requires_grad_(False)  # a frozen first layer
    frozen = ["body.0.weight"]
    learner = wrapper(model, lr=0.3).clone()
    with pytest.raises(MetalabError, match=rf"\[{frozen[0]!r}\] do not require grad.*pass allow_nograd=True"):
        learner.adapt(task_loss(learner(episode.support_x), episode.support_y))

    learner = wrapper(model, lr=0.3, allow_nograd=True).clone()
    loss = task_loss(learner(episode.support_x), episode.support_y)
    trainable = {k: p for k, p in model.named_parameters() if p.requires_grad}
    grads = dict(zip(trainable, torch.autograd.grad(loss, list(trainable.values()), retain_graph=True)))
    learner.adapt(loss)
    assert learner.params[frozen[0]] is dict(model.named_parameters())[frozen[0]]  # kept as it is
    for k, p in trainable.items():
        torch.testing.assert_close(learner.params[k], p - 0.3 * grads[k])
    task_loss(learner(episode.query_x), episode.query_y).backward()
    assert dict(model.named_parameters())[frozen[0]].grad is None
    assert all(p.grad is not None for p in trainable.values())


@pytest.mark.parametrize("lr", ["0.1", [], float("nan"), True, [0.1, None]])
def test_bad_rates_raise(lr):
    with pytest.raises(MetalabError, match="lr must be a finite number or a non-empty sequence"):
        MAML(TwoHeads(), lr=lr)


def test_only_modules_are_wrapped():
    with pytest.raises(MetalabError, match="wraps an nn.Module, got function"):
        MAML(lambda x: x, lr=0.1)
