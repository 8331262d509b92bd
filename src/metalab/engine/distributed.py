"""Data-parallel meta-training over ``torch.distributed`` (gloo; NCCL for tensors on GPUs).

Launched by ``torchrun --nproc_per_node=N -m metalab train ...`` (one process per core, GPU
or node; multi-node with torchrun's rendezvous flags), every process runs the same trainer
with a :class:`Distributed` context:

- meta-batch ``t`` is the same ``B`` episodes as in one process (episodes ``t*B ..
  t*B+B-1`` of the seeded stream); rank ``r`` draws only its contiguous share of ``B/N``
  of them, so the ranks' tasks are disjoint and reproducible;
- each rank computes the meta-gradient of its share (the mean over its tasks); the gradients
  are averaged with one all-reduce of a flat buffer, which also carries a "not finite" flag
  so that every rank skips (or stops on) the same batch; then every rank takes the same
  optimiser step, and the parameters stay identical (rank 0's are broadcast at the start);
  batch-norm running statistics, which each rank updates from its own share, are averaged
  after every step;
- evaluation episodes are split across ranks and the per-episode values gathered in episode
  order, so mean ± CI are those of one process;
- only rank 0 (:attr:`Distributed.is_main`) writes logs, checkpoints and results.

A rank that dies or hangs makes the others' next collective fail (at once, or after the
process group's timeout); :meth:`Distributed.collective` turns that into a
:class:`~metalab.utils.errors.MetalabError` naming the rank, the operation and the timeout.
"""

from __future__ import annotations

import datetime
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from metalab.utils.errors import MetalabError

DEFAULT_TIMEOUT = 300.0

