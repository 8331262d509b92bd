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

Labels are integers; :class:`LabelCode` says how a learner reads and writes them: one-hot
(``LabelCode(1, n)``, the paper's 5-class episodes) or as strings of characters (the paper's
15-class episodes: five characters over five symbols, each episode drawing its classes'
strings at random from the 3125 possible).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.data.augment import Jitter
from metalab.data.dataset import ClassDataset
from metalab.data.episode import Episode, EpisodeMeta
from metalab.data.sampler import TaskSource, check_drawable, draw_classes
from metalab.utils.errors import MetalabError, require_positive
from metalab.utils.seeding import derive_seed


@dataclass(frozen=True)
class LabelCode:
    """Labels as strings of ``length`` characters over ``alphabet`` symbols.

    Label ``y`` in ``0..alphabet**length - 1`` is the string of its ``length`` base-``alphabet``
    digits, most significant first. A learner sees a label as the concatenated one-hot
    vectors of its characters (:meth:`one_hot`, width ``length * alphabet``) and predicts it
    with one softmax per character. ``LabelCode(1, n)`` is the plain one-hot code of ``n``
    labels; Santoro et al.'s 15-class episodes use ``LabelCode(5, 5)``.
    """

    length: int
    alphabet: int

    def __post_init__(self) -> None:
        require_positive(length=self.length, alphabet=self.alphabet)
        if self.length > 1 and self.alphabet < 2:
            raise MetalabError(f"strings of {self.length} characters need an alphabet of at least 2 symbols, "
                               f"got {self.alphabet}")

    @property
    def size(self) -> int:
        """How many labels the code can write."""
        return self.alphabet ** self.length

    @property
    def width(self) -> int:
        """Width of a label's one-hot encoding (and of a learner's output logits)."""
        return self.length * self.alphabet

    def _place_values(self, device: torch.device) -> Tensor:
        """``alphabet**(length-1), ..., alphabet, 1``: the value of each character position."""
        return self.alphabet ** torch.arange(self.length - 1, -1, -1, device=device)

    def digits(self, labels: Tensor) -> Tensor:
        """``(...)`` labels -> ``(..., length)`` characters in ``0..alphabet-1``."""
        return labels.unsqueeze(-1).div(self._place_values(labels.device), rounding_mode="floor") % self.alphabet

    def labels(self, digits: Tensor) -> Tensor:
        """Inverse of :meth:`digits`: ``(..., length)`` characters -> ``(...)`` labels."""
        return (digits * self._place_values(digits.device)).sum(-1)

    def one_hot(self, labels: Tensor, dtype: torch.dtype) -> Tensor:
        """``(...)`` labels -> ``(..., width)``: the one-hot vectors of the characters, concatenated."""
        return F.one_hot(self.digits(labels), self.alphabet).flatten(-2).to(dtype)

    def check_classes(self, n: int) -> None:
        """Raise a ``MetalabError`` unless the code has ``n`` distinct labels."""
        if n > self.size:
            raise MetalabError(f"{n} classes need {n} distinct labels, but strings of {self.length} characters over "
                               f"{self.alphabet} symbols write only {self.size}: use longer strings or more symbols")

    def first_presentation_ceiling(self, n: int) -> float:
        """The highest expected accuracy any learner can reach on the first presentations of an
        episode's ``n`` classes (each drawn with :meth:`draw`).

        When the ``j``-th class (from 0) first appears, ``j`` labels have been shown and the new
        class's label is equally likely to be any of the other ``size - j``: the best guess is
        right with probability ``1 / (size - j)``, so the ceiling is their mean over the ``n``
        classes: 45.7% for 5 one-hot classes, 0.032% for Santoro et al.'s 15 classes with
        five-character strings over five symbols.
        """
        self.check_classes(n)
        return sum(1.0 / (self.size - j) for j in range(n)) / n

    def draw(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` distinct labels drawn uniformly at random, ``(n,)`` int64."""
        self.check_classes(n)
        return torch.randperm(self.size, generator=generator)[:n]


class SequenceSampler(TaskSource):
    """Samples online episodes (:attr:`EpisodeMeta.online`) from a class-indexed dataset.

    Labels ``0..n_classes-1`` are assigned to a random ordering of the drawn classes
    (``meta.class_ids[j]`` is the class of label ``j``); each class contributes
    ``n_instances`` distinct samples; the ``T = n_classes * n_instances`` samples are
    presented in a uniformly random order. The episode's support set is empty and its query
    set is the sequence: ``query_x`` ``(T, *sample_shape)``, ``query_y`` ``(T,)`` int64.
    With a string ``code`` the classes' labels are instead ``n_classes`` distinct strings
    drawn at random in every episode (``meta.labels[j]`` is the label of ``meta.class_ids[j]``).

    Args:
        dataset: classes to draw from.
        n_classes: classes per episode (Santoro et al.: 5 or 15).
        n_instances: samples of each class in the sequence (Santoro et al.: 10).
        seed: the stream's seed.
        jitter: rotate and shift every image of the sequence at random (Santoro et al.'s
            training-time augmentation, :class:`~metalab.data.augment.Jitter`); drawn after
            the classes, samples and order, so those are the same with and without it.
        code: write the labels as random strings (:class:`LabelCode` of ``length > 1``),
            drawn after everything else; ``None`` or a code of length 1: labels ``0..n_classes-1``.

    Raises:
        MetalabError: a non-positive count, more classes than the dataset has, or more
            instances than the smallest class holds, or more classes than ``code`` has labels.
    """

    def __init__(self, dataset: ClassDataset, n_classes: int, n_instances: int, seed: int = 0,
                 jitter: Jitter | None = None, code: LabelCode | None = None):
        require_positive(n_classes=n_classes, n_instances=n_instances)
        check_drawable(dataset, n_classes, n_instances, "n_classes", "n_instances")
        if code is not None:
            code.check_classes(n_classes)
        self.dataset = dataset
        self.n_classes, self.n_instances, self.seed, self.jitter = n_classes, n_instances, seed, jitter
        self.strings = code if code is not None and code.length > 1 else None

    def episode(self, index: int) -> Episode:
        seed = derive_seed(self.seed, index)
        g = torch.Generator().manual_seed(seed)
        n, m = self.n_classes, self.n_instances
        classes, x = draw_classes(self.dataset, n, m, g)
        order = torch.randperm(n * m, generator=g)
        if self.jitter is not None:
            x = self.jitter(x, g)
        names = self.strings.draw(n, g) if self.strings is not None else torch.arange(n)
        labels = names.repeat_interleave(m)
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
                labels=tuple(names.tolist()) if self.strings is not None else (),
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
