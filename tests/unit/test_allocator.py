"""Freed memory kept for reuse (glibc's mallopt), by hand and by the trainer: measured in fresh processes as
the minor page faults of a repeated Conv4 forward/backward pass on two threads (as task_mode="threads" runs)."""

import subprocess
import sys

import pytest
import torch

from metalab.utils import MetalabError, retain_freed_memory
from metalab.utils.allocator import MAX_MMAP_THRESHOLD, _glibc, allocated_bytes

glibc = pytest.mark.skipif(_glibc() is None, reason="mallopt is glibc's")

PROBE = r"""
import resource
import torch
import torch.nn.functional as F
import metalab
from metalab.func import on_threads
from metalab.nn import Conv4

torch.set_num_threads(2)
torch.manual_seed(0)
model = Conv4(1, 28, out_features=5)
x, y = torch.randn(75, 1, 28, 28), torch.arange(5).repeat(15)  # a 5-way 15-query set: 15 MB maps


def faults_per_pass(between=lambda: None):  # between: run before every counted pass
    def one():
        torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))

    def run():  # each thread allocates from its own glibc heap
        on_threads([one, one])
    for _ in range(5):
        run()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        between()
        run()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 10


before = faults_per_pass()
between = lambda: None
{action}
print(before, faults_per_pass(between))
"""

TRAIN = """
bench = metalab.make_benchmark(metalab.BenchmarkConfig("sinusoid", k_shot=5))
config = metalab.TrainConfig(steps=1, meta_batch_size=2, val_every=0, val_episodes=1{extra})
metalab.train(metalab.build("maml", bench.spec), bench, config, progress=False)
"""


def faults(action: str) -> tuple[float, float]:
    """Minor page faults per pass before and after ``action``, in a fresh process."""
    done = subprocess.run([sys.executable, "-c", PROBE.replace("{action}", action)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    before, after = map(float, done.stdout.split())
    return before, after


@glibc
def test_retained_memory_is_reused_instead_of_faulted_in_again():
    before, after = faults("assert metalab.utils.retain_freed_memory()")
    assert before > 1000  # glibc's default: the pass's large blocks come back as fresh pages every time
    assert after < before / 10, (before, after)


@glibc
def test_training_retains_freed_memory_unless_told_not_to():
    before, after = faults(TRAIN.replace("{extra}", ""))
    assert after < before / 10, (before, after)
    before, after = faults(TRAIN.replace("{extra}", ", release_freed_memory=True"))
    assert after > before / 4, (before, after)


def test_thresholds_out_of_glibcs_range_are_refused():
    with pytest.raises(MetalabError, match=r"mmap_threshold must be between 1 and 33554432 bytes.*got 33554433"):
        retain_freed_memory(mmap_threshold=MAX_MMAP_THRESHOLD + 1)
    with pytest.raises(MetalabError, match="trim_threshold must be between 1 and .* got 0"):
        retain_freed_memory(trim_threshold=0)



@glibc
def test_trimming_hands_the_kept_memory_back():
    # against the passes with the memory kept (not glibc's default, whose count swings with the threads' timing
    # when other processes load the cores: 23.6k against 4.8k after trimming once under pytest-xdist)
    kept, trimmed = faults("assert metalab.utils.retain_freed_memory()\n"
                           "before = faults_per_pass()\n"
                           "between = metalab.utils.allocator.trim_freed_memory")
    assert trimmed > 2 * kept, (kept, trimmed)  # every pass takes its pages from the system again


def test_allocated_bytes_counts_live_tensors_and_not_the_freed_memory_kept():
    if allocated_bytes() is None:
        pytest.skip("needs glibc 2.33 or later (mallinfo2)")
    size = 48 * 2**20  # above glibc's mmap threshold as the process starts, below it once retained: both kinds
    before = allocated_bytes()
    block = torch.ones(size // 4)
    during = allocated_bytes()
    del block
    after = allocated_bytes()
    assert during - before >= size and during - after >= size
    small = [torch.ones(2**18) for _ in range(8)]  # 1 MB each: from the heap, not mmapped
    assert allocated_bytes() - after >= 8 * 2**20
    del small
