import torch

from metalab.algorithms import build
from metalab.data import TaskSpec
from metalab.func import squared_euclidean

from .helpers import assert_every_parameter_gets_a_gradient, image_batch


def _protonet():
    torch.manual_seed(0)
    return build("protonet", TaskSpec((1, 16, 16), 3, True)).double()


def test_predictions_are_negative_distances_to_class_means():
    algo = _protonet().eval()
    episode = image_batch(tasks=1)[0]
    logits = algo.adapt(episode)(episode.query_x)
    with torch.no_grad():
        support = algo.encoder(episode.support_x)
        means = torch.stack([support[episode.support_y == k].mean(0) for k in range(3)])
        expected = -squared_euclidean(algo.encoder(episode.query_x), means)
    torch.testing.assert_close(logits, expected)


def test_support_order_and_relabelling_do_not_change_predictions():
    algo = _protonet().eval()
    episode = image_batch(tasks=1)[0]
    base = algo.adapt(episode)(episode.query_x)
    perm = torch.randperm(episode.support_y.numel(), generator=torch.Generator().manual_seed(1))
    shuffled = type(episode)(episode.support_x[perm], episode.support_y[perm], episode.query_x, episode.query_y, episode.meta)
    torch.testing.assert_close(algo.adapt(shuffled)(episode.query_x), base)
    relabel = torch.tensor([2, 0, 1])
    renamed = type(episode)(episode.support_x, relabel[episode.support_y], episode.query_x, episode.query_y, episode.meta)
    torch.testing.assert_close(algo.adapt(renamed)(episode.query_x)[:, relabel], base)


def test_meta_loss_is_cross_entropy_over_the_query_set():
    algo = _protonet().train()
    batch = image_batch(tasks=2)
    out = algo.meta_loss(batch)
    out.loss.backward()
    assert_every_parameter_gets_a_gradient(algo)
    assert 0.0 <= out.metrics["accuracy"] <= 1.0
    assert torch.isfinite(out.loss)