#: The exceptions of failed collectives, whose tracebacks hold the calls' tensors. gloo's worker
#: thread may still hold such a tensor after the error reached Python; when it let go of the last
#: reference it had to take the GIL to free the tensor's Python object, and if the interpreter was
#: already shutting down, the thread exited inside C++ and the process aborted ("terminate called
#: without an active exception"; seen in a core dump of a rank whose peer hung). Kept here, the
#: tensors are freed by the main thread when the interpreter clears this module. The slow test
#: ``python -m pytest -m slow tests/integration/test_distributed.py`` runs a hanging peer 40 times:
#: without this list rank 0 aborted at the first run, with it all 40 exited with code 2.
_FAILED_CALLS: list[BaseException] = []


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run (``world_size == 1``: a plain single process).

    Attributes:
        rank: this process's rank, ``0 .. world_size - 1``.
        world_size: number of processes.
        timeout: seconds a collective may wait for the other ranks.
    """

    rank: int = 0
    world_size: int = 1
    timeout: float = DEFAULT_TIMEOUT

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes logs, checkpoints and results."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def device(self) -> torch.device:
        """Where collective buffers live: this rank's GPU under NCCL, else the CPU."""
        if self.active and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # ------------------------------------------------------------------ setup

    @classmethod
    def join(cls, world_size: int, timeout: float = DEFAULT_TIMEOUT, backend: str = "gloo",
             local_rank: int = 0) -> "Distributed":
        """Join the process group of ``world_size`` processes that torchrun started.

        The rank and the rendezvous (``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) are what torchrun
        put in the environment, read by ``torch.distributed`` itself (``env://``); the command
        line reads ``WORLD_SIZE`` and ``LOCAL_RANK``. With ``world_size <= 1`` this is a single
        process and nothing is initialised. The backend is gloo for runs on the CPU and NCCL
        (``backend="nccl"``, each rank on GPU ``local_rank``) for runs on GPUs, as
        :func:`backend_for` picks it.
        """
        if world_size <= 1:
            return cls(0, 1, timeout)
        if not timeout > 0:
            raise MetalabError(f"the distributed timeout must be positive seconds, got {timeout!r}")
        if not dist.is_available():
            raise MetalabError("this torch build has no torch.distributed; run in one process")
        if not dist.is_initialized():
            if backend == "nccl":
                torch.cuda.set_device(local_rank)
            try:
                dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
            except (RuntimeError, ValueError) as exc:
                raise MetalabError(f"could not join the process group ({exc}); launch with torchrun, e.g. "
                                   "`torchrun --nproc_per_node=2 -m metalab train ...`") from None
        if dist.get_world_size() != world_size:
            raise MetalabError(f"the process group has {dist.get_world_size()} processes, not {world_size}")
        return cls(dist.get_rank(), world_size, timeout)

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def __enter__(self) -> "Distributed":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """``with Distributed.join(...) as distributed:`` ends a run: the ranks leave together when
        the block finished, and the process group is torn down either way."""
        try:
            if exc_type is None:
                # a rank that tore its process group down while another was still writing its results
                # aborted in torch's C++ at exit ("terminate called without an active exception", 2 in 20)
                self.barrier("waiting for every rank to finish")
        finally:
            self.close()

    # ------------------------------------------------------------------ collectives

    @contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Turn a failed collective (a rank died, hung past the timeout) into a clear error.

        The failed call's exception is kept to the end of the process (:data:`_FAILED_CALLS`).
        """
        try:
            yield
        except (RuntimeError, dist.DistError) as exc:
            _FAILED_CALLS.append(exc)
            raise MetalabError(
                f"rank {self.rank}/{self.world_size}: {what} failed: another rank died or did not answer within "
                f"{self.timeout:g} s ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); the run stops "
                "here; its last complete checkpoint can be resumed with --resume"
            ) from None

    def shard(self, meta_batch_size: int) -> tuple[int, int]:
        """``(first, count)``: this rank's contiguous share of a meta-batch of ``meta_batch_size`` tasks."""
        if meta_batch_size % self.world_size:
            raise MetalabError(f"meta_batch_size={meta_batch_size} does not split evenly over {self.world_size} "
                               f"processes; choose a multiple of {self.world_size}")
        count = meta_batch_size // self.world_size
        return self.rank * count, count

    def broadcast_parameters(self, module: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers."""
        if not self.active:
            return
        with self.collective("broadcasting the initial parameters"), torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def average_gradients(self, parameters: Sequence[nn.Parameter], bad: bool) -> bool:
        """Average ``.grad`` over ranks in one all-reduce; ``True`` if any rank's batch was bad.

        Args:
            parameters: the meta-parameters, in the same order on every rank. Those whose
                ``.grad`` is ``None`` (on every rank alike: the graph is the same) stay so.
            bad: this rank's loss or gradient was not finite (its gradients count as zeros).
        """
        if not self.active:
            return bad
        parameters = list(parameters)
        like = parameters[0]
        flat = torch.cat([*(torch.zeros_like(p).reshape(-1) if bad or p.grad is None else p.grad.reshape(-1)
                            for p in parameters),
                          torch.tensor([1.0 if bad else 0.0], dtype=like.dtype, device=like.device)])
        with self.collective("averaging the meta-gradients"):
            dist.all_reduce(flat)
        if flat[-1].item() > 0:
            return True
        flat = flat[:-1] / self.world_size
        offset = 0
        for p in parameters:
            if p.grad is not None:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        return False

    def average_buffers(self, module: nn.Module) -> None:
        """Average the floating-point buffers (batch-norm running statistics) over ranks.

        Each rank updates them from its share of the meta-batch; the average keeps the ranks
        identical and equals one process's running mean (the mean of equal shares' means;
        the running variance misses the spread between the shares' means).
        """
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        if not self.active or not buffers:
            return
        flat = torch.cat([b.reshape(-1) for b in buffers])
        with self.collective("averaging the running statistics"):
            dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for b in buffers:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()

    def average_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each metric (every rank logs the same keys)."""
        if not self.active or not metrics:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self.device)
        with self.collective("averaging the training metrics"):
            dist.all_reduce(values)
        return {k: v / self.world_size for k, v in zip(keys, values.tolist())}

    def any(self, flag: bool, what: str) -> bool:
        """``True`` on every rank if ``flag`` is true on any (e.g. one rank ran out of time)."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        with self.collective(what):
            dist.all_reduce(value)
        return value.item() > 0

    def episode_indices(self, episodes: int) -> range:
        """The evaluation episodes this rank scores: ``rank, rank + N, rank + 2N, ...``."""
        return range(self.rank, episodes, self.world_size)

    def gather_values(self, values: list[float], episodes: int) -> list[float]:
        """Every rank's per-episode values (from :meth:`episode_indices`) back in episode order."""
        if not self.active:
            return values
        longest = -(-episodes // self.world_size)
        mine = torch.full((longest,), float("nan"), dtype=torch.float64, device=self.device)
        mine[:len(values)] = torch.tensor(values, dtype=torch.float64, device=self.device)
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        with self.collective("gathering the evaluation results"):
            dist.all_gather(parts, mine)
        ordered = torch.stack(parts, dim=1).reshape(-1)  # episode i is part i % N, position i // N
        return ordered[:episodes].cpu().tolist()

    def barrier(self, what: str) -> None:
        if self.active:
            with self.collective(what):
                dist.barrier()


SINGLE = Distributed()

DEVICES = ("cpu", "cuda", "cuda:N", "auto")


def resolve_device(name: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device a run (or this rank of it) trains on, from ``--device``.

    Args:
        name: ``cpu``; ``cuda`` (GPU ``local_rank``: under torchrun each rank takes the GPU of
            its local rank, alone GPU 0); ``cuda:N`` (GPU ``N``, one process only); ``auto``
            (``cuda`` when torch sees a GPU, else ``cpu``).
        local_rank: this process's rank on its node (torchrun's ``LOCAL_RANK``).
        world_size: processes in the run.

    Raises:
        MetalabError: an unknown name, a GPU that this torch build or machine does not have,
            ``cuda:N`` in a run of several processes.
    """
    text = str(name).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise MetalabError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if not torch.cuda.is_available():
        raise MetalabError(f"device {name!r}: torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                           "train with --device cpu, or install a CUDA build of torch on a machine with a GPU")
    if index and world_size > 1:
        raise MetalabError(f"device {name!r} names one GPU, but {world_size} processes run; give --device cuda "
                           "and each rank takes the GPU of its LOCAL_RANK")
    gpu = int(index) if index else local_rank
    if gpu >= torch.cuda.device_count():
        raise MetalabError(f"device {name!r} needs GPU {gpu}, but torch sees {torch.cuda.device_count()} GPU(s); "
                           "start at most one process per GPU (torchrun --nproc_per_node)")
    return torch.device("cuda", gpu)


def backend_for(device: torch.device) -> str:
    """The collective backend of a run on ``device``: NCCL for GPUs, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"
