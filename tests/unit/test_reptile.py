"""Reptile: the inner loop against torch.optim.Adam, the outer step, minibatches, learning."""

from dataclasses import replace

import pytest
import torch
from torch.func import functional_call

import metalab
from metalab.algorithms import Reptile, make_config
from metalab.algorithms.reptile import minibatches
from metalab.data import TaskSpec
from metalab.engine import TrainConfig, evaluate, train
from metalab.func import SGD, Adam, task_loss
from metalab.nn import MLP, Conv4
from metalab.utils.errors import MetalabError

from .helpers import flat_grad, image_batch, sinusoid_batch

B2, EPS = 0.999, 1e-8


def _mlp_reptile(mode="loop", **hparams):
    torch.manual_seed(0)
    config = make_config("reptile", task_mode=mode, **hparams)
    return Reptile(TaskSpec((1,), 1, False), config, model=MLP((1, 6, 6, 1))).double()


def _conv_reptile(mode="loop", **hparams):
    torch.manual_seed(0)
    config = make_config("reptile", task_mode=mode, **hparams)
    model = Conv4(1, image_size=16, hidden=2, out_features=3, vmap_safe=mode == "vmap")
    return Reptile(TaskSpec((1, 16, 16), 3, True), config, model=model).double()


def _flat(tensors):
    return torch.cat([t.detach().flatten() for t in tensors])


def _tf_eps(optimizer, t):
    """The rule adds eps to sqrt(v) before the bias correction (Kingma & Ba's "efficient
    version", as in the paper's TensorFlow code); torch.optim.Adam adds it after, so its
    eps is rescaled per step to give the same update."""
    for group in optimizer.param_groups:
        group["eps"] = EPS / (1 - B2**t) ** 0.5


def _adapted_by_hand(model, x, y, batches, lr, b1):
    """W_i: plain torch.optim.Adam on leaf copies of the parameters, one minibatch per step."""
    params = {k: p.detach().clone().requires_grad_() for k, p in model.named_parameters()}
    optimizer = torch.optim.Adam(params.values(), lr=lr, betas=(b1, B2))
    for t, index in enumerate(batches, start=1):
        _tf_eps(optimizer, t)
        optimizer.zero_grad()
        task_loss(functional_call(model, params, (x[index],)), y[index]).backward()
        optimizer.step()
    return {k: p.detach() for k, p in params.items()}


def _by_hand(model, batch, lr, b1, steps, batch_size, on_query=True):
    """(mean_i W_i flattened, mean query loss at W_i) of a meta-batch."""
    weights, losses = [], []
    for ep in batch.episodes():
        x, y = ep.support_x, ep.support_y
        if on_query:
            x, y = torch.cat([x, ep.query_x]), torch.cat([y, ep.query_y])
        w = _adapted_by_hand(model, x, y, minibatches(len(x), batch_size, steps, ep.meta.seed), lr, b1)
        weights.append(_flat(w.values()))
        losses.append(task_loss(functional_call(model, w, (ep.query_x,)), ep.query_y))
    return torch.stack(weights).mean(0), torch.stack(losses).mean().item()


@pytest.mark.parametrize("b1, batch_size, on_query", [(0.0, 4, True), (0.9, None, True), (0.0, 3, False)])
def test_surrogate_gradient_is_theta_minus_mean_adapted_weights(b1, batch_size, on_query):
    algo = _mlp_reptile(inner_lr=0.01, adam_b1=b1, inner_batch_size=batch_size, train_on_query=on_query)
    batch = sinusoid_batch()
    out = algo.meta_loss(batch)
    out.loss.backward()
    mean_w, query_loss = _by_hand(algo.model, batch, 0.01, b1, 5, batch_size, on_query)
    torch.testing.assert_close(flat_grad(algo), _flat(algo.parameters()) - mean_w, rtol=1e-10, atol=1e-12)
    assert set(out.metrics) == {"loss", "mse"}
    assert out.metrics["loss"] == pytest.approx(query_loss, rel=1e-10)  # the task loss, not the surrogate
    assert out.metrics["mse"] == pytest.approx(query_loss, rel=1e-10)


def test_outer_sgd_step_is_the_reptile_update():
    epsilon = 0.3
    algo = _mlp_reptile(inner_lr=0.01, inner_batch_size=4)
    batch = sinusoid_batch()
    theta = _flat(algo.parameters())
    mean_w, _ = _by_hand(algo.model, batch, 0.01, 0.0, 5, 4)
    optimizer = algo.outer_optimizer(epsilon)
    algo.meta_gradient(batch)  # what the trainer calls
    optimizer.step()
    torch.testing.assert_close(_flat(algo.parameters()), theta + epsilon * (mean_w - theta), rtol=1e-12, atol=1e-14)


