#!/bin/bash
# The GPU checks of metalab, for one call of a lent GPU machine (its image's python3 holds a CUDA
# build of torch; nothing is installed, metalab runs from src/):
#
#     bash benchmarks/gpu_checks.sh
#
# 1. tests/integration/test_gpu.py: every method's float64 meta-gradient on the GPU equals the CPU's,
#    a run trains on the GPU / continues on the CPU / evaluates on the GPU, meta-RL refuses the GPU,
#    and with two GPUs two NCCL processes equal one (these tests skip where torch sees no GPU);
# 2. the device-following conformance tests (they run on the CPU anywhere);
# 3. benchmarks/task_modes.py --device cuda: loop vs vmap vs batched on the GPU (records with
#    settings suffixed -cuda, to choose the GPU's default task mode).
# Logs and the appended records go to $OUT (the device tool brings them back), else to /tmp.
set -uo pipefail
out=${OUT:-/tmp}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
python3 -m pytest -q -p no:cacheprovider tests/integration/test_gpu.py \
    "tests/unit/test_conformance.py::test_every_tensor_is_made_on_the_device_of_the_data" 2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}
python3 benchmarks/task_modes.py --device cuda --iters 20 2>&1 | tee "$out/task_modes.log"
cp benchmarks/results/throughput.jsonl "$out/throughput.jsonl"
exit "$tests"
