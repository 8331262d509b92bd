"""The memory-augmented neural network of Santoro et al. (2016), its memory and its LSTM baseline."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import metalab.algorithms.mann  # noqa: F401  (registers "mann" and "lstm")
from metalab.algorithms import build
from metalab.algorithms.mann import MANN, LSTMBaseline, LSTMConfig, MANNConfig
from metalab.data import ClassDataset, TaskSpec
from metalab.data.sequences import LabelCode, SequenceSampler, presentation_numbers
from metalab.engine import load_checkpoint, save_checkpoint
from metalab.nn import memory as mem
from metalab.utils import MetalabError

from .helpers import image_batch, sinusoid_batch

SPEC = TaskSpec((6,), 3, True)
SMALL = dict(controller_size=16, memory_slots=8, memory_width=5, read_heads=2)


def _vectors(classes=10, per_class=6, dim=6, noise=0.25, seed=0):
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(classes, 1, dim, generator=g)
    data = prototypes + noise * torch.randn(classes, per_class, dim, generator=g)
    return ClassDataset(data, tuple(range(classes)), tuple(f"c{i}" for i in range(classes)))


def _online_batch(tasks=2, n_classes=3, n_instances=3, seed=0):
    return SequenceSampler(_vectors(), n_classes, n_instances, seed=seed).batch(0, tasks)


def _model(name="mann", seed=0, spec=SPEC, **overrides):
    torch.manual_seed(seed)
    hparams = dict(SMALL, **overrides) if name == "mann" else dict(controller_size=16, **overrides)
    return build(name, spec, **hparams)


# ---------------------------------------------------------------------------- memory functions


def test_read_weights_are_a_softmax_over_slots_of_the_cosine_similarity():
    g = torch.Generator().manual_seed(0)
    keys, memory = torch.randn(2, 3, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    memory[1, 2] = 0.0  # an empty slot: similarity 0, no NaN
    w = mem.cosine_read_weights(keys, memory)
    assert w.shape == (2, 3, 5) and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3))
    cos = F.cosine_similarity(keys.unsqueeze(2), memory.unsqueeze(1), dim=-1)  # (2, 3, 5)
    torch.testing.assert_close(w, cos.softmax(-1))
    torch.testing.assert_close(mem.read(w, memory), torch.einsum("bhn,bnw->bhw", w, memory))


def test_key_strength_scales_the_similarity_and_sharpens_the_read():
    g = torch.Generator().manual_seed(1)
    keys, memory = torch.randn(2, 3, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    cos = F.cosine_similarity(keys.unsqueeze(2), memory.unsqueeze(1), dim=-1)
    beta = torch.tensor([0.5, 1.0, 8.0]).view(1, 3, 1).expand(2, 3, 1)
    w = mem.cosine_read_weights(keys, memory, beta)
    torch.testing.assert_close(w, (beta * cos).softmax(-1))
    torch.testing.assert_close(w[:, 1], mem.cosine_read_weights(keys, memory)[:, 1])
    assert (w[:, 2].max(-1).values > w[:, 0].max(-1).values).all()


def test_mann_with_key_strength_emits_one_more_output_per_head_and_trains():
    plain, sharp = _model("mann"), _model("mann", key_strength=True)
    assert sharp.heads.out_features == plain.heads.out_features + plain.config.read_heads
    sharp.meta_loss(_online_batch()).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in sharp.parameters())
    # the strength rows of the head layer get a gradient: they change the reads
    rows = sharp.heads.weight.grad.unflatten(0, (sharp.config.read_heads, -1))[:, -1]
    assert rows.abs().sum() > 0


def test_least_used_marks_the_n_least_used_slots():
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.7], [0.0, 2.0, 1.0, 3.0, 0.5]])
    assert mem.least_used(usage, 2).tolist() == [[0, 1, 0, 1, 0], [1, 0, 0, 0, 1]]
    assert mem.least_used(usage, 1).tolist() == [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]
    with pytest.raises(MetalabError, match="n_reads"):
        mem.least_used(usage, 6)


def test_equally_used_slots_are_picked_lowest_index_first_whatever_the_batch():
    """Never-written slots tie exactly; the pick must not depend on the episodes beside this one."""
    usage = torch.full((24, 128), 0.25, dtype=torch.float64)
    usage[:, ::3] = 1.0  # slots 0, 3, 6, ... used; the others tie
    first = [1, 2, 4, 5]
    assert mem.least_used_per_head(usage, 4).argmax(-1).tolist() == [first] * 24
    assert torch.equal(mem.least_used(usage[:1], 4)[0].nonzero().flatten(), torch.tensor(first))
    # the slot zeroed before a write is the first of them too (argmin returns the first minimum)
    erased = mem.write(torch.ones(1, 128, 1), torch.zeros(1, 1, 128), torch.zeros(1, 1, 1), usage[:1])
    assert (erased[0, :, 0] == 0).nonzero().flatten().tolist() == [1]


def test_least_used_per_head_gives_each_head_its_own_least_used_slot():
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.7], [0.0, 2.0, 1.0, 3.0, 0.5]])
    rows = mem.least_used_per_head(usage, 2)
    assert rows.tolist() == [[[0, 1, 0, 0, 0], [0, 0, 0, 1, 0]], [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]]]
    assert torch.equal(rows.sum(1), mem.least_used(usage, 2)) and rows.dtype == usage.dtype
    with pytest.raises(MetalabError, match="n_reads"):
        mem.least_used_per_head(usage, 6)


def test_lrua_write_weights_interpolate_previous_reads_and_least_used():
    prev_read = torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]])  # (1, 2 heads, 4)
    lu = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    gate = torch.tensor([[[0.0], [math.log(3.0)]]])  # sigmoid: 1/2 and 3/4
    w = mem.lrua_write_weights(gate, prev_read, lu)
    expected = torch.stack([0.5 * prev_read[0, 0] + 0.5 * lu[0], 0.75 * prev_read[0, 1] + 0.25 * lu[0]])
    torch.testing.assert_close(w, expected.unsqueeze(0))
    # a closed gate writes only to the least-used slots
    torch.testing.assert_close(mem.lrua_write_weights(torch.full((1, 2, 1), -40.0), prev_read, lu),
                               lu.unsqueeze(1).expand(1, 2, 4))


def test_write_zeroes_the_single_least_used_slot_then_adds_the_weighted_keys():
    memory = torch.arange(1.0, 16.0).view(1, 5, 3)
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.7]])  # least used: slot 1, then slot 3
    keys = torch.tensor([[[1.0, -1.0, 2.0], [0.5, 0.5, 0.5]]])
    write_w = mem.lrua_write_weights(torch.full((1, 2, 1), -40.0), torch.zeros(1, 2, 5), mem.least_used(usage, 2))
    new = mem.write(memory, write_w, keys, usage)
    written = keys.sum(1)[0]  # both heads write to both least-used slots
    torch.testing.assert_close(new[0, 1], written)  # old content erased first
    torch.testing.assert_close(new[0, 3], memory[0, 3] + written)  # least used but not erased
    for slot in (0, 2, 4):
        torch.testing.assert_close(new[0, slot], memory[0, slot])
    assert memory[0, 1].tolist() == [4.0, 5.0, 6.0]  # the input is not modified


def test_with_a_slot_per_head_each_head_writes_its_own_least_used_slot():
    memory = torch.arange(1.0, 16.0).view(1, 5, 3)
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.7]])  # least used: slot 1, then slot 3
    keys = torch.tensor([[[1.0, -1.0, 2.0], [0.5, 0.5, 0.5]]])
    prev_read = torch.tensor([[[0.0, 0.0, 1.0, 0.0, 0.0], [0.2] * 5]])
    gate = torch.tensor([[[0.0], [-40.0]]])  # head 0 half on its previous read, head 1 all on its fresh slot
    write_w = mem.lrua_write_weights(gate, prev_read, mem.least_used_per_head(usage, 2))
    torch.testing.assert_close(write_w, torch.tensor([[[0.0, 0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]]]))
    new = mem.write(memory, write_w, keys, usage)
    torch.testing.assert_close(new[0, 1], 0.5 * keys[0, 0])  # erased, then head 0's half
    torch.testing.assert_close(new[0, 3], memory[0, 3] + keys[0, 1])  # head 1 alone
    torch.testing.assert_close(new[0, 2], memory[0, 2] + 0.5 * keys[0, 0])


def test_a_stored_key_is_read_back_from_its_slot():
    memory = torch.eye(4)[:3].unsqueeze(0)  # rows e1, e2, e3 ...
    memory = torch.cat([memory, torch.zeros(1, 1, 4)], dim=1)  # ... and an empty slot 3, the least used
    key = torch.tensor([[[0.0, 0.0, 0.0, 0.8]]])
    stored = mem.write(memory, F.one_hot(torch.tensor([[3]]), 4).float(), key, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert torch.equal(stored[0, 3], key[0, 0]) and torch.equal(stored[0, :3], memory[0, :3])
    w = mem.cosine_read_weights(key, stored)
    torch.testing.assert_close(w[0, 0], torch.tensor([0.0, 0.0, 0.0, 1.0]).softmax(0))
    assert w[0, 0].argmax() == 3
    r = mem.read(w, stored)[0, 0]
    torch.testing.assert_close(r, w[0, 0, :3].sum() / 3 * torch.tensor([1.0, 1.0, 1.0, 0.0]) + w[0, 0, 3] * key[0, 0])
    # the cosine softmax is soft (no sharpening in the paper), but the read is closest to the stored key
    others = F.cosine_similarity(r.unsqueeze(0), stored[0, :3], dim=-1)
    assert F.cosine_similarity(r, key[0, 0], dim=0) > others.max() + 0.4


def test_usage_decays_and_adds_every_head_reads_and_writes():
    usage = torch.tensor([[1.0, 0.0, 2.0]])
    read_w = torch.tensor([[[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]])
    write_w = torch.tensor([[[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]])
    got = mem.update_usage(usage, read_w, write_w, gamma=0.9)
    torch.testing.assert_close(got, torch.tensor([[0.9 + 0.3 + 0.5, 0.4 + 1.5, 1.8 + 1.3]]))


def test_one_memory_step_passes_gradcheck_in_float64():
    g = torch.Generator().manual_seed(1)
    b, h, n, w = 2, 2, 5, 3
    usage = torch.rand(b, n, generator=g, dtype=torch.float64)  # distinct: the least-used set is stable
    inputs = (torch.randn(b, h, w, generator=g, dtype=torch.float64),  # keys
              torch.randn(b, h, 1, generator=g, dtype=torch.float64),  # write-gate logits
              torch.randn(b, n, w, generator=g, dtype=torch.float64),  # memory
              torch.softmax(torch.randn(b, h, n, generator=g, dtype=torch.float64), -1))  # previous reads
    inputs = tuple(t.requires_grad_() for t in inputs)

    def step(keys, gate, memory, prev_read):
        write_w = mem.lrua_write_weights(gate, prev_read, mem.least_used(usage, h))
        memory = mem.write(memory, write_w, keys, usage)
        read_w = mem.cosine_read_weights(keys, memory)
        return mem.read(read_w, memory), memory, mem.update_usage(usage, read_w, write_w, 0.95)

    assert torch.autograd.gradcheck(step, inputs)


# ---------------------------------------------------------------------------- the model


def test_logits_at_step_t_depend_on_earlier_labels_and_never_on_the_current_one():
    batch = _online_batch(tasks=2, n_classes=3, n_instances=3)
    for name in ("mann", "lstm"):
        model = _model(name)
        with torch.no_grad():
            base = model.sequence_logits(batch)
            assert base.shape == (2, 9, 3)
            for t in (0, 4, 7):
                y = batch.query_y.clone()
                y[:, t] = (y[:, t] + 1) % 3  # another label at step t only
                out = model.sequence_logits(replace(batch, query_y=y))
                assert torch.equal(out[:, : t + 1], base[:, : t + 1]), f"{name}: step {t} saw its own label"
                assert (out[:, t + 1] - base[:, t + 1]).abs().max() > 1e-6, f"{name}: y_{t} not shown at {t + 1}"
            x = batch.query_x.clone()
            x[:, 4] += 1.0
            out = model.sequence_logits(replace(batch, query_x=x))
            assert torch.equal(out[:, :4], base[:, :4]) and (out[:, 4] - base[:, 4]).abs().max() > 1e-6


@pytest.mark.parametrize("name", ["mann", "lstm"])
@pytest.mark.parametrize("kind", ["online", "standard"])
def test_meta_loss_is_finite_and_reaches_every_parameter(name, kind):
    spec = SPEC if kind == "online" else TaskSpec((1, 16, 16), 3, True)
    batch = _online_batch() if kind == "online" else image_batch(tasks=2, dtype=torch.float32)
    model = _model(name, spec=spec).train()
    out = model.meta_loss(batch)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss) and set(out.metrics) == {"loss", "accuracy"}
    assert 0.0 <= out.metrics["accuracy"] <= 1.0
    out.loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_online_loss_is_the_cross_entropy_of_every_step():
    batch = _online_batch(tasks=3)
    model = _model("mann")
    out = model.meta_loss(batch)
    logits = model.sequence_logits(batch)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits.reshape(-1, 3), batch.query_y.reshape(-1)))
    accuracy = (logits.argmax(-1) == batch.query_y).float().mean().item()
    assert out.metrics["accuracy"] == pytest.approx(accuracy)


CODE = LabelCode(2, 3)  # 9 labels, written as two characters over three symbols
STRING_SPEC = TaskSpec((6,), CODE.width, True, CODE)


def _string_batch(tasks=2, n_classes=3, n_instances=3, seed=0):
    return SequenceSampler(_vectors(), n_classes, n_instances, seed=seed, code=CODE).batch(0, tasks)


@pytest.mark.parametrize("name", ["mann", "lstm"])
def test_string_labels_are_read_as_characters_and_predicted_one_softmax_per_character(name):
    batch = _string_batch(tasks=3)
    assert batch.query_y.max() >= 3  # labels beyond 0..n_classes-1
    model = _model(name, spec=STRING_SPEC)
    reads = 2 * 5 if name == "mann" else 0
    assert model.controller.input_size == 6 + 6 + reads and model.output.out_features == 6
    out = model.meta_loss(batch)
    logits = model.sequence_logits(batch)
    assert logits.shape == (3, 9, 6)
    chars = logits.view(3, 9, 2, 3)
    digits = torch.stack([batch.query_y // 3, batch.query_y % 3], dim=-1)
    expected = -(chars.log_softmax(-1).gather(-1, digits.unsqueeze(-1)).squeeze(-1)).sum(-1).mean()
    torch.testing.assert_close(out.loss, expected)
    predicted = chars.argmax(-1)
    assert torch.equal(model.predictions(logits), predicted[..., 0] * 3 + predicted[..., 1])
    correct = (predicted == digits).all(-1).float()
    assert out.metrics["accuracy"] == pytest.approx(correct.mean().item())
    assert model.evaluate_episode(batch[1]) == pytest.approx(correct[1].mean().item())
    out.loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_with_string_labels_step_t_still_never_sees_its_own_label():
    batch = _string_batch(tasks=2)
    model = _model("mann", spec=STRING_SPEC)
    with torch.no_grad():
        base = model.sequence_logits(batch)
        for t in (0, 5):
            y = batch.query_y.clone()
            y[:, t] = (y[:, t] + 1) % 9
            out = model.sequence_logits(replace(batch, query_y=y))
            assert torch.equal(out[:, : t + 1], base[:, : t + 1])
            assert (out[:, t + 1] - base[:, t + 1]).abs().max() > 1e-6


def test_a_string_label_model_explains_what_it_cannot_score():
    model = _model("mann", spec=STRING_SPEC)
    with pytest.raises(MetalabError, match="string labels"):
        model.meta_loss(image_batch(tasks=2, n_way=3, k_shot=1, n_query=1, dtype=torch.float32))
    batch = _string_batch(tasks=1)
    with pytest.raises(MetalabError, match=r"labels in 0\.\.8"):
        model.sequence_logits(replace(batch, query_y=batch.query_y + 9))
    # any number of classes: the output does not depend on it
    assert model.sequence_logits(_string_batch(tasks=1, n_classes=5, n_instances=2)).shape == (1, 10, 6)


def test_a_string_label_model_survives_a_checkpoint(tmp_path):
    model = _model("mann", spec=STRING_SPEC).eval()
    save_checkpoint(tmp_path / "m.pt", model)
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    assert loaded.spec == STRING_SPEC and loaded.code == CODE
    batch = _string_batch(tasks=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.sequence_logits(batch), model.sequence_logits(batch), rtol=0, atol=0)


def test_a_full_model_passes_gradcheck_in_float64():
    batch = _online_batch(tasks=2, n_classes=3, n_instances=2)
    model = _model("mann", controller_size=4, memory_slots=4, memory_width=3, read_heads=2).double()
    x = batch.query_x.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: model.sequence_logits(replace(batch, query_x=x)), (x,))


def _lstm_cell_logits(model, batch):
    """The sequence through ``nn.LSTMCell``'s own forward on ``[x_t, y_{t-1}, r_{t-1}]``, step by step."""
    x, y = batch.query_x.flatten(2), batch.query_y
    labels = model.code.one_hot(y, x.dtype)
    shown = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], dim=1)
    h, c, reads, memory = model._initial_state(y.shape[0], x)
    logits = []
    for t in range(y.shape[1]):
        h, c = model.controller(torch.cat([x[:, t], shown[:, t], reads], dim=-1), (h, c))
        reads, memory = model._access(h, memory)
        logits.append(model.output(torch.cat([h, reads], dim=-1)))
    return torch.stack(logits, dim=1)


