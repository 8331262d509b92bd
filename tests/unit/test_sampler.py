import pytest
import torch

from metalab.data import ClassDataset, EpisodeBatch, EpisodeSampler, SinusoidTasks
from metalab.utils import MetalabError


def _dataset(classes=12, per_class=8):
    # sample value encodes (class, index) so provenance can be checked exactly
    data = torch.arange(classes * per_class, dtype=torch.float32).view(classes, per_class, 1)
    return ClassDataset(data, tuple(range(100, 100 + classes)), tuple(f"c{i}" for i in range(classes)))


def test_support_and_query_are_disjoint_balanced_and_labelled_by_class():
    ds = _dataset()
    sampler = EpisodeSampler(ds, n_way=5, k_shot=2, n_query=3, seed=7)
    for index in range(20):
        ep = sampler.episode(index)
        assert ep.support_x.shape == (10, 1) and ep.query_x.shape == (15, 1)
        assert torch.bincount(ep.support_y, minlength=5).tolist() == [2] * 5
        assert torch.bincount(ep.query_y, minlength=5).tolist() == [3] * 5
        support = set(ep.support_x.flatten().tolist())
        query = set(ep.query_x.flatten().tolist())
        assert not support & query and len(support) == 10 and len(query) == 15
        # every example of label j comes from class meta.class_ids[j]
        for x, y in zip(torch.cat([ep.support_x, ep.query_x]).flatten(), torch.cat([ep.support_y, ep.query_y])):
            cls = int(x) // 8
            assert ep.meta.class_ids[y] == 100 + cls
            assert ep.meta.class_names[y] == f"c{cls}"
        assert ep.meta.n_way == 5 and ep.meta.k_shot == 2 and ep.meta.n_query == 3
        assert ep.meta.task_id == index


def test_labels_are_a_random_order_of_the_classes():
    sampler = EpisodeSampler(_dataset(), n_way=5, k_shot=1, n_query=1, seed=0)
    orders = {sampler.episode(i).meta.class_ids for i in range(30)}
    # not sorted by class id (a fixed remapping would keep ids increasing)
    assert any(list(ids) != sorted(ids) for ids in orders)
    assert len(orders) > 20


def test_same_seed_same_episodes_other_seed_other_episodes():
    a = EpisodeSampler(_dataset(), 5, 2, 3, seed=1)
    b = EpisodeSampler(_dataset(), 5, 2, 3, seed=1)
    c = EpisodeSampler(_dataset(), 5, 2, 3, seed=2)
    for i in (0, 3, 17):
        assert torch.equal(a.episode(i).support_x, b.episode(i).support_x)
        assert torch.equal(a.episode(i).query_x, b.episode(i).query_x)
        assert a.episode(i).meta == b.episode(i).meta
    assert any(not torch.equal(a.episode(i).support_x, c.episode(i).support_x) for i in range(5))


def test_batches_are_indexed_stream_slices():
    sampler = EpisodeSampler(_dataset(), 5, 1, 2, seed=3)
    it = sampler.batches(4, start_step=2)
    first = next(it)
    assert isinstance(first, EpisodeBatch) and len(first) == 4
    assert first.support_x.shape == (4, 5, 1)
    assert [m.task_id for m in first.metas] == [8, 9, 10, 11]
    assert torch.equal(first[1].query_x, sampler.episode(9).query_x)
    assert [m.task_id for m in next(it).metas] == [12, 13, 14, 15]


def test_ragged_classes_use_only_real_samples():
    data = torch.zeros(4, 6, 1)
    counts = torch.tensor([6, 3, 4, 5])
    for c in range(4):
        data[c, : counts[c]] = torch.arange(1, counts[c] + 1).float()[:, None]
    ds = ClassDataset(data, (0, 1, 2, 3), ("a", "b", "c", "d"), counts=counts)
    sampler = EpisodeSampler(ds, n_way=4, k_shot=1, n_query=2, seed=0)
    for i in range(20):
        ep = sampler.episode(i)
        assert (ep.support_x > 0).all() and (ep.query_x > 0).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_way=13, k_shot=1, n_query=1), "larger than the 12 classes"),
        (dict(n_way=5, k_shot=5, n_query=4), "exceeds the 8 samples"),
        (dict(n_way=0, k_shot=1, n_query=1), "n_way must be a positive integer"),
    ],
)
def test_impossible_episodes_are_clear_errors(kwargs, message):
    with pytest.raises(MetalabError, match=message):
        EpisodeSampler(_dataset(), seed=0, **kwargs)


def test_stack_rejects_mismatched_shapes():
    a = EpisodeSampler(_dataset(), 5, 1, 1).episode(0)
    b = EpisodeSampler(_dataset(), 4, 1, 1).episode(0)
    with pytest.raises(ValueError, match="share shapes"):
        EpisodeBatch.stack([a, b])


def test_sinusoid_targets_and_metadata():
    tasks = SinusoidTasks(k_shot=5, n_query=7, seed=4)
    amps, phases = [], []
    for i in range(200):
        ep = tasks.episode(i)
        a, p = ep.meta.params["amplitude"], ep.meta.params["phase"]
        amps.append(a), phases.append(p)
        x = torch.cat([ep.support_x, ep.query_x])
        y = torch.cat([ep.support_y, ep.query_y])
        assert ep.support_x.shape == (5, 1) and ep.query_y.shape == (7, 1)
        torch.testing.assert_close(y, a * torch.sin(x - p))
        assert x.min() >= -5 and x.max() <= 5
    assert 0.1 <= min(amps) and max(amps) <= 5.0 and max(amps) - min(amps) > 4
    assert 0 <= min(phases) and max(phases) <= torch.pi and max(phases) - min(phases) > 2.5
    again = SinusoidTasks(k_shot=5, n_query=7, seed=4).episode(11)
    assert torch.equal(again.support_x, tasks.episode(11).support_x)
    with pytest.raises(MetalabError, match="amplitude"):
        SinusoidTasks(amplitude=(5.0, 0.1))


def test_batch_split_and_to_keep_tasks_and_metadata():
    batch = SinusoidTasks(seed=1).batch(0, 4)
    half = batch.split(2, 1)
    assert [m.task_id for m in half.metas] == [2, 3]
    assert torch.equal(half.query_x, batch.query_x[2:])
    moved = batch.to("cpu")
    assert moved.metas == batch.metas and torch.equal(moved[3].support_y, batch[3].support_y)
    with pytest.raises(ValueError, match="does not split"):
        batch.split(3, 0)


def test_to_a_dtype_casts_inputs_and_regression_targets_but_keeps_class_labels():
    images = EpisodeSampler(_dataset(), 3, 2, 2, seed=0).batch(0, 2)
    wide = images.to(torch.float64)
    assert wide.support_x.dtype == wide.query_x.dtype == torch.float64
    assert wide.support_y.dtype == wide.query_y.dtype == torch.long and torch.equal(wide.query_y, images.query_y)
    assert torch.equal(wide.support_x, images.support_x.double()) and wide.metas == images.metas
    episode = SinusoidTasks(seed=1).episode(0).to(torch.float64)
    assert {t.dtype for t in (episode.support_x, episode.support_y, episode.query_x, episode.query_y)} == {torch.float64}
    with pytest.raises(ValueError, match="floating-point dtypes only, got torch.int64"):
        images.to(torch.int64)
