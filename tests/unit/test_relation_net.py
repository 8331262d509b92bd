"""Relation Networks, class_sums and Conv4's pool_blocks against by-hand loops."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from metalab.algorithms import build
from metalab.data import TaskSpec
from metalab.func import class_sums
from metalab.nn import Conv4
from metalab.utils.errors import MetalabError

from .helpers import assert_every_parameter_gets_a_gradient, image_batch

SPEC = TaskSpec((1, 16, 16), 3, True)


def _relation_net():
    torch.manual_seed(0)
    return build("relation_net", SPEC).double()


def _plain_conv4(hidden: int, pool_blocks: int) -> nn.Sequential:
    """The paper's conv4 (conv -> BN -> ReLU -> max-pool), pooling in the first ``pool_blocks`` blocks."""
    layers = []
    for i in range(4):
        layers += [nn.Conv2d(1 if i == 0 else hidden, hidden, 3, padding=1),
                   nn.BatchNorm2d(hidden, track_running_stats=False), nn.ReLU()]
        if i < pool_blocks:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.Flatten())


def _feature_maps(algo, x):
    return algo.encoder(x).reshape(-1, *algo.encoder.feature_shape)


def _class_maps(support, support_y, n_way):
    """Per class, the sum of its support feature maps, by a loop over the support set."""
    classes = []
    for k in range(n_way):
        total = torch.zeros_like(support[0])
        for z, y in zip(support, support_y.tolist()):
            if y == k:
                total = total + z
        classes.append(total)
    return classes


def _by_hand_task_loss(algo, sx, sy, qx, qy, n_way):
    """One task in training mode: one encoder pass over support and query, every pair in one relation batch."""
    z = _feature_maps(algo, torch.cat([sx, qx]))
    support, queries = z[: sx.shape[0]], z[sx.shape[0]:]
    classes = _class_maps(support, sy, n_way)
    pairs = [torch.cat([q, c], dim=0) for q in queries for c in classes]  # query-major order
    scores = algo.relation(torch.stack(pairs)).view(len(queries), n_way)
    squared = 0.0
    for i, y in enumerate(qy.tolist()):
        for k in range(n_way):
            squared = squared + (scores[i, k] - (1.0 if y == k else 0.0)) ** 2
    accuracy = sum(int(scores[i].argmax()) == y for i, y in enumerate(qy.tolist())) / len(qy)
    return squared / (len(queries) * n_way), accuracy


def _warm_running_stats(algo):
    """Training steps' side effect: batch-norm running averages move away from (0, 1)."""
    with torch.no_grad():
        algo.train().meta_loss(image_batch(tasks=2, seed=5))
    return algo.eval()


def _swap_support_labels(batch, labels):
    return replace(batch, support_y=torch.as_tensor(labels).expand_as(batch.support_y).clone())


@pytest.mark.parametrize("size", [28, 16])
@pytest.mark.parametrize("pool_blocks", range(5))
def test_conv4_feature_shape_and_embedding_dim_match_its_output(pool_blocks, size):
    net = Conv4(1, image_size=size, hidden=8, pool_blocks=pool_blocks)
    x = torch.rand(3, 1, size, size)
    maps = net.body[:-1](x)  # without the final Flatten
    side = size // 2 ** pool_blocks
    assert net.feature_shape == (8, side, side)
    assert maps.shape == (3, *net.feature_shape)
    assert net(x).shape == (3, net.embedding_dim)
    assert net.embedding_dim == 8 * side * side


