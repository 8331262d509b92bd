"""Class-indexed datasets: the input of the N-way K-shot sampler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class ClassDataset:
    """Samples grouped by class.

    ``data[c, i]`` is the ``i``-th sample of class ``c``; classes with fewer samples than
    the widest one are padded and ``counts[c]`` says how many are real.

    Attributes:
        data: ``(num_classes, max_samples, *sample_shape)`` of any dtype (Omniglot keeps
            uint8 to stay small; ``transform`` converts a gathered batch).
        class_ids: global id of each class, ``len == num_classes``.
        class_names: human-readable name of each class.
        counts: ``(num_classes,)`` int64 real samples per class; ``None`` means all full.
        transform: applied to a gathered ``(n, *sample_shape)`` batch, e.g. uint8 -> float.
    """

    data: Tensor
    class_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    counts: Tensor | None = None
    transform: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        c = self.data.shape[0]
        if len(self.class_ids) != c or len(self.class_names) != c:
            raise ValueError(
                f"ClassDataset has {c} classes in data but {len(self.class_ids)} ids and "
                f"{len(self.class_names)} names"
            )
        if self.counts is not None and self.counts.shape != (c,):
            raise ValueError(f"counts must have shape ({c},), got {tuple(self.counts.shape)}")

    @property
    def num_classes(self) -> int:
        return self.data.shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[2:])

    def class_sizes(self) -> Tensor:
        if self.counts is None:
            return torch.full((self.num_classes,), self.data.shape[1], dtype=torch.int64)
        return self.counts

    def gather(self, classes: Tensor, samples: Tensor) -> Tensor:
        """``data[classes[:, None], samples]`` flattened to ``(n, *sample_shape)``, transformed.

        Args:
            classes: ``(n_way,)`` class indices.
            samples: ``(n_way, m)`` sample indices within each class.
        """
        out = self.data[classes[:, None], samples].flatten(0, 1)
        return self.transform(out) if self.transform is not None else out

    def subset(self, classes: Sequence[int]) -> "ClassDataset":
        """The classes at the given positions, in that order."""
        index = torch.as_tensor(list(classes), dtype=torch.int64)
        return ClassDataset(
            data=self.data[index],
            class_ids=tuple(self.class_ids[i] for i in index.tolist()),
            class_names=tuple(self.class_names[i] for i in index.tolist()),
            counts=None if self.counts is None else self.counts[index],
            transform=self.transform,
        )