@pytest.mark.parametrize("name", ["mann", "lstm"])
def test_the_controller_with_its_input_gates_computed_for_all_steps_at_once_is_nn_lstm_cell(name):
    batch = _online_batch(tasks=3)
    batch = replace(batch, query_x=batch.query_x.double())
    model = _model(name, key_strength=True, add_vector=True).double() if name == "mann" else _model(name).double()
    expected = _lstm_cell_logits(model, batch)
    torch.testing.assert_close(model.sequence_logits(batch), expected, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(model.sequence_logits(batch).square().sum(), list(model.parameters()))
    for got, want in zip(grads, torch.autograd.grad(expected.square().sum(), list(model.parameters()))):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_lstm_baseline_shares_the_loop_and_has_no_memory():
    lstm, mann = _model("lstm"), _model("mann")
    assert isinstance(lstm, MANN) and type(lstm).Config is LSTMConfig and type(mann).Config is MANNConfig
    for method in ("_run", "_step", "meta_loss", "sequence_logits", "adapt", "evaluate_episode"):
        assert getattr(LSTMBaseline, method) is getattr(MANN, method), method
    assert {n.split(".")[0] for n, _ in lstm.named_parameters()} == {"controller", "output"}
    assert {n.split(".")[0] for n, _ in mann.named_parameters()} == {"heads", "controller", "output"}
    assert lstm.controller.input_size == 6 + 3 and lstm.output.in_features == 16
    assert mann.controller.input_size == 6 + 3 + 2 * 5 and mann.output.in_features == 16 + 2 * 5
    with pytest.raises(MetalabError, match="has no hyper-parameter"):
        build("lstm", SPEC, memory_slots=8)


def test_evaluate_episode_on_an_online_episode_is_the_accuracy_over_all_steps():
    episode = _online_batch(tasks=1, n_classes=3, n_instances=4)[0]
    model = _model("mann").eval()
    got = model.evaluate_episode(episode)
    logits = model.sequence_logits(episode)
    assert logits.shape == (1, 12, 3)
    assert got == pytest.approx((logits[0].argmax(-1) == episode.query_y).float().mean().item())
    with pytest.raises(MetalabError, match="evaluate_episode"):
        model.adapt(episode)


def test_standard_episode_support_is_interleaved_and_queries_are_scored_independently():
    model = _model("mann", spec=TaskSpec((1, 16, 16), 3, True)).eval()
    episode = image_batch(tasks=1, k_shot=2, n_query=3, dtype=torch.float32)[0]  # class-major support
    order = torch.tensor([0, 2, 4, 1, 3, 5])  # shot 1 of each class, then shot 2
    interleaved = replace(episode, support_x=episode.support_x[order], support_y=episode.support_y[order])
    assert episode.support_y.tolist() == [0, 0, 1, 1, 2, 2]
    predict = model.adapt(episode)
    logits = predict(episode.query_x)
    assert logits.shape == (9, 3) and not logits.requires_grad
    torch.testing.assert_close(model.adapt(interleaved)(episode.query_x), logits, rtol=0, atol=0)
    one_by_one = torch.cat([predict(episode.query_x[i : i + 1]) for i in range(9)])
    torch.testing.assert_close(one_by_one, logits)
    with pytest.raises(MetalabError, match="sequence_logits runs online episodes"):
        model.sequence_logits(episode)


def test_bad_episodes_and_hyper_parameters_are_explained():
    with pytest.raises(MetalabError, match="classifier"):
        build("mann", TaskSpec((1,), 1, False))
    model = _model("mann", spec=TaskSpec((1,), 3, True))
    with pytest.raises(MetalabError, match="regression"):
        model.meta_loss(sinusoid_batch(tasks=2, dtype=torch.float32))
    with pytest.raises(MetalabError, match="3-way output layer but got 4-way"):
        _model("mann").meta_loss(SequenceSampler(_vectors(), 4, 2).batch(0, 2))
    with pytest.raises(MetalabError, match="3-way output layer but got 5-way"):
        _model("mann", spec=TaskSpec((1, 16, 16), 3, True)).meta_loss(image_batch(tasks=2, n_way=5, k_shot=1,
                                                                                  n_query=1, dtype=torch.float32))
    for bad, message in [(dict(read_heads=9), "read_heads=9 needs at least"), (dict(gamma=1.5), "gamma"),
                         (dict(controller_size=0), "controller_size"), (dict(memory_width=2.5), "memory_width"),
                         (dict(rmsprop_alpha=1.0), "rmsprop_alpha"), (dict(optimizer="sgd"), "'rmsprop' or 'adam'")]:
        with pytest.raises(MetalabError, match=message):
            build("mann", SPEC, **dict(SMALL, **bad))


def test_outer_optimizer_is_rmsprop_with_the_configured_settings():
    optimizer = _model("mann", rmsprop_alpha=0.9, rmsprop_momentum=0.5).outer_optimizer(1e-4)
    assert isinstance(optimizer, torch.optim.RMSprop)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["alpha"], group["momentum"]) == (1e-4, 0.9, 0.5)
    for name in ("mann", "lstm"):
        adam = _model(name, optimizer="adam").outer_optimizer(1e-3)
        assert type(adam) is torch.optim.Adam and adam.param_groups[0]["lr"] == 1e-3


