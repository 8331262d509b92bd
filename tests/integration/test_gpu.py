"""Training on GPUs: the same numbers as on the CPU, checkpoints that move between devices, NCCL.

Skipped where torch sees no CUDA GPU (CI has none); run them on a GPU machine with
``python -m pytest tests/integration/test_gpu.py``. Without a GPU, what the GPU path relies on
(every tensor a method makes follows the data's device) is checked by
tests/unit/test_conformance.py::test_every_tensor_is_made_on_the_device_of_the_data.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from metalab.algorithms import build, names
from metalab.data import TaskSpec

from ..unit.helpers import image_batch
from .test_distributed import metalab, ranks, torchrun

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SPEC = TaskSpec((1, 16, 16), 3, True)
TRAIN = ["train", "maml", "--benchmark", "sinusoid", "--meta-batch-size", "4", "--val-every", "10",
         "--val-episodes", "10", "--test-episodes", "20", "--checkpoint-every", "10", "--quiet"]


@pytest.mark.parametrize("name", names("supervised"))
def test_a_meta_step_on_the_gpu_equals_the_cpu_in_float64(name):
    batch = image_batch(tasks=2, dtype=torch.float64)
    torch.manual_seed(0)
    cpu = build(name, SPEC).double().train()
    gpu = copy.deepcopy(cpu).to("cuda")
    out_cpu, out_gpu = cpu.meta_gradient(batch), gpu.meta_gradient(gpu.on_device(batch))
    torch.testing.assert_close(out_gpu.loss.cpu(), out_cpu.loss, rtol=1e-9, atol=1e-12)
    for (pname, p), q in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        assert q.grad.device.type == "cuda"
        torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-7, atol=1e-10, msg=pname)
    cpu.eval(), gpu.eval()
    assert gpu.evaluate_episode(gpu.on_device(batch[0])) == pytest.approx(cpu.evaluate_episode(batch[0]), abs=1e-9)


def test_train_on_the_gpu_continue_on_the_cpu_and_evaluate_on_the_gpu(tmp_path):
    run = tmp_path / "run"
    first = metalab(*TRAIN, "--steps", "20", "--device", "cuda", "--out", str(run))
    assert first.returncode == 0, first.stderr
    assert "cuda" in json.loads((run / "config.json").read_text())["commands"][0]
    again = metalab("train", "--resume", str(run), "--steps", "30", "--device", "cpu", "--quiet")
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "results.json").read_text())["steps"] == 30
    scored = metalab("eval", str(run / "best.pt"), "--episodes", "20", "--device", "cuda", "--quiet",
                     "--out", str(tmp_path / "eval.json"))
    assert scored.returncode == 0, scored.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["test"][0]["episodes"] == 20


def test_meta_rl_refuses_the_gpu_with_a_clear_error(tmp_path):
    done = metalab("train", "maml_rl", "--benchmark", "nav2d", "--steps", "1", "--device", "cuda",
                   "--out", str(tmp_path / "rl"))
    assert done.returncode == 2 and "run on the CPU" in done.stderr


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_over_nccl_equal_one_gpu_in_float64(tmp_path):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    for world, out in ((1, one), (2, two)):
        procs = ranks(world, "train", str(out), "120", "cuda")
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
    a, b = torch.load(one), torch.load(two)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-10, msg=name)
    done = torchrun(*TRAIN, "--steps", "20", "--device", "cuda", "--out", str(tmp_path / "nccl"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "nccl" / "config.json").read_text())["world_size"] == 2