@pytest.mark.parametrize("pool_blocks", [2, 4])
def test_conv4_equals_the_plain_conv4_pooling_only_in_the_first_blocks(pool_blocks):
    torch.manual_seed(0)
    plain = _plain_conv4(8, pool_blocks).double()
    kwargs = {} if pool_blocks == 4 else {"pool_blocks": pool_blocks}  # 4 is the default
    net = Conv4(1, image_size=28, hidden=8, **kwargs).double()
    assert [p.shape for p in plain.parameters()] == [p.shape for p in net.parameters()]
    with torch.no_grad():
        for p, q in zip(plain.parameters(), net.parameters()):
            p.add_(0.3 * torch.randn_like(p))  # batch-norm affine parameters away from (1, 0)
            q.copy_(p)
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = plain(x)
    assert expected.shape == (6, net.embedding_dim)
    torch.testing.assert_close(net(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pool_blocks", [-1, 5])
def test_conv4_rejects_pool_blocks_out_of_range(pool_blocks):
    with pytest.raises(ValueError, match=f"pool_blocks must be between 0 and 4, got {pool_blocks}"):
        Conv4(pool_blocks=pool_blocks)


def test_conv4_rejects_images_too_small_for_its_pooling():
    with pytest.raises(ValueError, match="at least 16x16, got 15x15"):
        Conv4(image_size=15)
    with pytest.raises(ValueError, match="at least 4x4, got 3x3"):
        Conv4(image_size=3, pool_blocks=2)
    assert Conv4(image_size=4, pool_blocks=2).feature_shape == (64, 1, 1)
    assert Conv4(image_size=1, pool_blocks=0).feature_shape == (64, 1, 1)


def test_class_sums_equal_per_class_sums_by_a_loop():
    embeddings = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([2, 0, 1, 2, 2, 0, 3])  # class 4 has no example: a zero row
    expected = torch.zeros(5, 5, dtype=torch.float64)
    for k in range(5):
        for e, y in zip(embeddings, labels.tolist()):
            if y == k:
                expected[k] += e
    torch.testing.assert_close(class_sums(embeddings, labels, 5), expected)


def test_predictions_are_relation_scores_of_query_and_summed_class_maps():
    algo = _warm_running_stats(_relation_net())
    episode = image_batch(tasks=1, k_shot=2)[0]
    scores = algo.adapt(episode)(episode.query_x)
    with torch.no_grad():
        classes = _class_maps(_feature_maps(algo, episode.support_x), episode.support_y, 3)
        queries = _feature_maps(algo, episode.query_x)
        expected = torch.tensor([[algo.relation(torch.cat([q, c], dim=0)[None]).item() for c in classes]
                                 for q in queries], dtype=torch.float64)
    assert scores.shape == (6, 3)
    torch.testing.assert_close(scores, expected)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_meta_loss_is_mean_squared_error_to_one_hot_labels():
    algo = _relation_net().train()
    batch = image_batch(tasks=2, k_shot=2)
    out = algo.meta_loss(batch)
    per_task = [_by_hand_task_loss(algo, batch.support_x[t], batch.support_y[t], batch.query_x[t],
                                   batch.query_y[t], 3) for t in range(2)]
    expected = sum(loss for loss, _ in per_task) / 2
    torch.testing.assert_close(out.loss, expected)
    assert out.metrics["loss"] == pytest.approx(expected.item())
    assert out.metrics["accuracy"] == pytest.approx(sum(acc for _, acc in per_task) / 2)
    params = list(algo.parameters())
    grads = torch.autograd.grad(out.loss, params, retain_graph=True)
    expected_grads = torch.autograd.grad(expected, params)
    for (name, _), g, e in zip(algo.named_parameters(), grads, expected_grads):
        torch.testing.assert_close(g, e, msg=name)
    out.loss.backward()
    names = {name.split(".")[0] for name, _ in algo.named_parameters()}
    assert names == {"encoder", "relation"}
    assert_every_parameter_gets_a_gradient(algo)


def test_support_order_and_relabelling_do_not_change_predictions():
    algo = _warm_running_stats(_relation_net())
    episode = image_batch(tasks=1, k_shot=2)[0]
    base = algo.adapt(episode)(episode.query_x)
    perm = torch.randperm(episode.support_y.numel(), generator=torch.Generator().manual_seed(1))
    shuffled = replace(episode, support_x=episode.support_x[perm], support_y=episode.support_y[perm])
    torch.testing.assert_close(algo.adapt(shuffled)(episode.query_x), base)
    relabel = torch.tensor([2, 0, 1])
    renamed = replace(episode, support_y=relabel[episode.support_y])
    torch.testing.assert_close(algo.adapt(renamed)(episode.query_x)[:, relabel], base)


def test_support_missing_a_class_is_a_clear_error():
    algo = _relation_net()
    batch = _swap_support_labels(image_batch(tasks=2, k_shot=2), [0, 0, 1, 1, 0, 0])
    with pytest.raises(MetalabError, match=r"every label 0..2.*missing \[2\]"):
        algo.meta_loss(batch)
    with pytest.raises(MetalabError, match=r"missing \[2\]"):
        algo.eval().adapt(batch[0])


def test_unbalanced_support_is_a_clear_error_naming_k_shot():
    algo = _relation_net()
    batch = _swap_support_labels(image_batch(tasks=2, k_shot=2), [0, 0, 0, 1, 2, 2])
    with pytest.raises(MetalabError, match=r"k_shot=2.*\[3, 1, 2\]"):
        algo.meta_loss(batch)
    with pytest.raises(MetalabError, match=r"k_shot=2.*\[3, 1, 2\]"):
        algo.eval().adapt(batch[0])


@pytest.mark.parametrize("spec", [TaskSpec((1,), 3, True), TaskSpec((1, 16, 16), 1, False)],
                         ids=["not-images", "regression"])
def test_non_image_or_regression_tasks_are_a_clear_error(spec):
    with pytest.raises(MetalabError, match="relation_net classifies images"):
        build("relation_net", spec)


def test_non_square_or_too_small_images_are_a_clear_error():
    with pytest.raises(MetalabError, match="square images, got 16x12"):
        build("relation_net", TaskSpec((1, 16, 12), 3, True))
    with pytest.raises(MetalabError, match="at least 16x16"):
        build("relation_net", TaskSpec((1, 12, 12), 3, True))


def test_zero_hidden_units_is_a_clear_error():
    with pytest.raises(MetalabError, match="hidden must be a positive integer, got 0"):
        build("relation_net", SPEC, hidden=0)
