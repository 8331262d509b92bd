"""Online (sequence) episodes: SequenceSampler, presentation_numbers and the omniglot-online benchmark."""

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from metalab import BenchmarkConfig, EpisodeBatch, make_benchmark
from metalab.data import ClassDataset
from metalab.data.benchmarks import TEST_STREAM, VAL_STREAM
from metalab.data.omniglot import omniglot_split
from metalab.data.sequences import LabelCode, SequenceSampler, presentation_numbers
from metalab.utils import MetalabError


def _dataset(classes=12, per_class=8):
    # sample value encodes (class, index) so provenance can be checked exactly
    data = torch.arange(classes * per_class, dtype=torch.float32).view(classes, per_class, 1)
    return ClassDataset(data, tuple(range(100, 100 + classes)), tuple(f"c{i}" for i in range(classes)))


def _check_episode(ep, n_classes, n_instances, index):
    t = n_classes * n_instances
    assert ep.is_online and ep.meta.online
    assert ep.support_x.shape == (0, *ep.query_x.shape[1:]) and ep.support_y.shape == (0,)
    assert ep.support_y.dtype == torch.int64 and ep.query_y.dtype == torch.int64
    assert ep.query_x.shape[0] == t and ep.query_y.shape == (t,)
    assert torch.bincount(ep.query_y, minlength=n_classes).tolist() == [n_instances] * n_classes
    m = ep.meta
    assert (m.task_id, m.n_way, m.k_shot, m.n_query) == (index, n_classes, 0, n_instances)
    assert len(m.class_ids) == len(m.class_names) == len(set(m.class_ids)) == n_classes


def test_sequence_holds_every_class_n_instances_times_with_distinct_samples_of_the_labelled_class():
    sampler = SequenceSampler(_dataset(), n_classes=5, n_instances=3, seed=7)
    for index in range(10):
        ep = sampler.episode(index)
        _check_episode(ep, 5, 3, index)
        values = ep.query_x.flatten().tolist()
        assert len(set(values)) == 15  # distinct samples
        for x, y in zip(values, ep.query_y.tolist()):
            cls = int(x) // 8
            assert ep.meta.class_ids[y] == 100 + cls and ep.meta.class_names[y] == f"c{cls}"


def test_same_index_same_episode_other_index_other_episode():
    a, b = SequenceSampler(_dataset(), 4, 2, seed=1), SequenceSampler(_dataset(), 4, 2, seed=1)
    for i in (0, 5):
        ea, eb = a.episode(i), b.episode(i)
        assert torch.equal(ea.query_x, eb.query_x) and torch.equal(ea.query_y, eb.query_y) and ea.meta == eb.meta
    assert any(not torch.equal(a.episode(0).query_x, a.episode(i).query_x) for i in range(1, 4))
    c = SequenceSampler(_dataset(), 4, 2, seed=2)
    assert any(not torch.equal(a.episode(i).query_x, c.episode(i).query_x) for i in range(4))


def test_presentation_order_and_label_assignment_are_shuffled():
    sampler = SequenceSampler(_dataset(), n_classes=3, n_instances=4, seed=0)
    episodes = [sampler.episode(i) for i in range(12)]
    # the class of label j is not always the j-th smallest id drawn (a fixed mapping keeps ids sorted)
    assert any(list(ep.meta.class_ids) != sorted(ep.meta.class_ids) for ep in episodes)
    # not class-major, and not the same order in every episode
    class_major = torch.arange(3).repeat_interleave(4)
    assert all(not torch.equal(ep.query_y, class_major) for ep in episodes)
    assert len({tuple(ep.query_y.tolist()) for ep in episodes}) > 6


