"""Siamese networks (Koch et al. 2015) and the balanced same/different pairs they train on."""

from dataclasses import replace

import pytest
import torch

from metalab.algorithms import build
from metalab.algorithms.siamese import PAIR_STREAM
from metalab.data import Episode, EpisodeBatch, TaskSpec, balanced_pairs
from metalab.utils.errors import MetalabError
from metalab.utils.seeding import derive_seed

from .helpers import assert_every_parameter_gets_a_gradient, image_batch

SPEC = TaskSpec((1, 16, 16), 3, True)


def _siamese(seed=0):
    torch.manual_seed(seed)
    return build("siamese", SPEC).double()


def _random_labels(seed):
    """Labels of 2 to 5 classes with distinct sizes (each >= 2), shuffled."""
    g = torch.Generator().manual_seed(seed)
    n_classes = int(torch.randint(2, 6, (1,), generator=g))
    sizes = 2 + torch.randperm(5, generator=g)[:n_classes]
    labels = torch.repeat_interleave(torch.arange(n_classes), sizes)
    return labels[torch.randperm(labels.numel(), generator=g)]


def _pair_logit(algo, a, b):
    """Koch's eq.: sum_j alpha_j |a_j - b_j| + bias, one pair at a time."""
    return algo.head.weight[0] @ (a - b).abs() + algo.head.bias[0]


def _bce(logit, target):
    p = torch.sigmoid(logit)
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p))


# ---------------------------------------------------------------------------- balanced_pairs


@pytest.mark.parametrize("seed", range(6))
def test_balanced_pairs_first_half_same_class_second_half_other_class(seed):
    labels = _random_labels(seed)
    n = labels.numel()
    left, right, same = balanced_pairs(labels, torch.Generator().manual_seed(seed))
    assert left.shape == right.shape == same.shape == (2 * n,)
    assert torch.equal(left, torch.cat([torch.arange(n), torch.arange(n)]))
    assert torch.equal(same, torch.cat([torch.ones(n), torch.zeros(n)]))
    assert ((right >= 0) & (right < n)).all()
    for i in range(n):
        partner, stranger = int(right[i]), int(right[n + i])
        assert partner != i and labels[partner] == labels[i]
        assert labels[stranger] != labels[i]


def test_balanced_pairs_are_reproducible_from_the_generator_seed():
    labels = _random_labels(7)
    a = balanced_pairs(labels, torch.Generator().manual_seed(11))
    b = balanced_pairs(labels, torch.Generator().manual_seed(11))
    c = balanced_pairs(labels, torch.Generator().manual_seed(12))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], c[1])


def test_balanced_pairs_draw_every_valid_partner_about_equally_often():
    labels = torch.tensor([1, 0, 2, 1, 2, 0, 2, 1, 2])  # class sizes 2, 3, 4
    n, draws = labels.numel(), 2000
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(2, n, n)  # [same/different half, example, partner]
    for _ in range(draws):
        _, right, _ = balanced_pairs(labels, g)
        counts[0, torch.arange(n), right[:n]] += 1
        counts[1, torch.arange(n), right[n:]] += 1
    for i in range(n):
        valid_same = [j for j in range(n) if j != i and labels[j] == labels[i]]
        valid_other = [j for j in range(n) if labels[j] != labels[i]]
        for half, valid in ((0, valid_same), (1, valid_other)):
            support = counts[half, i].nonzero().flatten().tolist()
            assert support == valid, (i, half, support, valid)
            # uniform: expected draws/len(valid) >= 285 each, std <= 17; +-50% is > 8 std
            expected = draws / len(valid)
            assert (counts[half, i, valid] - expected).abs().max() < 0.5 * expected, counts[half, i, valid]


