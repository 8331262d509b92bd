"""Matching Networks, cosine_similarity and reduce_by_class against by-hand loops."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalab.algorithms import build, make_config
from metalab.algorithms.matching_net import FullContextEmbedding
from metalab.data import TaskSpec
from metalab.utils.errors import MetalabError

from .helpers import assert_every_parameter_gets_a_gradient, image_batch

SPEC = TaskSpec((1, 16, 16), 3, True)


def _matching_net(**hparams):
    torch.manual_seed(0)
    algo = build("matching_net", SPEC, **hparams).double()
    if algo.context is not None:  # fresh LSTMs are near-linear: make them matter
        with torch.no_grad():
            for p in algo.context.parameters():
                p.mul_(4.0)
    return algo


def _warm(algo):
    """Training steps' side effect: batch-norm running averages move away from (0, 1)."""
    with torch.no_grad():
        algo.train().meta_loss(image_batch(tasks=2, seed=5))
    return algo.eval()


def _episode(seed=0):
    return image_batch(tasks=1, seed=seed)[0]


def _lstm_by_hand(lstm, suffix, seq):
    """One direction of ``nn.LSTM`` written out (PyTorch's gate order i, f, g, o), differentiable in its weights."""
    W_ih, W_hh = getattr(lstm, "weight_ih_l0" + suffix), getattr(lstm, "weight_hh_l0" + suffix)
    b = getattr(lstm, "bias_ih_l0" + suffix) + getattr(lstm, "bias_hh_l0" + suffix)
    d = seq.shape[1]
    h = torch.zeros(d, dtype=seq.dtype)
    c = torch.zeros(d, dtype=seq.dtype)
    out = []
    for x in seq:
        z = W_ih @ x + W_hh @ h + b
        i_gate, f_gate, g_gate, o_gate = z[:d], z[d:2 * d], z[2 * d:3 * d], z[3 * d:]
        c = torch.sigmoid(f_gate) * c + torch.sigmoid(i_gate) * torch.tanh(g_gate)
        h = torch.sigmoid(o_gate) * torch.tanh(c)
        out.append(h)
    return torch.stack(out)


def _bilstm_by_hand(lstm, g):
    """``g + h_fwd + h_bwd``: the forward weights read the set first to last, the reverse ones last to first."""
    return g + _lstm_by_hand(lstm, "", g) + _lstm_by_hand(lstm, "_reverse", g.flip(0)).flip(0)


def _bilstm_by_nn_lstm(lstm, g):
    """The same with two separate one-directional ``nn.LSTM`` run on copies of the weights."""
    d = g.shape[1]
    outputs = []
    for suffix, seq in (("", g), ("_reverse", g.flip(0))):
        one_way = nn.LSTM(d, d).double()
        with torch.no_grad():
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                getattr(one_way, name).copy_(getattr(lstm, name + suffix))
        h, _ = one_way(seq[:, None])
        outputs.append(h[:, 0] if suffix == "" else h[:, 0].flip(0))
    return g + outputs[0] + outputs[1]


def _attention_lstm_by_hand(gates, steps, f, g):
    """Appendix A.2's attLSTM, one query at a time, gates written out from the Linear's weight and bias."""
    d = f.shape[1]
    W, b = gates.weight, gates.bias
    out = []
    for x in f:
        h = torch.zeros(d, dtype=f.dtype)
        c = torch.zeros(d, dtype=f.dtype)
        for _ in range(steps):
            logits = torch.stack([h @ gi for gi in g])
            a = torch.exp(logits - logits.max())
            a = a / a.sum()
            r = sum(a[i] * g[i] for i in range(len(g)))
            z = W @ torch.cat([x, h, r]) + b
            i_gate, f_gate, o_gate, u = z[:d], z[d:2 * d], z[2 * d:3 * d], z[3 * d:]
            c = torch.sigmoid(f_gate) * c + torch.sigmoid(i_gate) * torch.tanh(u)
            h = torch.sigmoid(o_gate) * torch.tanh(c) + x
        out.append(h)
    return torch.stack(out)


