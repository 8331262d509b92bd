"""N-way K-shot episodes from any class-indexed dataset, addressable by index.

Episode ``i`` of a sampler with seed ``s`` is drawn from a generator seeded with
``derive_seed(s, i)``, so the stream needs no state: a resumed run, another rank or an
evaluator asking for episode ``i`` gets exactly the same episode.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from metalab.data.dataset import ClassDataset
from metalab.data.episode import Episode, EpisodeBatch, EpisodeMeta
from metalab.utils.errors import MetalabError, batch_share, require_positive
from metalab.utils.seeding import derive_seed


class TaskSource:
    """A seeded, index-addressable stream of episodes (base of every sampler)."""

    seed: int

    def episode(self, index: int) -> Episode:
        raise NotImplementedError

    def batch(self, step: int, meta_batch_size: int, first: int = 0, count: int | None = None) -> EpisodeBatch:
        """Episodes ``step * meta_batch_size ... + meta_batch_size - 1`` stacked.

        ``first``, ``count``: only tasks ``first .. first + count - 1`` of that meta-batch (a
        data-parallel rank's share); ``count=None``: to the end.
        """
        count = batch_share(meta_batch_size, first, count)
        start = step * meta_batch_size + first
        return EpisodeBatch.stack([self.episode(start + i) for i in range(count)])

    def batches(self, meta_batch_size: int, start_step: int = 0) -> Iterator[EpisodeBatch]:
        """Endless iterator of meta-batches from ``start_step`` on."""
        step = start_step
        while True:
            yield self.batch(step, meta_batch_size)
            step += 1


def check_drawable(dataset: ClassDataset, n_classes: int, per_class: int, n_name: str, per_name: str) -> None:
    """Raise unless ``n_classes`` classes with ``per_class`` distinct samples each can be drawn."""
    if n_classes > dataset.num_classes:
        raise MetalabError(
            f"{n_name}={n_classes} is larger than the {dataset.num_classes} classes available; "
            f"lower {n_name} or use a split with more classes"
        )
    sizes = dataset.class_sizes()
    small = (sizes < per_class).nonzero().flatten()
    if small.numel():
        c = small[0].item()
        raise MetalabError(
            f"{per_name} = {per_class} exceeds the {sizes[c].item()} samples of class "
            f"{dataset.class_names[c]!r}; lower {per_name}"
        )


def draw_classes(dataset: ClassDataset, n_classes: int, per_class: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n_classes`` random classes and ``per_class`` distinct samples of each.

    Returns the class indices ``(n_classes,)`` in draw order (the samplers' label order) and
    the samples ``(n_classes * per_class, *sample_shape)``, class-major; classes of a ragged
    dataset draw among their real samples only.
    """
    classes = torch.randperm(dataset.num_classes, generator=g)[:n_classes]
    if dataset.counts is None:
        samples = torch.rand(n_classes, dataset.data.shape[1], generator=g).argsort(dim=1)[:, :per_class]
    else:
        counts = dataset.class_sizes()[classes].tolist()
        samples = torch.stack([torch.randperm(c, generator=g)[:per_class] for c in counts])
    return classes, dataset.gather(classes, samples)


class EpisodeSampler(TaskSource):
    """Samples N-way K-shot episodes with disjoint support and query sets.

    Labels are ``0..n_way-1`` assigned to a random ordering of the drawn classes; the
    support holds ``k_shot`` and the query ``n_query`` examples of each class, class-major.

    Args:
        dataset: classes to draw from.
        n_way: classes per episode.
        k_shot: support examples per class.
        n_query: query examples per class.
        seed: the stream's seed.
    """

    def __init__(self, dataset: ClassDataset, n_way: int, k_shot: int, n_query: int, seed: int = 0):
        require_positive(n_way=n_way, k_shot=k_shot, n_query=n_query)
        check_drawable(dataset, n_way, k_shot + n_query, "n_way", "k_shot + n_query")
        self.dataset = dataset
        self.n_way, self.k_shot, self.n_query, self.seed = n_way, k_shot, n_query, seed

    def episode(self, index: int) -> Episode:
        seed = derive_seed(self.seed, index)
        g = torch.Generator().manual_seed(seed)
        ds, n, k, q = self.dataset, self.n_way, self.k_shot, self.n_query
        classes, x = draw_classes(ds, n, k + q, g)
        x = x.unflatten(0, (n, k + q))
        labels = torch.arange(n)
        ids = classes.tolist()
        return Episode(
            support_x=x[:, :k].flatten(0, 1),
            support_y=labels.repeat_interleave(k),
            query_x=x[:, k:].flatten(0, 1),
            query_y=labels.repeat_interleave(q),
            meta=EpisodeMeta(
                task_id=index,
                seed=seed,
                n_way=n,
                k_shot=k,
                n_query=q,
                class_ids=tuple(ds.class_ids[c] for c in ids),
                class_names=tuple(ds.class_names[c] for c in ids),
            ),
        )