@pytest.mark.parametrize(
    "labels, message",
    [
        ([0, 0, 1, 2, 2], "at least two examples of every class"),
        ([3, 3, 3, 3], "at least two classes"),
    ],
)
def test_balanced_pairs_rejects_labels_without_valid_partners(labels, message):
    with pytest.raises(MetalabError, match=message):
        balanced_pairs(torch.tensor(labels), torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------- predictions


def _evaluated_siamese():
    """A float64 Siamese whose batch-norm running statistics have moved away from 0/1."""
    algo = _siamese().train()
    with torch.no_grad():
        algo.meta_loss(image_batch(tasks=2, seed=5))
    return algo.eval()


def test_class_score_is_the_best_pair_logit_over_that_class_support_images():
    algo = _evaluated_siamese()
    episode = image_batch(tasks=1)[0]
    logits = algo.adapt(episode)(episode.query_x)
    with torch.no_grad():
        fs, fq = algo.encoder(episode.support_x), algo.encoder(episode.query_x)
        expected = torch.empty(fq.shape[0], 3, dtype=torch.float64)
        for q in range(fq.shape[0]):
            for k in range(3):
                scores = [_pair_logit(algo, fq[q], fs[s]) for s in range(fs.shape[0]) if episode.support_y[s] == k]
                expected[q, k] = max(scores)
    assert logits.dtype == torch.float64 and logits.shape == (episode.query_x.shape[0], 3)
    torch.testing.assert_close(logits, expected)


def test_prediction_is_the_class_of_the_most_similar_support_image():
    algo = _evaluated_siamese()
    episode = image_batch(tasks=1, n_query=4, seed=3)[0]
    predicted = algo.adapt(episode)(episode.query_x).argmax(-1)
    with torch.no_grad():
        fs, fq = algo.encoder(episode.support_x), algo.encoder(episode.query_x)
    for q in range(fq.shape[0]):
        best = max(range(fs.shape[0]), key=lambda s: _pair_logit(algo, fq[q], fs[s]).item())
        assert predicted[q] == episode.support_y[best]


def test_eval_predictions_do_not_depend_on_the_other_queries():
    algo = _evaluated_siamese()
    episode = image_batch(tasks=1)[0]
    predict = algo.adapt(episode)
    together = predict(episode.query_x)
    alone = torch.cat([predict(episode.query_x[i : i + 1]) for i in range(episode.query_x.shape[0])])
    torch.testing.assert_close(alone, together)


def test_support_order_and_relabelling_do_not_change_predictions():
    algo = _evaluated_siamese()
    episode = image_batch(tasks=1, k_shot=2)[0]
    base = algo.adapt(episode)(episode.query_x)
    perm = torch.randperm(episode.support_y.numel(), generator=torch.Generator().manual_seed(1))
    shuffled = Episode(episode.support_x[perm], episode.support_y[perm], episode.query_x, episode.query_y, episode.meta)
    torch.testing.assert_close(algo.adapt(shuffled)(episode.query_x), base)
    relabel = torch.tensor([2, 0, 1])
    renamed = Episode(episode.support_x, relabel[episode.support_y], episode.query_x, episode.query_y, episode.meta)
    torch.testing.assert_close(algo.adapt(renamed)(episode.query_x)[:, relabel], base)


# ---------------------------------------------------------------------------- meta-loss


def _expected_meta_loss(algo, batch):
    """Mean over tasks of BCE on the task's balanced pairs, and the tasks' mean query accuracy."""
    losses, accuracies = [], []
    for b in range(len(batch)):
        task = batch[b]
        labels = torch.cat([task.support_y, task.query_y])
        g = torch.Generator().manual_seed(derive_seed(task.meta.seed, PAIR_STREAM))
        left, right, same = balanced_pairs(labels, g)
        z = algo.encoder(torch.cat([task.support_x, task.query_x]))  # training mode: this task's statistics
        terms = [_bce(_pair_logit(algo, z[left[i]], z[right[i]]), same[i].item()) for i in range(left.numel())]
        losses.append(sum(terms) / len(terms))
        n_support, correct = task.support_y.numel(), 0
        for q in range(task.query_y.numel()):
            scores = [max(_pair_logit(algo, z[n_support + q], z[s]).item() for s in range(n_support)
                          if task.support_y[s] == k) for k in range(3)]
            correct += int(max(range(3), key=scores.__getitem__) == task.query_y[q])
        accuracies.append(correct / task.query_y.numel())
    return sum(losses) / len(losses), sum(accuracies) / len(accuracies)


def test_meta_loss_is_binary_cross_entropy_on_the_seeded_balanced_pairs():
    algo = _siamese().train()
    batch = image_batch(tasks=2)
    out = algo.meta_loss(batch)
    with torch.no_grad():
        expected_loss, expected_accuracy = _expected_meta_loss(algo, batch)
    assert out.loss.dtype == torch.float64
    torch.testing.assert_close(out.loss.detach(), expected_loss)
    assert out.metrics["loss"] == pytest.approx(expected_loss.item(), rel=1e-12)
    assert out.metrics["accuracy"] == pytest.approx(expected_accuracy, abs=1e-6)


def test_meta_loss_pairs_are_deterministic_and_follow_the_episode_seed():
    algo = _siamese().train()
    batch = image_batch(tasks=1)
    first, second = algo.meta_loss(batch).loss, algo.meta_loss(batch).loss
    assert first.item() == second.item()
    reseeded = replace(batch, metas=tuple(replace(m, seed=m.seed + 1) for m in batch.metas))
    labels = torch.cat([batch.support_y[0], batch.query_y[0]])
    pairs = [balanced_pairs(labels, torch.Generator().manual_seed(derive_seed(m.seed, PAIR_STREAM)))
             for m in (batch.metas[0], reseeded.metas[0])]
    assert not torch.equal(pairs[0][1], pairs[1][1])  # another seed, other partners
    third = algo.meta_loss(reseeded).loss
    assert third.item() != first.item()
    with torch.no_grad():
        torch.testing.assert_close(third.detach(), _expected_meta_loss(algo, reseeded)[0])


def test_all_pairs_loss_weighs_same_and_different_pairs_equally_by_a_loop():
    torch.manual_seed(0)
    algo = build("siamese", SPEC, pairs="all").double().train()
    batch = image_batch(tasks=2)
    out = algo.meta_loss(batch)
    expected = []
    with torch.no_grad():
        for task in batch.episodes():
            labels = torch.cat([task.support_y, task.query_y])
            z = algo.encoder(torch.cat([task.support_x, task.query_x]))
            same, different = [], []
            for i in range(labels.numel()):
                for j in range(i + 1, labels.numel()):
                    target = float(labels[i] == labels[j])
                    (same if target else different).append(_bce(_pair_logit(algo, z[i], z[j]), target))
            expected.append(0.5 * (sum(same) / len(same) + sum(different) / len(different)))
    torch.testing.assert_close(out.loss.detach(), sum(expected) / len(expected))
    out.loss.backward()
    assert_every_parameter_gets_a_gradient(algo)
    with pytest.raises(MetalabError, match="pairs must be one of"):
        build("siamese", SPEC, pairs="some")


def test_meta_loss_gradients_reach_every_parameter_including_the_head():
    algo = _siamese().train()
    algo.meta_loss(image_batch(tasks=2)).loss.backward()
    names = {name for name, _ in algo.named_parameters()}
    assert {"head.weight", "head.bias"} <= names
    assert_every_parameter_gets_a_gradient(algo)


# ---------------------------------------------------------------------------- errors


def _without_label_2(support_y):
    return torch.where(support_y == 2, torch.zeros_like(support_y), support_y)


def test_adapt_names_the_label_missing_from_the_support_set():
    episode = image_batch(tasks=1)[0]
    broken = Episode(episode.support_x, _without_label_2(episode.support_y), episode.query_x, episode.query_y,
                     episode.meta)
    with pytest.raises(MetalabError, match=r"missing \[2\]"):
        _siamese().eval().adapt(broken)


def test_meta_loss_names_the_label_missing_from_the_support_set():
    batch = image_batch(tasks=2)
    support_y = batch.support_y.clone()
    support_y[1] = _without_label_2(support_y[1])
    broken = EpisodeBatch(batch.support_x, support_y, batch.query_x, batch.query_y, batch.metas)
    with pytest.raises(MetalabError, match=r"episode 1 of the batch.*missing \[2\]"):
        _siamese().train().meta_loss(broken)


def test_regression_task_spec_is_rejected():
    with pytest.raises(MetalabError, match="classifier"):
        build("siamese", TaskSpec((1,), 1, False))


# ---------------------------------------------------------------------------- real Omniglot


def test_training_on_real_omniglot_beats_chance_on_held_out_characters(omniglot_5w1s):
    torch.manual_seed(0)
    algo = build("siamese", omniglot_5w1s.spec).train()
    optimizer = torch.optim.Adam(algo.parameters(), lr=1e-3)
    for step in range(200):
        optimizer.zero_grad()
        algo.meta_loss(omniglot_5w1s.train.batch(step, 1)).loss.backward()
        optimizer.step()
    algo.eval()
    accuracy = sum(algo.evaluate_episode(omniglot_5w1s.test.episode(i)) for i in range(50)) / 50
    # chance is 0.2 (untrained nets score 0.08-0.29); 200 steps reach 0.58 (0.576-0.585 over 4 seeds)
    assert accuracy > 0.45, accuracy
