import pytest
import torch

from metalab.algorithms import MAML, make_config
from metalab.data import TaskSpec
from metalab.func import forward, params_of, task_loss
from metalab.nn import MLP, Conv4

from .helpers import finite_difference_grad, flat_grad, image_batch, sinusoid_batch


def _mlp_maml(steps, first_order=False, mode="loop", lr=0.05):
    torch.manual_seed(0)
    config = make_config("maml", inner_lr=lr, inner_steps=steps, first_order=first_order, task_mode=mode)
    return MAML(TaskSpec((1,), 1, False), config, model=MLP((1, 6, 6, 1))).double()


def _conv_maml(steps, first_order=False, mode="loop"):
    torch.manual_seed(0)
    config = make_config("maml", inner_lr=0.3, inner_steps=steps, first_order=first_order, task_mode=mode)
    model = Conv4(1, image_size=16, hidden=2, out_features=3, vmap_safe=mode == "vmap")
    return MAML(TaskSpec((1, 16, 16), 3, True), config, model=model).double()


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_meta_gradient_matches_finite_differences(steps):
    algo = _mlp_maml(steps)
    batch = sinusoid_batch()
    algo.meta_loss(batch).loss.backward()
    numeric = finite_difference_grad(lambda: algo.meta_loss(batch).loss, algo)
    torch.testing.assert_close(flat_grad(algo), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("mode", ["loop", "vmap", "batched"])
def test_second_order_meta_gradient_through_batchnorm_matches_finite_differences(mode):
    algo = _conv_maml(2, mode=mode)
    batch = image_batch(tasks=2)
    algo.meta_loss(batch).loss.backward()
    numeric = finite_difference_grad(lambda: algo.meta_loss(batch).loss, algo)
    torch.testing.assert_close(flat_grad(algo), numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("steps", [1, 3])
def test_first_order_gradient_is_the_query_gradient_at_adapted_parameters(steps):
    algo = _mlp_maml(steps, first_order=True)
    batch = sinusoid_batch()
    algo.meta_loss(batch).loss.backward()
    expected = torch.zeros_like(flat_grad(algo))
    for episode in batch.episodes():
        params = {k: v.detach().clone().requires_grad_() for k, v in params_of(algo.model).items()}
        for _ in range(steps):  # plain SGD by hand
            loss = task_loss(forward(algo.model, params, episode.support_x), episode.support_y)
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {k: (v - 0.05 * g).detach().requires_grad_() for (k, v), g in zip(params.items(), grads)}
        query = task_loss(forward(algo.model, params, episode.query_x), episode.query_y)
        expected += torch.cat([g.flatten() for g in torch.autograd.grad(query, list(params.values()))])
    torch.testing.assert_close(flat_grad(algo), expected / len(batch), rtol=1e-10, atol=1e-12)


def test_first_order_differs_from_second_order():
    batch = sinusoid_batch()
    grads = []
    for first_order in (False, True):
        algo = _mlp_maml(2, first_order=first_order)
        algo.meta_loss(batch).loss.backward()
        grads.append(flat_grad(algo))
    assert not torch.allclose(grads[0], grads[1], rtol=1e-3)


@pytest.mark.parametrize("make, batch", [(_mlp_maml, sinusoid_batch), (_conv_maml, image_batch)])
def test_loop_equals_vmap_second_order(make, batch):
    data = batch()
    results = []
    for mode in ("loop", "vmap"):
        algo = make(2, mode=mode)
        out = algo.meta_loss(data)
        out.loss.backward()
        results.append((out.loss.detach(), flat_grad(algo)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-10, atol=1e-12)


def test_adapt_improves_support_fit_and_keeps_no_graph():
    algo = _mlp_maml(1, lr=0.02)
    episode = sinusoid_batch(tasks=1)[0]
    before = task_loss(algo.adapt(episode, steps=0)(episode.support_x), episode.support_y)
    predictor = algo.adapt(episode, steps=20)
    out = predictor(episode.support_x)
    assert not out.requires_grad
    assert task_loss(out, episode.support_y) < before


def test_adapt_requires_every_class_in_the_support():
    algo = _conv_maml(1)
    episode = image_batch(tasks=1)[0]
    bad = type(episode)(episode.support_x, torch.zeros_like(episode.support_y), episode.query_x,
                        episode.query_y, episode.meta)
    with pytest.raises(ValueError, match="missing \\[1, 2\\]"):
        algo.adapt(bad)


def test_episodes_must_match_the_output_head():
    algo = _conv_maml(1)
    with pytest.raises(ValueError, match="3-way output head but got 4-way"):
        algo.meta_loss(image_batch(tasks=1, n_way=4))


@pytest.mark.parametrize("make, batch", [
    (_mlp_maml, lambda: sinusoid_batch(tasks=5, k_shot=1, n_query=5)),  # groups of 2 tasks: 2 + 2 + 1
    (_conv_maml, lambda: image_batch(tasks=5, k_shot=1, n_query=4)),
    (_conv_maml, image_batch),  # groups of one task
])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_batched_equals_loop(make, batch, first_order, steps):
    """Tasks' inner loops side by side: the loop's loss, metrics and meta-gradient (meta_gradient and meta_loss)."""
    data = batch()
    results = []
    for mode in ("loop", "batched"):
        for via_loss in (False, True):
            algo = make(steps, first_order=first_order, mode=mode)
            assert algo.task_mode == mode
            if via_loss:
                out = algo.meta_loss(data)
                out.loss.backward()
            else:
                out = algo.meta_gradient(data)
            results.append((out.loss.detach(), out.metrics, flat_grad(algo)))
    for loss, metrics, grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-12, atol=1e-12)
        assert metrics == pytest.approx(results[0][1], rel=1e-12)
        torch.testing.assert_close(grad, results[0][2], rtol=1e-10, atol=1e-12)


def test_auto_task_mode_is_the_loop_for_images_and_vmap_for_vectors():
    assert _conv_maml(1, mode="auto").task_mode == "loop"
    assert _mlp_maml(1, mode="auto").task_mode == "vmap"


def test_auto_task_mode_batches_the_default_strided_conv4_where_the_method_can_and_threads_the_rest():
    from metalab.algorithms import ANIL, MetaSGD, Reptile

    spec = TaskSpec((1, 28, 28), 5, True)

    def mode(cls, **hparams):
        return cls(spec, make_config(cls.name, task_mode="auto", **hparams)).task_mode

    assert [mode(MAML, downsample="stride"), mode(MAML, downsample="stride", first_order=True),
            mode(MetaSGD, downsample="stride")] == ["batched"] * 3
    # the rest of the default Conv4's tasks run side by side on threads (benchmarks/task_modes.py)
    assert mode(MAML, downsample="pool") == "threads"
    assert mode(MAML, downsample="stride", inner_grad_clip=1.0) == "threads"  # one clipping norm per task
    assert mode(ANIL, downsample="stride") == "threads"  # its batched form is slower on the CPU (task_modes.py)
    assert [mode(ANIL), mode(MetaSGD), mode(Reptile), mode(Reptile, downsample="stride")] == ["threads"] * 4
    assert mode(Reptile, inner_optimizer="adam", inner_state="persistent") == "loop"  # the state passes on


def test_channels_last_option_gives_the_same_meta_gradient():
    data = image_batch(tasks=3, k_shot=1, n_query=4)
    grads = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        config = make_config("maml", inner_lr=0.3, inner_steps=2, channels_last=channels_last)
        algo = MAML(TaskSpec((1, 16, 16), 3, True), config).double()
        assert algo.model.body[1].channels_last is channels_last
        algo.meta_gradient(data)
        grads.append(flat_grad(algo))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("channels_last, task_mode", [(False, "loop"), (True, "loop"), (True, "batched")])
def test_float32_meta_gradient_on_real_omniglot_stays_at_rounding_level(channels_last, task_mode, omniglot_dir,
                                                                       omniglot_images, omniglot_cache):
    """Float32 against float64 on real 5-way 1-shot episodes (flat background + strokes): the
    channels-last layout once drifted by 4e-4..1e-2 (throughput records), through PyTorch's channels-last batch-norm
    kernel (benchmarks/bn_precision.py); every layout must stay at float32 rounding."""
    import copy

    import metalab

    bench = metalab.make_benchmark(metalab.BenchmarkConfig(
        "omniglot", data_dir=str(omniglot_dir), cache_dir=str(omniglot_cache), n_way=5, k_shot=1, n_query=15,
        train_n_way=5, train_k_shot=1, train_n_query=15))
    for step in (0,):
        batch = bench.train.batch(step, 3)
        exact_batch = batch.to(torch.float64)
        torch.manual_seed(step)
        single = MAML(bench.spec, make_config("maml", inner_lr=0.4, channels_last=channels_last, task_mode=task_mode))
        double = copy.deepcopy(single).double()
        single.meta_gradient(batch)
        double.meta_gradient(exact_batch)
        # conv biases: zero in exact arithmetic (batch norm follows), so only rounding is left to compare
        got, want = (torch.cat([p.grad.flatten() for n, p in m.named_parameters() if "conv.bias" not in n])
                     for m in (single, double))
        assert ((got.double() - want).norm() / want.norm()).item() < 1e-4, step


def test_closed_form_first_block_keeps_the_float32_meta_gradient_as_close_to_float64_as_the_block_as_written(
        omniglot_dir, omniglot_images, omniglot_cache):
    """Second order on real 5-way 1-shot episodes, task by task: the closed-form first block
    (Conv4's default with max-pooling) must not lose float32 precision against the block as
    written. Compared by the median over tasks: a few tasks' errors jump by orders of magnitude
    in either form, and in float64 nudged by one rounding too (a max-pool or ReLU choice flips
    there; benchmarks/meta_gradient_precision.py), so one batch's error says little."""
    import copy
    import statistics

    import metalab
    from metalab.nn.backbones import allow_closed_form

    bench = metalab.make_benchmark(metalab.BenchmarkConfig(
        "omniglot", data_dir=str(omniglot_dir), cache_dir=str(omniglot_cache), n_way=5, k_shot=1, n_query=15,
        train_n_way=5, train_k_shot=1, train_n_query=15))
    torch.manual_seed(0)
    single = MAML(bench.spec, make_config("maml", inner_lr=0.4))
    written = copy.deepcopy(single)
    assert allow_closed_form(written, False) == 4
    double = copy.deepcopy(written).double()

    def gradient(model, batch):
        model.zero_grad(set_to_none=True)
        model.meta_gradient(batch)
        return torch.cat([p.grad.flatten() for n, p in model.named_parameters() if "conv.bias" not in n]).double()

    errors = {"closed form": [], "as written": []}
    for i in range(12):
        batch = metalab.EpisodeBatch.stack([bench.train.episode(i)])
        want = gradient(double, batch.to(torch.float64))
        for name, model in (("closed form", single), ("as written", written)):
            errors[name].append(((gradient(model, batch) - want).norm() / want.norm()).item())
    closed, plain = (statistics.median(errors[name]) for name in ("closed form", "as written"))
    assert closed < 1.5 * plain, errors