def test_ragged_classes_use_only_real_samples():
    data = torch.zeros(4, 6, 1)
    counts = torch.tensor([6, 3, 4, 5])
    for c in range(4):
        data[c, : counts[c]] = torch.arange(1, counts[c] + 1).float()[:, None]
    ds = ClassDataset(data, (0, 1, 2, 3), ("a", "b", "c", "d"), counts=counts)
    sampler = SequenceSampler(ds, n_classes=4, n_instances=3, seed=0)
    for i in range(10):
        assert (sampler.episode(i).query_x > 0).all()


def test_online_episodes_stack_into_an_online_batch():
    batch = SequenceSampler(_dataset(), 3, 2, seed=0).batch(1, 4)
    assert isinstance(batch, EpisodeBatch) and batch.is_online and len(batch) == 4
    assert batch.query_x.shape == (4, 6, 1) and batch.support_x.shape == (4, 0, 1)
    assert [m.task_id for m in batch.metas] == [4, 5, 6, 7]
    assert batch[0].is_online


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_classes=13, n_instances=1), "larger than the 12 classes"),
        (dict(n_classes=5, n_instances=9), "exceeds the 8 samples"),
        (dict(n_classes=0, n_instances=2), "n_classes must be a positive integer"),
        (dict(n_classes=2, n_instances=-1), "n_instances must be a positive integer"),
        (dict(n_classes=2.0, n_instances=2), "n_classes must be a positive integer"),
    ],
)
def test_bad_arguments_are_explained(kwargs, message):
    with pytest.raises(MetalabError, match=message):
        SequenceSampler(_dataset(), **kwargs)


# ---------------------------------------------------------------------------- string labels