def _train_on_prototypes(code: LabelCode | None, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train a small MANN with Adam on online episodes of 3 classes x 4 noisy samples of random
    prototypes; return its correctness ``(600, 12)`` on 600 test episodes of new classes and
    the presentation numbers."""
    data = _vectors(classes=60, per_class=8, dim=16, noise=0.25)
    train = SequenceSampler(data.subset(range(40)), 3, 4, seed=1, code=code)
    test = SequenceSampler(data.subset(range(40, 60)), 3, 4, seed=2, code=code)
    torch.manual_seed(0)
    spec = TaskSpec((16,), code.width, True, code) if code else TaskSpec((16,), 3, True)
    model = build("mann", spec, controller_size=32, memory_slots=16, memory_width=8, read_heads=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)  # a fast rate for a short test
    for step in range(steps):
        optimizer.zero_grad()
        model.meta_loss(train.batch(step, 16)).loss.backward()
        optimizer.step()
    batch = test.batch(0, 600)
    with torch.no_grad():
        correct = (model.predictions(model.sequence_logits(batch)) == batch.query_y).float()
    return correct, presentation_numbers(batch.query_y)


def test_mann_learns_to_bind_labels_to_later_presentations():
    """Chance is 1/3. Without seeing the current label, step 0 stays at chance and no learner
    beats (1/3 + 1/2 + 1)/3 = 0.61 on first presentations (excluding labels already used is
    the most it can do); only binding earlier samples to their labels lifts later ones.
    """
    correct, presentation = _train_on_prototypes(None, 600)
    first, later = correct[presentation == 1].mean().item(), correct[presentation > 1].mean().item()
    assert correct[:, 0].mean().item() < 0.42, "step 0 beats chance: the current label leaks"
    assert first < 0.61 + 0.05, f"first presentations {first:.2f}: the current label leaks"
    assert later > 0.6, f"later presentations {later:.2f}: MANN did not learn to bind labels"


def test_mann_learns_to_bind_string_labels():
    """Every class named by a random 2-character string over 3 symbols (9 labels).

    A first presentation can at best be guessed among the labels not used yet
    ((1/9 + 1/8 + 1/7) / 3 = 0.13). Without binding samples to strings, a later presentation
    can only be guessed among the strings shown so far (``guess`` below, uniformly). Strings
    are learned more slowly than one-hot labels, hence more steps than the test above.
    """
    correct, presentation = _train_on_prototypes(CODE, 1000)
    first, later = correct[presentation == 1].mean().item(), correct[presentation > 1].mean().item()
    labels = SequenceSampler(_vectors(classes=60, per_class=8, dim=16).subset(range(40, 60)), 3, 4, seed=2,
                             code=CODE).batch(0, 600).query_y.tolist()
    guess = [1 / len(set(row[:t])) for row in labels for t in range(12) if row[t] in row[:t]]
    guess = sum(guess) / len(guess)
    assert later > guess + 0.1, f"later presentations {later:.2f}: no better than guessing among shown strings"
    assert first < 0.13 + 0.05, f"first presentations {first:.2f}: the current label leaks"
    assert later > 0.55, f"later presentations {later:.2f}: MANN did not learn to bind string labels"


def test_with_an_add_vector_the_memory_holds_the_add_vectors_and_the_keys_only_address():
    model = _model("mann", add_vector=True, key_strength=True)
    cfg, w = model.config, model.config.memory_width
    plain = _model("mann", key_strength=True)
    assert model.heads.out_features == plain.heads.out_features + cfg.read_heads * w
    h = torch.randn(3, cfg.controller_size, generator=torch.Generator().manual_seed(2))
    memory = model._initial_memory(3, h)
    reads, (new_memory, usage, read_w) = model._access(h, memory)
    head = model.heads(h).unflatten(-1, (cfg.read_heads, -1))
    keys, added = torch.tanh(head[..., :w]), torch.tanh(head[..., -w:])
    write_w = mem.lrua_write_weights(head[..., w:w + 1], memory[2], mem.least_used(memory[1], cfg.read_heads))
    torch.testing.assert_close(new_memory, mem.write(memory[0], write_w, added, memory[1]))
    strength = F.softplus(head[..., w + 1:w + 2])
    torch.testing.assert_close(read_w, mem.cosine_read_weights(keys, new_memory, strength))
    torch.testing.assert_close(reads, mem.read(read_w, new_memory).flatten(1))
    model.meta_loss(_online_batch()).loss.backward()
    rows = model.heads.weight.grad.unflatten(0, (cfg.read_heads, -1))
    assert rows[:, -w:].abs().sum() > 0 and rows[:, :w].abs().sum() > 0  # add vectors and keys both learn


def test_mann_with_a_slot_per_head_composes_the_per_head_write_and_trains():
    model = _model("mann", slot_per_head=True, add_vector=True, key_strength=True)
    shared = _model("mann", add_vector=True, key_strength=True)  # same seed: same parameters
    cfg, w = model.config, model.config.memory_width
    h = torch.randn(3, cfg.controller_size, generator=torch.Generator().manual_seed(2))
    _, state = model._access(h, model._initial_memory(3, h))  # step 1 from empty memory
    _, (memory, usage, prev_read) = model._access(h, state)  # step 2: the usage now orders the slots
    head = model.heads(h).unflatten(-1, (cfg.read_heads, -1))
    write_w = mem.lrua_write_weights(head[..., w:w + 1], prev_read, mem.least_used_per_head(usage, cfg.read_heads))
    _, (new_memory, _, _) = model._access(h, (memory, usage, prev_read))
    torch.testing.assert_close(new_memory, mem.write(memory, write_w, torch.tanh(head[..., -w:]), usage))
    _, (other, _, _) = shared._access(h, (memory, usage, prev_read))
    assert (other - new_memory).abs().max() > 1e-4  # the shared least-used write differs
    model.meta_loss(_online_batch()).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in model.parameters())