def _log_probs_by_hand(query, support, support_y, n_way, scale=1.0):
    """log sum over each class's support examples of softmax_i(scale * cos(query, support_i))."""
    rows = []
    for q in query:
        sims = torch.stack([F.cosine_similarity(q, s, dim=0) for s in support]) * scale
        attention = torch.softmax(sims, dim=0)
        per_class = []
        for k in range(n_way):
            mass = sum(attention[i] for i, y in enumerate(support_y.tolist()) if y == k)
            per_class.append(torch.log(mass))
        rows.append(torch.stack(per_class))
    return torch.stack(rows)


def _embed_by_hand(algo, support, query):
    if algo.context is None:
        return support, query
    g = _bilstm_by_hand(algo.context.support_lstm, support)
    return g, _attention_lstm_by_hand(algo.context.query_gates, algo.config.fce_steps, query, g)


def _task_loss_by_hand(algo, sx, sy, qx, qy, n_way):
    z = algo.encoder(torch.cat([sx, qx]))  # the method's one training-mode pass over support and query
    support, query = _embed_by_hand(algo, z[: len(sx)], z[len(sx):])
    log_probs = _log_probs_by_hand(query, support, sy, n_way, algo.config.scale)
    return -sum(log_probs[i, y] for i, y in enumerate(qy.tolist())) / len(qy)


def _relabelled(episode, relabel):
    return replace(episode, support_y=relabel[episode.support_y])


@pytest.mark.parametrize("hparams", [{}, {"scale": 3.0}, {"fce": True, "fce_steps": 3}])
def test_predictions_are_log_attention_mass_per_class(hparams):
    algo = _warm(_matching_net(**hparams))
    episode = _episode()
    log_probs = algo.adapt(episode)(episode.query_x)
    with torch.no_grad():
        support, query = _embed_by_hand(algo, algo.encoder(episode.support_x), algo.encoder(episode.query_x))
        expected = _log_probs_by_hand(query, support, episode.support_y, 3, hparams.get("scale", 1.0))
    assert log_probs.dtype == torch.float64 and log_probs.shape == (6, 3)
    torch.testing.assert_close(log_probs, expected)


@pytest.mark.parametrize("hparams", [{}, {"scale": 3.0}, {"fce": True}])
def test_outputs_are_a_distribution_over_classes(hparams):
    algo = _warm(_matching_net(**hparams))
    episode = _episode()
    probs = algo.adapt(episode)(episode.query_x).exp()
    assert (probs > 0).all() and (probs <= 1).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs), dtype=torch.float64))


@pytest.mark.parametrize("hparams", [{}, {"scale": 2.5}, {"fce": True, "fce_steps": 2}])
def test_meta_loss_and_gradient_are_the_query_nll_averaged_over_tasks(hparams):
    algo = _matching_net(**hparams).train()
    batch = image_batch(tasks=2)
    out = algo.meta_loss(batch)
    out.loss.backward()
    assert_every_parameter_gets_a_gradient(algo)
    grads = {name: p.grad.clone() for name, p in algo.named_parameters()}
    algo.zero_grad()
    losses = [_task_loss_by_hand(algo, *(t[b] for t in (batch.support_x, batch.support_y, batch.query_x,
                                                        batch.query_y)), 3) for b in range(2)]
    expected = sum(losses) / 2
    expected.backward()
    torch.testing.assert_close(out.loss, expected)
    assert out.metrics["loss"] == pytest.approx(expected.item())
    for name, p in algo.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)


def test_meta_loss_accuracy_counts_correct_query_argmaxes():
    algo = _matching_net().train()
    batch = image_batch(tasks=2, seed=3)
    out = algo.meta_loss(batch)
    correct = 0
    with torch.no_grad():
        for b in range(2):
            z = algo.encoder(torch.cat([batch.support_x[b], batch.query_x[b]]))
            log_probs = _log_probs_by_hand(z[6:], z[:6], batch.support_y[b], 3)
            correct += sum(int(log_probs[i].argmax()) == y for i, y in enumerate(batch.query_y[b].tolist()))
    assert out.metrics["accuracy"] == pytest.approx(correct / 12)


def test_without_fce_support_order_does_not_matter_and_relabelling_permutes_columns():
    algo = _warm(_matching_net())
    episode = _episode()
    base = algo.adapt(episode)(episode.query_x)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    shuffled = replace(episode, support_x=episode.support_x[perm], support_y=episode.support_y[perm])
    torch.testing.assert_close(algo.adapt(shuffled)(episode.query_x), base)
    relabel = torch.tensor([2, 0, 1])
    renamed = algo.adapt(_relabelled(episode, relabel))(episode.query_x)
    torch.testing.assert_close(renamed[:, relabel], base)
    assert not torch.allclose(renamed, base)


