"""Episodes as data: tensors plus the metadata that says which task they came from."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class EpisodeMeta:
    """Where an episode came from.

    Attributes:
        task_id: index of the episode in its stream (the sampler's ``index``).
        seed: the seed its generator was created with; re-sampling with it gives the
            same episode.
        n_way: number of classes (``None`` for regression families).
        k_shot: support examples per class (per task for regression).
        n_query: query examples per class (per task for regression).
        class_ids: global class ids in label order: label ``j`` is class ``class_ids[j]``
            (or label ``labels[j]``, where given).
        class_names: human-readable names in the order of ``class_ids``, e.g. ``Greek/character07/rot90``.
        params: task parameters of generated families, e.g. ``{"amplitude": 2.1, "phase": 0.3}``.
        online: an online (sequence) episode (Santoro et al., 2016, "One-shot Learning with
            Memory-Augmented Neural Networks", ICML): its support set is empty and its query
            set is one sequence in presentation order, whose label at step ``t`` is shown to
            the learner only at step ``t + 1``, after its prediction for step ``t``.
        labels: the label of each class in ``class_ids`` where the labels are not ``0..n_way-1``
            (online episodes with string labels, :class:`~metalab.data.sequences.LabelCode`);
            empty otherwise.
    """

    task_id: int
    seed: int
    n_way: int | None
    k_shot: int
    n_query: int
    class_ids: tuple[int, ...] = ()
    class_names: tuple[str, ...] = ()
    params: Mapping[str, float] = field(default_factory=dict)
    online: bool = False
    labels: tuple[int, ...] = ()


def _check_pair(name: str, x: Tensor, y: Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name}_x has {x.shape[0]} examples but {name}_y has {y.shape[0]}; "
            "they must match along dim 0"
        )


_TENSOR_FIELDS = ("support_x", "support_y", "query_x", "query_y")


def _map_tensors(obj, fn):
    """A copy of an Episode or EpisodeBatch with ``fn`` applied to its four tensors."""
    return replace(obj, **{name: fn(getattr(obj, name)) for name in _TENSOR_FIELDS})


def _moved(obj, target: torch.device | str | torch.dtype):
    """``obj.to(target)``: a dtype casts the floating-point tensors only (as ``nn.Module.to``:
    class labels stay integers), a device moves all four."""
    if isinstance(target, torch.dtype):
        if not target.is_floating_point:
            raise ValueError(f"an episode's inputs cast to floating-point dtypes only, got {target}")
        return _map_tensors(obj, lambda t: t.to(target) if t.is_floating_point() else t)
    return _map_tensors(obj, lambda t: t.to(target))


@dataclass(frozen=True)
class Episode:
    """One support/query instance of a task.

    Args:
        support_x: ``(n_support, *input_shape)``.
        support_y: ``(n_support,)`` int64 labels in ``0..n_way-1``, or ``(n_support, d)``
            float targets for regression.
        query_x: ``(n_query_total, *input_shape)``.
        query_y: like ``support_y``.
        meta: the episode's :class:`EpisodeMeta`.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    meta: EpisodeMeta

    def __post_init__(self) -> None:
        _check_pair("support", self.support_x, self.support_y)
        _check_pair("query", self.query_x, self.query_y)

    @property
    def is_classification(self) -> bool:
        return not self.support_y.is_floating_point()

    @property
    def is_online(self) -> bool:
        """A sequence episode (see :attr:`EpisodeMeta.online`)."""
        return self.meta.online

    def to(self, target: torch.device | str | torch.dtype) -> "Episode":
        """On another device, or with inputs (and regression targets) in another floating-point dtype."""
        return _moved(self, target)


@dataclass(frozen=True)
class EpisodeBatch:
    """Episodes of the same shapes stacked on dim 0 (``meta_batch_size`` tasks).

    Shapes are those of :class:`Episode` with a leading task dimension ``B``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    metas: tuple[EpisodeMeta, ...]

    @classmethod
    def stack(cls, episodes: Sequence[Episode]) -> "EpisodeBatch":
        if not episodes:
            raise ValueError("cannot stack an empty list of episodes")
        shapes = {(e.support_x.shape, e.query_x.shape, e.support_y.shape) for e in episodes}
        if len(shapes) != 1:
            raise ValueError(
                "episodes in one batch must share shapes (same n_way, k_shot, n_query); "
                f"got {sorted(str(s) for s in shapes)}"
            )
        return cls(
            support_x=torch.stack([e.support_x for e in episodes]),
            support_y=torch.stack([e.support_y for e in episodes]),
            query_x=torch.stack([e.query_x for e in episodes]),
            query_y=torch.stack([e.query_y for e in episodes]),
            metas=tuple(e.meta for e in episodes),
        )

    def __len__(self) -> int:
        return self.support_x.shape[0]

    @property
    def is_classification(self) -> bool:
        return not self.support_y.is_floating_point()

    @property
    def is_online(self) -> bool:
        """A batch of sequence episodes (see :attr:`EpisodeMeta.online`)."""
        return self.metas[0].online

    def __getitem__(self, i: int) -> Episode:
        return Episode(
            self.support_x[i], self.support_y[i], self.query_x[i], self.query_y[i], self.metas[i]
        )

    def episodes(self) -> list[Episode]:
        return [self[i] for i in range(len(self))]

    def to(self, target: torch.device | str | torch.dtype) -> "EpisodeBatch":
        """On another device, or with inputs (and regression targets) in another floating-point dtype."""
        return _moved(self, target)

    def split(self, parts: int, index: int) -> "EpisodeBatch":
        """The ``index``-th of ``parts`` contiguous shares (for data-parallel ranks)."""
        n = len(self)
        if n % parts:
            raise ValueError(f"a batch of {n} tasks does not split into {parts} equal shares")
        s = slice(index * n // parts, (index + 1) * n // parts)
        return replace(_map_tensors(self, lambda t: t[s]), metas=self.metas[s])