def test_first_trainer_step_of_the_annealed_schedule_moves_to_the_mean_adapted_weights():
    bench = metalab.make_benchmark(metalab.BenchmarkConfig("sinusoid", k_shot=5))
    torch.manual_seed(0)
    algo = metalab.build("reptile", bench.spec, inner_lr=0.01, inner_batch_size=4)
    mean_w, _ = _by_hand(algo.model, bench.train.batch(0, 3), 0.01, 0.0, 5, 4)
    config = TrainConfig(steps=1, meta_batch_size=3, outer_lr=1.0, lr_anneal=True, val_every=0, val_episodes=1)
    train(algo, bench, config, progress=False)
    torch.testing.assert_close(_flat(algo.parameters()), mean_w, rtol=1e-5, atol=1e-6)  # epsilon = 1: theta <- mean W


def test_rule_follows_the_config():
    assert _mlp_reptile().rule() == Adam(1e-3, b1=0.0)
    assert _mlp_reptile(adam_b1=0.5, inner_lr=0.1).rule() == Adam(0.1, b1=0.5)
    assert _mlp_reptile(inner_optimizer="sgd", inner_lr=0.02).rule() == SGD(0.02)


# Conv biases before batch norm have a zero gradient in exact arithmetic; Adam scales its
# rounding noise (~1e-17, different in the two modes) up to ~lr * noise / eps, hence atol.
@pytest.mark.parametrize("make, data, atol",
                         [(_mlp_reptile, sinusoid_batch, 1e-12), (_conv_reptile, image_batch, 1e-9)])
def test_loop_equals_vmap(make, data, atol):
    batch = data()
    results = []
    for mode in ("loop", "vmap"):
        algo = make(mode, inner_lr=0.01, inner_batch_size=4)
        out = algo.meta_loss(batch)
        out.loss.backward()
        results.append((out.loss.detach(), flat_grad(algo), out.metrics))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-10, atol=atol)
    assert results[0][2] == pytest.approx(results[1][2], rel=1e-10)


def test_minibatches_cover_every_example_before_repeating_and_are_seeded():
    batches = minibatches(7, 3, 10, seed=5)
    assert batches.shape == (10, 3) and batches.dtype == torch.int64
    assert torch.equal(batches, minibatches(7, 3, 10, seed=5))
    assert not torch.equal(batches, minibatches(7, 3, 10, seed=6))
    stream = batches.flatten().tolist()
    for start in range(0, 28, 7):  # every block of 7 draws is a permutation: no repeats within an epoch
        assert sorted(stream[start:start + 7]) == list(range(7))
    assert len(set(stream[28:])) == 2
    full = minibatches(7, None, 4, seed=5)
    assert full.shape == (4, 7) and all(sorted(row) == list(range(7)) for row in full.tolist())
    assert len({tuple(row) for row in full.tolist()}) > 1  # reshuffled every epoch
    assert torch.equal(minibatches(7, 50, 4, seed=5), full)  # a batch larger than the data is the data
    assert minibatches(7, 3, 0, seed=5).shape == (0, 3)


def test_minibatches_come_from_the_episode_seed():
    batch = sinusoid_batch()
    reseeded = replace(batch, metas=tuple(replace(m, seed=m.seed + 1) for m in batch.metas))
    grads = {}
    for size in (4, None):
        for name, data in (("same", batch), ("reseeded", reseeded)):
            algo = _mlp_reptile(inner_lr=0.01, inner_batch_size=size)
            algo.meta_loss(data).loss.backward()
            grads[size, name] = flat_grad(algo)
    assert not torch.allclose(grads[4, "same"], grads[4, "reseeded"], rtol=1e-3)
    # all data at every step: the order of the examples changes, the steps do not
    torch.testing.assert_close(grads[None, "same"], grads[None, "reseeded"], rtol=1e-10, atol=1e-12)


def test_adapt_uses_only_the_support_set_and_keeps_no_graph():
    algo = _conv_reptile(inner_lr=0.01, inner_batch_size=4)
    episode = image_batch(tasks=1)[0]
    other = replace(episode, query_x=torch.rand_like(episode.query_x), query_y=episode.query_y.flip(0))
    out = algo.adapt(episode, steps=20)(episode.support_x)
    assert not out.requires_grad
    assert torch.equal(out, algo.adapt(other, steps=20)(episode.support_x))
    before = task_loss(algo.adapt(episode, steps=0)(episode.support_x), episode.support_y)
    assert task_loss(out, episode.support_y) < before


