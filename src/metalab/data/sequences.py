"""Online (sequence) episodes: classes shown one sample at a time, labels revealed a step late.

The protocol of Santoro et al. (2016, "One-shot Learning with Memory-Augmented Neural
Networks", ICML, section 2): an episode draws ``n_classes`` classes, ``n_instances``
samples of each, and presents all ``n_classes * n_instances`` samples in a random order.
At step ``t`` the learner sees ``x_t`` and the label ``y_{t-1}`` of the previous step, and
predicts ``y_t``; so the first presentation of a class can only be guessed, and later ones
test how well the learner bound the earlier samples to their labels. The labels ``0..n-1``
are a new random assignment in every episode, so nothing but the episode itself tells which
class carries which label.

Episode ``i`` of a sampler with seed ``s`` is drawn from a generator seeded with
``derive_seed(s, i)``, like :class:`~metalab.data.sampler.EpisodeSampler`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalab.data.augment import Jitter
from metalab.data.dataset import ClassDataset
from metalab.data.episode import Episode, EpisodeMeta
from metalab.data.sampler import TaskSource, check_drawable, draw_classes
from metalab.utils.errors import MetalabError, require_positive
from metalab.utils.seeding import derive_seed


class SequenceSampler(TaskSource):
    """Samples online episodes (:attr:`EpisodeMeta.online`) from a class-indexed dataset.

    Labels ``0..n_classes-1`` are assigned to a random ordering of the drawn classes
    (``meta.class_ids[j]`` is the class of label ``j``); each class contributes
    ``n_instances`` distinct samples; the ``T = n_classes * n_instances`` samples are
    presented in a uniformly random order. The episode's support set is empty and its query
    set is the sequence: ``query_x`` ``(T, *sample_shape)``, ``query_y`` ``(T,)`` int64.

    Args:
        dataset: classes to draw from.
        n_classes: classes per episode (Santoro et al.: 5 or 15).
        n_instances: samples of each class in the sequence (Santoro et al.: 10).
        seed: the stream's seed.
        jitter: rotate and shift every image of the sequence at random (Santoro et al.'s
            training-time augmentation, :class:`~metalab.data.augment.Jitter`); drawn after
            the classes, samples and order, so those are the same with and without it.

    Raises:
        MetalabError: a non-positive count, more classes than the dataset has, or more
            instances than the smallest class holds.
    """

    def __init__(self, dataset: ClassDataset, n_classes: int, n_instances: int, seed: int = 0,
                 jitter: Jitter | None = None):
        require_positive(n_classes=n_classes, n_instances=n_instances)
        check_drawable(dataset, n_classes, n_instances, "n_classes", "n_instances")
        self.dataset = dataset
        self.n_classes, self.n_instances, self.seed, self.jitter = n_classes, n_instances, seed, jitter

    def episode(self, index: int) -> Episode:
        seed = derive_seed(self.seed, index)
        g = torch.Generator().manual_seed(seed)
        n, m = self.n_classes, self.n_instances
        classes, x = draw_classes(self.dataset, n, m, g)
        order = torch.randperm(n * m, generator=g)
        if self.jitter is not None:
            x = self.jitter(x, g)
        labels = torch.arange(n).repeat_interleave(m)
        ids = classes.tolist()
        return Episode(
            support_x=x.new_empty((0, *x.shape[1:])),
            support_y=torch.empty(0, dtype=torch.int64),
            query_x=x[order],
            query_y=labels[order],
            meta=EpisodeMeta(
                task_id=index,
                seed=seed,
                n_way=n,
                k_shot=0,
                n_query=m,
                class_ids=tuple(self.dataset.class_ids[c] for c in ids),
                class_names=tuple(self.dataset.class_names[c] for c in ids),
                online=True,
            ),
        )


def presentation_numbers(labels: Tensor) -> Tensor:
    """How many times each step's label has been shown so far, that step included.

    ``out[..., t] = #{s <= t : labels[..., s] == labels[..., t]}``: 1 at a class's first
    presentation, 2 at its second, ... (Santoro et al.'s "instance" of Table 1 / Fig. 2).
    Static shapes: an ``(T, T)`` comparison masked to ``s <= t``, no loop over steps.

    Args:
        labels: ``(..., T)`` integer labels in presentation order.

    Returns:
        ``(..., T)`` int64, 1-based.
    """
    if labels.is_floating_point() or labels.dim() < 1:
        raise MetalabError(
            f"presentation_numbers takes integer labels of shape (..., T), got {labels.dtype} of shape "
            f"{tuple(labels.shape)}"
        )
    same = labels.unsqueeze(-1) == labels.unsqueeze(-2)  # (..., t, s)
    t = labels.shape[-1]
    earlier = torch.ones(t, t, dtype=torch.bool, device=labels.device).tril()  # s <= t
    return (same & earlier).sum(dim=-1)
