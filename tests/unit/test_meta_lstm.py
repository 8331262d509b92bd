"""The Meta-LSTM update rule (Ravi & Larochelle 2017) and the meta_lstm method."""

import math

import pytest
import torch

from metalab import BenchmarkConfig, TrainConfig, build, evaluate, make_benchmark, train
from metalab.data import TaskSpec
from metalab.func import SGD, MetaLSTM, forward, inner_loop, params_of, preprocess, task_loss
from metalab.nn import MLP
from metalab.utils.errors import MetalabError

from .helpers import image_batch, sinusoid_batch

H = 3


def _weights(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return (torch.rand(*shape, generator=g, dtype=dtype) - 0.5)

    return {"weight_ih": r(4 * H, 4), "weight_hh": r(4 * H, H), "bias": r(4 * H), "W_I": r(H + 2),
            "b_I": r(()) - 3, "W_F": r(H + 2), "b_F": r(()) + 3}


def _mlp_problem(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = MLP((1, 5, 1)).to(dtype)
    x = torch.linspace(-2, 2, 8, dtype=dtype).unsqueeze(1)
    y = torch.sin(x)

    def loss_fn(p):
        return task_loss(forward(model, p, x), y)

    return model, loss_fn


def test_preprocess_is_the_two_branch_definition():
    p = 10.0
    x = torch.tensor([0.0, 1e-9, -3e-6, math.exp(-p), -math.exp(-p), 2e-4, -0.5, 7.0], dtype=torch.float64)
    expected = []
    for v in x.tolist():
        if abs(v) >= math.exp(-p):
            expected.append((math.log(abs(v)) / p, math.copysign(1.0, v)))
        else:
            expected.append((-1.0, math.exp(p) * v))
    torch.testing.assert_close(preprocess(x, p), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert torch.isfinite(torch.func.grad(lambda t: preprocess(t).sum())(x)).all()


def test_fixed_gates_reproduce_sgd_exactly():
    model, loss_fn = _mlp_problem(torch.float32)
    params = params_of(model)
    rule = MetaLSTM({k: v.float() for k, v in _weights().items()}, input_gate=0.1, forget_gate=1.0)
    for first_order in (True, False):
        ours = inner_loop(loss_fn, params, rule, 4, first_order)
        sgd = inner_loop(loss_fn, params, SGD(0.1), 4, first_order)
        for name in params:
            assert torch.equal(ours[name], sgd[name]), name


def test_saturated_learned_gates_approach_sgd():
    """W_I = W_F = 0, b_I = logit(lr), b_F large: the learned gates are lr and 1 (paper, after eq. 1)."""
    model, loss_fn = _mlp_problem()
    params = {k: v.detach() for k, v in params_of(model).items()}
    w = _weights()
    w.update(W_I=torch.zeros(H + 2, dtype=torch.float64), W_F=torch.zeros(H + 2, dtype=torch.float64),
             b_I=torch.tensor(math.log(0.05 / 0.95), dtype=torch.float64), b_F=torch.tensor(40.0, dtype=torch.float64))
    ours = inner_loop(loss_fn, params, MetaLSTM(w), 3, True)
    sgd = inner_loop(loss_fn, params, SGD(0.05), 3, True)
    for name in params:
        torch.testing.assert_close(ours[name], sgd[name], rtol=1e-12, atol=1e-12)


def test_rule_matches_a_per_coordinate_loop_with_torch_lstm_cell():
    w = _weights(1)
    g = torch.Generator().manual_seed(2)
    params = {"a": torch.randn(2, 3, generator=g, dtype=torch.float64), "b": torch.randn(4, generator=g, dtype=torch.float64)}
    rule = MetaLSTM(w)
    state = rule.init(params)
    cell = torch.nn.LSTMCell(4, H).double()
    order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
    with torch.no_grad():  # the rule stores the gates as (i, f, o, g), LSTMCell as (i, f, g, o)
        cell.weight_ih[order] = w["weight_ih"]
        cell.weight_hh[order] = w["weight_hh"]
        cell.bias_ih[order] = w["bias"]
        cell.bias_hh.zero_()
    theta = torch.cat([params["a"].flatten(), params["b"]])
    ref_h = [torch.zeros(1, H, dtype=torch.float64) for _ in theta]
    ref_c = [torch.zeros(1, H, dtype=torch.float64) for _ in theta]
    ref_i, ref_f = [0.0] * len(theta), [0.0] * len(theta)
    for step in range(3):
        grads = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in params.items()}
        loss = torch.rand((), generator=g, dtype=torch.float64) + 0.1
        params, state = rule(params, grads, state, step, value=loss)
        flat_g = torch.cat([grads["a"].flatten(), grads["b"]])
        new_theta = []
        for j in range(len(theta)):
            x = torch.cat([preprocess(flat_g[j:j + 1]), preprocess(loss.reshape(1))], 1)
            ref_h[j], ref_c[j] = cell(x, (ref_h[j], ref_c[j]))
            hj = ref_h[j][0]
            i = torch.sigmoid(torch.dot(w["W_I"], torch.cat([hj, theta[j:j + 1], torch.tensor([ref_i[j]], dtype=torch.float64)])) + w["b_I"])
            f = torch.sigmoid(torch.dot(w["W_F"], torch.cat([hj, theta[j:j + 1], torch.tensor([ref_f[j]], dtype=torch.float64)])) + w["b_F"])
            ref_i[j], ref_f[j] = i.item(), f.item()
            new_theta.append(f * theta[j] - i * flat_g[j])
        theta = torch.stack(new_theta).detach()
        torch.testing.assert_close(torch.cat([params["a"].flatten(), params["b"]]), theta, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state.input_gate, torch.tensor(ref_i, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_coordinates_share_one_lstm_so_parameter_order_does_not_matter():
    w = _weights(3)
    g = torch.Generator().manual_seed(4)
    params = {"a": torch.randn(3, generator=g, dtype=torch.float64), "b": torch.randn(2, 2, generator=g, dtype=torch.float64)}
    grads = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in params.items()}
    loss = torch.tensor(0.7, dtype=torch.float64)
    rule = MetaLSTM(w)
    forward_order, _ = rule(params, grads, rule.init(params), 0, value=loss)
    swapped = {"b": params["b"], "a": params["a"]}
    backward_order, _ = rule(swapped, {"b": grads["b"], "a": grads["a"]}, rule.init(swapped), 0, value=loss)
    for name in params:
        torch.testing.assert_close(forward_order[name], backward_order[name], rtol=0, atol=0)


def test_rule_needs_the_loss():
    params = {"a": torch.zeros(2, dtype=torch.float64)}
    rule = MetaLSTM(_weights())
    with pytest.raises(MetalabError, match="value"):
        rule(params, params, rule.init(params), 0)


# first order treats the gradient and loss inputs as constants, which is exact only while they do not depend on
# the meta-parameters: for the first update; second order is exact for any number of updates
@pytest.mark.parametrize("first_order, steps", [(True, 1), (False, 3)])
def test_meta_gradient_of_the_unrolled_rule_passes_gradcheck(first_order, steps):
    model, loss_fn = _mlp_problem()
    names = list(_weights())
    theta0 = {k: v.detach() for k, v in params_of(model).items()}

    def meta_loss(*tensors):
        w = dict(zip(names, tensors))
        adapted = inner_loop(loss_fn, theta0, MetaLSTM(w), steps, first_order)
        return loss_fn(adapted)

    inputs = tuple(v.requires_grad_() for v in _weights(5).values())
    assert torch.autograd.gradcheck(meta_loss, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_loop_and_vmap_over_tasks_agree():
    batch = sinusoid_batch(tasks=3)
    losses = []
    for mode in ("loop", "vmap"):
        torch.manual_seed(0)
        algo = build("meta_lstm", TaskSpec((1,), 1, False), task_mode=mode).double()
        losses.append(algo.meta_loss(batch).loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=1e-12)


def test_config_errors():
    with pytest.raises(MetalabError, match="inner_lr"):
        build("meta_lstm", TaskSpec((1,), 1, False), inner_lr=1.5)
    with pytest.raises(MetalabError, match="hidden_size"):
        build("meta_lstm", TaskSpec((1,), 1, False), hidden_size=0)


def test_starts_as_sgd_at_inner_lr():
    """Fresh, the input gate is ~inner_lr and the forget gate ~1: the first update is SGD-like."""
    algo = build("meta_lstm", TaskSpec((1, 16, 16), 3, True), inner_lr=0.02, init_scale=0.0)
    batch = image_batch(tasks=1, dtype=torch.float32)
    params = {k: v.detach() for k, v in params_of(algo.model).items()}
    episode = batch[0]
    ours = algo.adapted(params, episode.support_x, episode.support_y, 1, True)
    sgd = inner_loop(lambda p: task_loss(forward(algo.model, p, episode.support_x), episode.support_y), params,
                     SGD(0.02), 1, True)
    for name in params:  # f = sigmoid(5) = 0.9933 shrinks theta slightly; i = 0.02 exactly
        torch.testing.assert_close(ours[name], torch.sigmoid(torch.tensor(5.0)) * params[name] + (sgd[name] - params[name]),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_meta_lstm_learns_omniglot_5way_1shot(omniglot_dir, omniglot_cache):
    bench = make_benchmark(BenchmarkConfig("omniglot", data_dir=str(omniglot_dir), cache_dir=str(omniglot_cache),
                                           n_way=5, k_shot=1, train_n_query=5))
    torch.manual_seed(0)
    algo = build("meta_lstm", bench.spec)
    train(algo, bench, TrainConfig(steps=150, meta_batch_size=4, outer_lr=3e-3, val_every=0), progress=False)
    result = evaluate(algo, bench.test, 100)
    assert result.mean > 0.55, result  # chance is 0.2


def test_meta_lstm_learns_sinusoid_regression():
    bench = make_benchmark(BenchmarkConfig("sinusoid", k_shot=10))
    torch.manual_seed(0)
    algo = build("meta_lstm", bench.spec)
    before = evaluate(algo, bench.val, 100)
    train(algo, bench, TrainConfig(steps=100, meta_batch_size=5, outer_lr=1e-2, val_every=0, val_episodes=10),
          progress=False)
    after = evaluate(algo, bench.val, 100)  # the same 100 tasks: 4.3 -> 2.7 when this was written
    assert after.mean < 0.75 * before.mean, (before, after)


def test_the_rule_drives_the_clone_adapt_learner_like_the_inner_loop():
    """Any gradient-based path takes the rule: the familiar Learner API gives the inner loop's weights."""
    from metalab.learner import Learner

    model, loss_fn = _mlp_problem()
    params = {k: v.detach().requires_grad_() for k, v in params_of(model).items()}
    rule = MetaLSTM(_weights(6))
    learner = Learner(model, params, rule, first_order=True)
    for _ in range(3):
        learner.adapt(loss_fn(learner.params))
    expected = inner_loop(loss_fn, params, rule, 3, first_order=True)
    for name in params:
        torch.testing.assert_close(learner.params[name], expected[name], rtol=1e-12, atol=1e-12)
