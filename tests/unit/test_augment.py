"""Per-sample image jitter (Santoro et al.'s augmentation): exact geometry, seeding, and its place in the streams."""

import pytest
import torch

from metalab import BenchmarkConfig, make_benchmark
from metalab.data import ClassDataset
from metalab.data.augment import Jitter, shift_rotate
from metalab.data.sequences import SequenceSampler
from metalab.utils import MetalabError


def _zeros(n):
    return torch.zeros(n, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(3, 1, 20, 20), (2, 2, 12, 20)])
def test_zero_angle_and_shift_is_the_identity_and_half_turns_are_rot90(shape):
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = _zeros(shape[0])
    torch.testing.assert_close(shift_rotate(x, z, z, z), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(shift_rotate(x, z + 180, z, z), torch.rot90(x, 2, (2, 3)), rtol=0, atol=1e-12)
    torch.testing.assert_close(shift_rotate(x, z - 180, z, z), torch.rot90(x, 2, (2, 3)), rtol=0, atol=1e-12)


def test_a_quarter_turn_is_counter_clockwise_like_rot90():
    x = torch.rand(4, 1, 20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z = _zeros(4)
    torch.testing.assert_close(shift_rotate(x, z + 90, z, z), torch.rot90(x, 1, (2, 3)), rtol=0, atol=1e-12)
    torch.testing.assert_close(shift_rotate(x, z - 90, z, z), torch.rot90(x, -1, (2, 3)), rtol=0, atol=1e-12)


def test_integer_shifts_move_the_image_right_and_down_with_zeros_coming_in():
    x = torch.rand(2, 1, 10, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 1
    z = _zeros(2)
    right, down = shift_rotate(x, z, z + 2, z), shift_rotate(x, z, z, z + 3)
    torch.testing.assert_close(right[..., 2:], x[..., :-2], rtol=0, atol=1e-12)
    assert right[..., :2].abs().max() < 1e-12
    torch.testing.assert_close(down[..., 3:, :], x[..., :-3, :], rtol=0, atol=1e-12)
    assert down[..., :3, :].abs().max() < 1e-12
    # each image gets its own transform
    mixed = shift_rotate(x, z, torch.tensor([0.0, 2.0], dtype=torch.float64), z)
    torch.testing.assert_close(mixed[0], x[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(mixed[1], right[1], rtol=0, atol=1e-12)


def test_uint8_images_stay_uint8_and_exact_under_the_identity():
    x = torch.randint(0, 256, (3, 1, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    z = _zeros(3)
    out = shift_rotate(x, z, z, z)
    assert out.dtype == torch.uint8 and torch.equal(out, x)


def test_jitter_is_seeded_per_image_within_its_bounds_and_draws_the_same_count_when_off():
    x = torch.zeros(6, 1, 21, 21)
    x[:, :, 10, 10] = 1.0  # one bright pixel at the centre: rotation keeps it, a shift moves it
    jitter = Jitter(degrees=0.0, pixels=2.0)
    a = jitter(x, torch.Generator().manual_seed(5))
    b = jitter(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # per image, not one transform for all
    # the centre of mass moved by at most 2 pixels per axis, and the mass stayed
    rows = torch.arange(21.0).view(1, 1, 21, 1)
    cols = torch.arange(21.0).view(1, 1, 1, 21)
    mass = a.sum(dim=(1, 2, 3))
    torch.testing.assert_close(mass, torch.ones(6), rtol=0, atol=1e-5)
    assert ((a * rows).sum(dim=(1, 2, 3)) / mass - 10).abs().max() <= 2 + 1e-5
    assert ((a * cols).sum(dim=(1, 2, 3)) / mass - 10).abs().max() <= 2 + 1e-5
    # off: the images unchanged, and the generator advanced as far as when on
    g_on, g_off = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    jitter(x, g_on)
    assert torch.equal(Jitter(0, 0)(x, g_off), x)
    assert torch.equal(torch.rand(4, generator=g_on), torch.rand(4, generator=g_off))
    assert not Jitter(0, 0) and Jitter(1, 0) and Jitter(0, 0.5)


@pytest.mark.parametrize("degrees, pixels", [(-1, 0), (0, -0.5), (float("nan"), 0), (0, float("inf")), (181, 0),
                                             (True, 0), ("5", 0)])
def test_jitter_rejects_bad_magnitudes(degrees, pixels):
    with pytest.raises(MetalabError, match="jitter"):
        Jitter(degrees, pixels)


def _dataset(classes=8, per_class=6):
    data = torch.rand(classes, per_class, 1, 12, 12, generator=torch.Generator().manual_seed(4))
    return ClassDataset(data, tuple(range(classes)), tuple(f"c{i}" for i in range(classes)))


def test_a_jittered_sequence_keeps_its_classes_samples_and_order():
    data = _dataset()
    plain = SequenceSampler(data, 4, 3, seed=11)
    jittered = SequenceSampler(data, 4, 3, seed=11, jitter=Jitter(15.0, 2.0))
    for index in range(3):
        p, j = plain.episode(index), jittered.episode(index)
        assert torch.equal(p.query_y, j.query_y) and p.meta == j.meta
        assert not torch.equal(p.query_x, j.query_x)
        assert torch.equal(j.query_x, jittered.episode(index).query_x)  # reproducible
    off = SequenceSampler(data, 4, 3, seed=11, jitter=Jitter(0.0, 0.0))
    assert torch.equal(off.episode(0).query_x, plain.episode(0).query_x)


def test_benchmark_config_allows_jitter_on_omniglot_online_only():
    BenchmarkConfig("omniglot-online", jitter_degrees=10.0, jitter_pixels=1.0)
    for name in ("omniglot", "sinusoid", "nav2d"):
        with pytest.raises(MetalabError, match="omniglot-online's training images only"):
            BenchmarkConfig(name, jitter_pixels=1.0)
    with pytest.raises(MetalabError, match="jitter degrees must be a finite number"):
        BenchmarkConfig("omniglot-online", jitter_degrees=-5.0)


def test_omniglot_online_jitters_training_images_only(omniglot_dir, omniglot_cache):
    kwargs = dict(data_dir=str(omniglot_dir), cache_dir=str(omniglot_cache))
    plain = make_benchmark(BenchmarkConfig("omniglot-online", **kwargs))
    jittered = make_benchmark(BenchmarkConfig("omniglot-online", jitter_degrees=15.0, jitter_pixels=2.0, **kwargs))
    assert plain.train.jitter is None and jittered.train.jitter == Jitter(15.0, 2.0)
    p, j = plain.train.episode(0), jittered.train.episode(0)
    assert torch.equal(p.query_y, j.query_y) and p.meta.class_ids == j.meta.class_ids
    assert j.query_x.dtype == p.query_x.dtype and j.query_x.shape == p.query_x.shape == (50, 1, 20, 20)
    assert not torch.equal(p.query_x, j.query_x)
    for stream in ("val", "test"):
        assert getattr(jittered, stream).jitter is None
        assert torch.equal(getattr(plain, stream).episode(0).query_x, getattr(jittered, stream).episode(0).query_x)
