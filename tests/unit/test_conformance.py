"""Every registered algorithm honours the MetaAlgorithm contract."""

import math

import pytest
import torch

import metalab

from metalab.algorithms import build, names
from metalab.data import TaskSpec
from metalab.engine import load_checkpoint, save_checkpoint
from metalab.engine.trainer import precision

from .helpers import assert_every_parameter_gets_a_gradient, image_batch, sinusoid_batch

SPEC = TaskSpec((1, 16, 16), 3, True)


def _build(name, seed=0):
    torch.manual_seed(seed)
    return build(name, SPEC)


@pytest.fixture(scope="module")
def batch():
    return image_batch(tasks=2, dtype=torch.float32)


@pytest.mark.parametrize("name", names("supervised"))
def test_one_step_gives_a_finite_loss_and_gradients_on_every_meta_parameter(name, batch):
    algo = _build(name).train()
    out = algo.meta_loss(batch)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert set(out.metrics) == {"loss", "accuracy"}
    out.loss.backward()
    assert_every_parameter_gets_a_gradient(algo)


@pytest.mark.parametrize("name", names("supervised"))
def test_same_seed_same_loss(name, batch):
    a, b = _build(name, seed=3), _build(name, seed=3)
    assert a.meta_loss(batch).loss.item() == b.meta_loss(batch).loss.item()
    assert _build(name, seed=4).meta_loss(batch).loss.item() != a.meta_loss(batch).loss.item()


@pytest.mark.parametrize("name", names("supervised"))
def test_adapt_returns_a_predictor_of_the_right_shape(name, batch):
    algo = _build(name).eval()
    episode = batch[0]
    logits = algo.adapt(episode)(episode.query_x)
    assert logits.shape == (episode.query_x.shape[0], 3) and not logits.requires_grad
    assert 0.0 <= algo.evaluate_episode(episode) <= 1.0