def test_with_fce_relabelling_permutes_columns_but_support_order_matters():
    algo = _warm(_matching_net(fce=True))
    episode = _episode()
    base = algo.adapt(episode)(episode.query_x)
    relabel = torch.tensor([1, 2, 0])
    torch.testing.assert_close(algo.adapt(_relabelled(episode, relabel))(episode.query_x)[:, relabel], base)
    perm = torch.tensor([5, 3, 1, 4, 2, 0])
    shuffled = replace(episode, support_x=episode.support_x[perm], support_y=episode.support_y[perm])
    reordered = algo.adapt(shuffled)(episode.query_x)
    assert (reordered - base).abs().max() > 1e-6
    torch.testing.assert_close(reordered.exp().sum(-1), torch.ones(6, dtype=torch.float64))


def test_fce_support_is_g_plus_forward_plus_backward_lstm():
    torch.manual_seed(1)
    fce = FullContextEmbedding(8, steps=3).double()
    g = torch.randn(5, 8, dtype=torch.float64)
    out = fce.support(g)
    torch.testing.assert_close(out, _bilstm_by_hand(fce.support_lstm, g))
    with torch.no_grad():
        torch.testing.assert_close(out, _bilstm_by_nn_lstm(fce.support_lstm, g))


def test_fce_support_backward_direction_reads_from_the_end():
    torch.manual_seed(1)
    fce = FullContextEmbedding(4, steps=1).double()
    with torch.no_grad():
        for name, p in fce.support_lstm.named_parameters():
            if not name.endswith("_reverse"):
                p.zero_()  # forward LSTM outputs 0: only g and the backward pass remain
    g = torch.randn(3, 4, dtype=torch.float64)
    out = fce.support(g)
    # the last element's backward state has seen only itself; the first has seen all three
    alone = fce.support(g[2:])
    torch.testing.assert_close(out[2], alone[0])
    assert not torch.allclose(out[0], fce.support(g[:1])[0])


@pytest.mark.parametrize("steps", [1, 4])
def test_fce_query_is_the_attention_lstm_of_appendix_a2(steps):
    torch.manual_seed(2)
    fce = FullContextEmbedding(6, steps=steps).double()
    f = torch.randn(4, 6, dtype=torch.float64)
    g = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(fce.query(f, g), _attention_lstm_by_hand(fce.query_gates, steps, f, g))


def test_fce_gradients_reach_every_parameter_including_the_lstms():
    algo = _matching_net(fce=True).train()
    algo.meta_loss(image_batch(tasks=2)).loss.backward()
    names = [name for name, _ in algo.named_parameters()]
    assert any(n.startswith("context.support_lstm.") and n.endswith("_reverse") for n in names)
    assert "context.query_gates.weight" in names
    assert_every_parameter_gets_a_gradient(algo)


def test_adapt_rejects_a_support_set_missing_a_class():
    algo = _matching_net().eval()
    episode = _episode()
    labels = episode.support_y.clone()
    labels[labels == 1] = 0
    with pytest.raises(MetalabError, match=r"missing \[1\]"):
        algo.adapt(replace(episode, support_y=labels))


def test_meta_loss_rejects_a_support_set_missing_a_class():
    algo = _matching_net().train()
    batch = image_batch(tasks=2)
    labels = batch.support_y.clone()
    labels[1][labels[1] == 2] = 0
    with pytest.raises(MetalabError, match=r"episode 1 of the batch\); missing \[2\]"):
        algo.meta_loss(replace(batch, support_y=labels))


@pytest.mark.parametrize("hparams", [{"fce_steps": 0}, {"fce_steps": -2}, {"scale": 0.0}, {"scale": -1.0},
                                     {"scale": math.nan}, {"scale": math.inf}])
def test_bad_config_is_rejected_at_construction(hparams):
    key = next(iter(hparams))
    with pytest.raises(MetalabError, match=key):
        make_config("matching_net", **hparams)
    with pytest.raises(MetalabError, match=key):
        build("matching_net", SPEC, fce=True, **hparams)


def test_regression_task_is_rejected():
    with pytest.raises(MetalabError, match="classifier"):
        build("matching_net", TaskSpec((1,), 1, False))