@pytest.mark.parametrize("field, value", [("inner_optimizer", "rmsprop"), ("inner_batch_size", 0), ("adam_b1", 1.0),
                                          ("inner_state", "shared")])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(MetalabError, match=field):
        make_config("reptile", **{field: value})


@pytest.mark.parametrize("other", [{"inner_optimizer": "sgd"}, {"task_mode": "vmap"}, {"task_mode": "batched"}])
def test_persistent_state_needs_adam_and_the_loop(other):
    field = next(iter(other))
    with pytest.raises(MetalabError, match=f"inner_state='persistent'.*{field}|{field}.*inner_state='persistent'"):
        make_config("reptile", inner_state="persistent", **other)


def test_persistent_inner_adam_carries_over_tasks_and_meta_batches_like_the_reference_code():
    """openai/supervised-reptile: one Adam for all of meta-training; only the weights are reset per task."""
    lr, steps, size = 0.01, 5, 4
    algo = _mlp_reptile(inner_lr=lr, inner_batch_size=size, inner_state="persistent")
    assert algo.task_mode == "loop"  # auto gives vmap for vectors, but the state passes task to task
    weights = {k: p.detach().clone().requires_grad_() for k, p in algo.model.named_parameters()}
    reference = torch.optim.Adam(weights.values(), lr=lr, betas=(0.0, B2))
    outer = algo.outer_optimizer(0.5)
    t = 0
    for seed in (0, 1):
        batch = sinusoid_batch(seed=seed)
        theta = {k: p.detach().clone() for k, p in algo.model.named_parameters()}
        adapted = []
        for ep in batch.episodes():
            with torch.no_grad():
                for k, w in weights.items():
                    w.copy_(theta[k])
            x, y = torch.cat([ep.support_x, ep.query_x]), torch.cat([ep.support_y, ep.query_y])
            for index in minibatches(len(x), size, steps, ep.meta.seed):
                t += 1
                _tf_eps(reference, t)
                reference.zero_grad()
                task_loss(functional_call(algo.model, weights, (x[index],)), y[index]).backward()
                reference.step()
            adapted.append(_flat(weights.values()))
        outer.zero_grad()
        algo.meta_gradient(batch)
        mean_w = torch.stack(adapted).mean(0)
        torch.testing.assert_close(flat_grad(algo), _flat(theta.values()) - mean_w, rtol=1e-9, atol=1e-11)
        outer.step()
    m, v, count = algo.stored_state()
    assert count.item() == t == 2 * 4 * steps
    for k, w in weights.items():
        torch.testing.assert_close(v[k], reference.state[w]["exp_avg_sq"], rtol=1e-10, atol=1e-15)


def test_persistent_state_is_read_by_adapt_and_written_only_in_training():
    algo = _mlp_reptile(inner_lr=0.01, inner_state="persistent")
    episode = sinusoid_batch(tasks=1)[0]
    fresh = algo.adapt(episode, steps=3)(episode.query_x)
    algo.eval()
    algo.meta_loss(sinusoid_batch())
    assert algo.inner_count.item() == 0  # evaluation mode leaves the state alone
    algo.train()
    algo.meta_loss(sinusoid_batch())
    state = [b.clone() for b in algo.buffers()]
    assert algo.inner_count.item() == 4 * 5
    carried = algo.adapt(episode, steps=3)(episode.query_x)
    assert not torch.allclose(carried, fresh)  # adapt starts from the carried moments
    assert all(torch.equal(a, b) for a, b in zip(state, algo.buffers()))  # and does not write them back
    copy = _mlp_reptile(inner_lr=0.01, inner_state="persistent")
    copy.load_state_dict(algo.state_dict())  # checkpoints carry the state
    assert torch.equal(copy.adapt(episode, steps=3)(episode.query_x), carried)


def test_reptile_learns_sinusoid():
    """Post-adaptation test MSE (32 steps): ~4.2 untrained, 1.81-1.96 after training (3 init seeds)."""
    bench = metalab.make_benchmark(metalab.BenchmarkConfig("sinusoid", k_shot=10))
    torch.manual_seed(0)
    algo = metalab.build("reptile", bench.spec, inner_optimizer="sgd", inner_lr=0.02, inner_steps=5,
                         test_inner_steps=32)
    before = evaluate(algo, bench.test, 50).mean
    config = TrainConfig(steps=600, meta_batch_size=5, outer_lr=0.1, val_every=0, val_episodes=1)
    train(algo, bench, config, progress=False)
    after = evaluate(algo, bench.test, 50).mean
    assert after < 2.6 and after < before - 1.5, (before, after)