@pytest.mark.parametrize("name", names("supervised"))
def test_checkpoint_round_trip(name, batch, tmp_path):
    algo = _build(name).train()
    algo.meta_loss(batch).loss.backward()  # training mode also moves running statistics
    algo.eval()
    save_checkpoint(tmp_path / "c.pt", algo, step=7)
    loaded, record = load_checkpoint(tmp_path / "c.pt")
    assert type(loaded) is type(algo) and record["step"] == 7 and loaded.hparams() == algo.hparams()
    for (k, v), (k2, v2) in zip(algo.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    loaded.eval()
    episode = batch[1]
    torch.testing.assert_close(loaded.adapt(episode)(episode.query_x), algo.adapt(episode)(episode.query_x))


@pytest.mark.parametrize("name", names("supervised"))
def test_meta_gradient_is_the_gradient_of_meta_loss(name, batch):
    a, b = _build(name, seed=5).train(), _build(name, seed=5).train()
    out = a.meta_loss(batch)
    out.loss.backward()
    got = b.meta_gradient(batch)
    assert not got.loss.requires_grad and got.metrics.keys() == out.metrics.keys()
    torch.testing.assert_close(got.loss, out.loss.detach(), rtol=1e-5, atol=1e-7)
    for (pname, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=f"meta-gradient of {pname}")



@pytest.fixture(scope="module")
def omniglot_batch(omniglot_dir, omniglot_images, omniglot_cache):
    bench = metalab.make_benchmark(metalab.BenchmarkConfig(
        "omniglot", data_dir=str(omniglot_dir), cache_dir=str(omniglot_cache), n_way=5, k_shot=1, n_query=2,
        train_n_way=5, train_k_shot=1, train_n_query=2))
    return bench.spec, bench.train.batch(0, 2)


@pytest.mark.parametrize("name", names("supervised"))
def test_one_training_step_on_real_omniglot_reaches_every_meta_parameter(name, omniglot_batch):
    spec, batch = omniglot_batch
    assert batch.support_x.shape == (2, 5, 1, 28, 28)
    torch.manual_seed(0)
    algo = build(name, spec).train()
    out = algo.meta_gradient(batch)
    assert torch.isfinite(out.loss)
    assert_every_parameter_gets_a_gradient(algo)


@pytest.mark.parametrize("name", names("supervised"))
def test_meta_gradient_of_a_batch_is_the_mean_over_its_halves(name):
    """What data-parallel training relies on: averaging the ranks' meta-gradients of equal shares
    of a meta-batch gives the meta-gradient of the whole batch (float64, exact to rounding)."""
    batch = image_batch(tasks=4, dtype=torch.float64)

    def grads(part):
        algo = _build(name).double().train()
        algo.meta_gradient(part)
        return [p.grad.clone() for p in algo.parameters()]

    whole = grads(batch)
    halves = [grads(batch.split(2, i)) for i in range(2)]
    for g, a, b in zip(whole, *halves, strict=True):
        torch.testing.assert_close((a + b) / 2, g, rtol=1e-9, atol=1e-12)


DEVICE_CASES = [(name, {}) for name in names("supervised")] + [
    ("maml", {"task_mode": "batched"}), ("meta_sgd", {"task_mode": "batched"}), ("anil", {"task_mode": "batched"}),
    ("maml", {"task_mode": "threads"}), ("maml", {"task_mode": "loop"}),
    ("maml", {"channels_last": True}), ("mann", {"add_vector": True}),
    ("matching_net", {"fce": True}), ("mann", {"key_strength": True}), ("siamese", {"pairs": "all"})]
VECTOR_CASES = ["maml", "anil", "meta_sgd", "reptile", "meta_lstm"]  # the vmapped path of regression tasks


@pytest.mark.parametrize(("name", "hparams", "data"), [(n, h, "images") for n, h in DEVICE_CASES] +
                         [(n, {}, "vectors") for n in VECTOR_CASES],
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()) or "-")
def test_every_tensor_is_made_on_the_device_of_the_data(name, hparams, data, batch):
    """What training on a GPU needs, checked without one: with the default device set to ``meta``
    (tensors without data), any tensor a method makes without ``device=`` lands there and its
    first use beside the CPU data raises, so passing means every tensor follows the data's
    device (and a CPU generator's draws are moved to it)."""
    if data == "vectors":
        spec, batch = TaskSpec((1,), 1, False), sinusoid_batch(tasks=3, dtype=torch.float32)
    else:
        spec = SPEC
    torch.manual_seed(0)
    algo = build(name, spec, **hparams).train()
    with torch.device("meta"):
        out = algo.meta_gradient(batch)
        algo.eval()
        score = algo.evaluate_episode(batch[0])
    assert torch.isfinite(out.loss) and math.isfinite(score)
    assert all(p.grad is None or p.grad.device.type == "cpu" for p in algo.parameters())


def test_the_device_probe_catches_a_tensor_made_on_the_default_device(batch):
    """The check above can fail: a tensor made without ``device=`` breaks a step under it."""
    x = batch.support_x
    with pytest.raises((RuntimeError, NotImplementedError)), torch.device("meta"):
        (x + torch.ones(x.shape[-1])).sum().item()


@pytest.mark.parametrize("name", names("supervised"))
def test_meta_gradient_under_bfloat16_autocast(name, batch):
    """What ``TrainConfig.autocast="bfloat16"`` runs: every method's meta-gradient under
    ``torch.autocast`` (MANN's LSTM and memory, Meta-LSTM's learned rule and Reptile's own update
    included) lands in the parameters' dtype, is finite, and points where the float32 one does
    without being it (the low precision is really in use)."""
    a, b = _build(name, seed=6).train(), _build(name, seed=6).train()
    a.meta_gradient(batch)
    with precision("bfloat16", torch.device("cpu")):  # what the trainer wraps each step in
        out = b.meta_gradient(batch)
    assert torch.isfinite(out.loss)
    exact = torch.cat([p.grad.flatten() for p in a.parameters()])
    for pname, p in b.named_parameters():
        assert p.grad is not None and p.grad.dtype == p.dtype and torch.isfinite(p.grad).all(), pname
    low = torch.cat([p.grad.flatten() for p in b.parameters()])
    assert not torch.equal(low, exact)
    # (0.91-0.99 here: 16x16 noise images and 2-image batch norm make the MAML family's meta-gradient
    # a near-cancelling sum; a lost or wrong-signed term would fall far below)
    assert torch.nn.functional.cosine_similarity(low, exact, dim=0) > 0.75