def test_label_code_writes_every_label_as_its_base_alphabet_digits():
    code = LabelCode(3, 4)
    assert (code.size, code.width) == (64, 12)
    labels = torch.arange(64)
    digits = code.digits(labels)
    assert digits.shape == (64, 3) and digits.dtype == torch.int64
    assert digits.tolist() == [[y // 16, y // 4 % 4, y % 4] for y in range(64)]
    assert torch.equal(code.labels(digits), labels)
    hot = code.one_hot(labels.view(8, 8), torch.float64)
    assert hot.shape == (8, 8, 12) and hot.dtype == torch.float64
    assert torch.equal(hot.view(64, 3, 4).argmax(-1), digits) and (hot.view(64, 3, 4).sum(-1) == 1).all()
    # one character: the plain one-hot code
    assert torch.equal(LabelCode(1, 5).one_hot(torch.tensor([4, 0, 2]), torch.float32),
                       F.one_hot(torch.tensor([4, 0, 2]), 5).float())


def test_label_code_draws_distinct_labels_and_rejects_too_many_classes():
    code = LabelCode(2, 3)
    g = torch.Generator().manual_seed(0)
    draws = [code.draw(9, g) for _ in range(5)]
    assert all(sorted(d.tolist()) == list(range(9)) for d in draws)
    assert len({tuple(d.tolist()) for d in draws}) > 1
    with pytest.raises(MetalabError, match="10 classes need 10 distinct labels"):
        code.draw(10, g)
    for bad, message in [((0, 5), "length"), ((2, 1), "alphabet of at least 2"), ((2, 0), "alphabet")]:
        with pytest.raises(MetalabError, match=message):
            LabelCode(*bad)


def test_first_presentation_ceiling_is_the_best_guessers_accuracy():
    assert LabelCode(1, 5).first_presentation_ceiling(5) == pytest.approx((1 / 5 + 1 / 4 + 1 / 3 + 1 / 2 + 1) / 5,
                                                                           rel=1e-15)  # 45.7%
    assert LabelCode(5, 5).first_presentation_ceiling(15) == pytest.approx(
        sum(1 / (3125 - j) for j in range(15)) / 15, rel=1e-15)  # 0.032%: below the paper's 0.1% for MANN
    # the learner that guesses among the labels not yet shown, on labels drawn like an episode's, scores it
    code, n, episodes = LabelCode(2, 2), 3, 20000
    g, guess = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    hits = 0
    for _ in range(episodes):
        labels = code.draw(n, g).tolist()
        for j, y in enumerate(labels):
            unshown = [c for c in range(code.size) if c not in labels[:j]]
            hits += unshown[torch.randint(len(unshown), (), generator=guess)] == y
    assert hits / (n * episodes) == pytest.approx(code.first_presentation_ceiling(n), abs=0.01)  # 13/36
    with pytest.raises(MetalabError, match="5 classes need 5 distinct labels"):
        LabelCode(2, 2).first_presentation_ceiling(5)


def test_string_labels_name_each_class_once_and_leave_the_rest_of_the_episode_unchanged():
    code = LabelCode(5, 5)
    plain, strings = SequenceSampler(_dataset(), 5, 3, seed=4), SequenceSampler(_dataset(), 5, 3, seed=4, code=code)
    seen = set()
    for index in range(6):
        a, b = plain.episode(index), strings.episode(index)
        assert torch.equal(a.query_x, b.query_x) and a.meta.class_ids == b.meta.class_ids
        names = b.meta.labels
        assert len(names) == len(set(names)) == 5 and all(0 <= y < 3125 for y in names)
        # label j of the one-hot episode is class j; here that class carries names[j]
        assert torch.equal(b.query_y, torch.tensor(names)[a.query_y]) and a.meta.labels == ()
        for x, y in zip(b.query_x.flatten().tolist(), b.query_y.tolist()):
            assert b.meta.class_ids[names.index(y)] == 100 + int(x) // 8
        seen.add(names)
    assert len(seen) == 6  # new strings in every episode
    with pytest.raises(MetalabError, match="6 classes need 6 distinct labels"):
        SequenceSampler(_dataset(), 6, 2, code=LabelCode(1, 5))
    # a one-character code is the one-hot labelling
    assert torch.equal(SequenceSampler(_dataset(), 5, 3, seed=4, code=LabelCode(1, 5)).episode(0).query_y,
                       plain.episode(0).query_y)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="omniglot", label_length=5), "apply to omniglot-online only"),
        (dict(name="omniglot-online", label_length=0), "label_length must be a positive integer"),
        (dict(name="omniglot-online", label_length=2, label_alphabet=3, n_way=10), "10 classes need 10 distinct"),
        (dict(name="omniglot-online", label_length=2, label_alphabet=3, train_n_way=12), "12 classes need 12"),
        (dict(name="omniglot-online", label_length=3, label_alphabet=1), "alphabet of at least 2"),
    ],
)
def test_bad_label_settings_are_explained(kwargs, message):
    with pytest.raises(MetalabError, match=message):
        BenchmarkConfig(**kwargs)


def _presentation_reference(labels):
    seen, out = Counter(), []
    for y in labels:
        seen[y] += 1
        out.append(seen[y])
    return out


def test_presentation_numbers_match_a_python_loop():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (3, 2, 17), generator=g)
    got = presentation_numbers(labels)
    assert got.shape == labels.shape and got.dtype == torch.int64
    for row, out in zip(labels.view(-1, 17).tolist(), got.view(-1, 17).tolist()):
        assert out == _presentation_reference(row)
    assert presentation_numbers(torch.tensor([2, 0, 2, 2, 0])).tolist() == [1, 1, 2, 3, 2]


def test_presentation_numbers_reject_float_labels():
    with pytest.raises(MetalabError, match="integer labels"):
        presentation_numbers(torch.zeros(5))


# ---------------------------------------------------------------------------- real Omniglot


def test_sequences_of_real_omniglot_characters(omniglot_images):
    split = omniglot_split(omniglot_images, "vinyals-test")
    sampler = SequenceSampler(split, n_classes=5, n_instances=10, seed=3)
    ep = sampler.episode(2)
    _check_episode(ep, 5, 10, 2)
    assert ep.query_x.shape == (50, 1, 28, 28) and ep.query_x.dtype == torch.float32
    for j, name in enumerate(ep.meta.class_names):
        assert split.class_names[split.class_ids.index(ep.meta.class_ids[j])] == name
        images = ep.query_x[ep.query_y == j]
        # ten different drawings of one character
        assert len({tuple(im.flatten().tolist()) for im in images}) == 10


