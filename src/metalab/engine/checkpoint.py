"""Checkpoints: everything needed to rebuild the learner and continue its training."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from metalab.algorithms import registry
from metalab.algorithms.base import MetaAlgorithm
from metalab.data.benchmarks import TaskSpec
from metalab.data.sequences import LabelCode
from metalab.utils.errors import MetalabError
from metalab.utils.io import atomic_torch_save

FORMAT = 1


def save_checkpoint(path: str | Path, algorithm: MetaAlgorithm, **extra: Any) -> Path:
    """Atomically write the algorithm (name, spec, hyper-parameters, weights) plus ``extra``.

    ``extra`` holds plain data: the benchmark and training configs, the optimiser and
    scheduler states, the step, the best validation result.
    """
    record = {
        "format": FORMAT,
        "algorithm": algorithm.name,
        "spec": dataclasses.asdict(algorithm.spec),
        "hparams": algorithm.hparams(),
        "state_dict": algorithm.state_dict(),
        **extra,
    }
    return atomic_torch_save(record, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The record saved at ``path`` (plain data and tensors), checked to be a metalab checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise MetalabError(f"checkpoint {path} does not exist; pass a file written by `metalab train`")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or truncated files
        raise MetalabError(f"checkpoint {path} cannot be read ({exc}); it is not a metalab checkpoint") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise MetalabError(f"{path} is not a metalab checkpoint of format {FORMAT}")
    return record


def load_checkpoint(path: str | Path) -> tuple[MetaAlgorithm, dict[str, Any]]:
    """Rebuild the algorithm saved at ``path``; returns it and the whole record."""
    record = read_checkpoint(path)
    spec_fields = record["spec"]
    labels = spec_fields.get("labels")  # absent from checkpoints written before string labels
    spec = TaskSpec(tuple(spec_fields["input_shape"]), spec_fields["output_dim"], spec_fields["classification"],
                    LabelCode(**labels) if labels else None)
    algorithm = registry.build(record["algorithm"], spec, **record["hparams"])
    algorithm.load_state_dict(record["state_dict"])
    return algorithm, record