def test_omniglot_online_benchmark_has_20x20_sequences_of_50_steps(omniglot_dir, omniglot_cache):
    bench = make_benchmark(BenchmarkConfig("omniglot-online", data_dir=str(omniglot_dir),
                                           cache_dir=str(omniglot_cache)))
    assert bench.name == "omniglot-online" and bench.metric == "accuracy"
    assert bench.spec.input_shape == (1, 20, 20) and bench.spec.output_dim == 5 and bench.spec.classification
    for source in (bench.train, bench.val, bench.test):
        assert isinstance(source, SequenceSampler)
        ep = source.episode(0)
        _check_episode(ep, 5, 10, 0)
        assert ep.query_x.shape == (50, 1, 20, 20)
    assert (bench.train.seed, bench.val.seed, bench.test.seed) == (0, VAL_STREAM, TEST_STREAM)
    assert bench.train.dataset.num_classes == 4 * 1028 and bench.test.dataset.num_classes == 4 * 423
    batch = bench.train.batch(0, 2)
    assert batch.is_online and batch.query_x.shape == (2, 50, 1, 20, 20)


@pytest.mark.parametrize("split, classes", [("vinyals", (1028, 172, 423)), ("vinyals-trainval", (1200, 172, 423)),
                                            ("lake", (792, 172, 659)), ("random", (1100, 100, 423))])
def test_omniglot_splits_give_train_val_and_test_characters(omniglot_dir, omniglot_cache, split, classes):
    bench = make_benchmark(BenchmarkConfig("omniglot-online", data_dir=str(omniglot_dir), cache_dir=str(omniglot_cache),
                                           split=split, image_size=28))
    parts = [source.dataset for source in (bench.train, bench.val, bench.test)]
    rotations = 1 if split == "lake" else 4
    assert tuple(d.num_classes for d in parts) == tuple(rotations * c for c in classes)
    train, val, test = (set(d.class_ids) for d in parts)
    assert not train & test and not val & test
    assert (train >= val) == (split == "vinyals-trainval")


def test_omniglot_online_sizes_follow_the_config(omniglot_dir, omniglot_cache, omniglot_images):
    # image_size=28: the size the omniglot_images fixture already decoded into this cache
    bench = make_benchmark(BenchmarkConfig("omniglot-online", data_dir=str(omniglot_dir), cache_dir=str(omniglot_cache),
                                           n_way=15, n_query=4, train_n_way=3, train_n_query=2, image_size=28))
    assert bench.spec.input_shape == (1, 28, 28) and bench.spec.output_dim == 15
    assert (bench.train.n_classes, bench.train.n_instances) == (3, 2)
    assert (bench.test.n_classes, bench.test.n_instances) == (15, 4)


def test_omniglot_online_with_the_papers_15_class_string_labels(omniglot_dir, omniglot_cache):
    bench = make_benchmark(BenchmarkConfig("omniglot-online", data_dir=str(omniglot_dir), cache_dir=str(omniglot_cache),
                                           n_way=15, label_length=5))
    assert bench.spec.labels == LabelCode(5, 5) and bench.spec.output_dim == 25
    for source in (bench.train, bench.val, bench.test):
        ep = source.episode(3)
        assert ep.query_x.shape == (150, 1, 20, 20) and len(set(ep.meta.labels)) == 15
        assert sorted(torch.unique(ep.query_y).tolist()) == sorted(ep.meta.labels)
        assert torch.bincount(ep.query_y).max() == 10


def test_omniglot_online_needs_the_data_folder():
    with pytest.raises(MetalabError, match="omniglot-online benchmark needs the folder"):
        make_benchmark(BenchmarkConfig("omniglot-online"))
