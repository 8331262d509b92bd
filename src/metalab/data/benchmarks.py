"""Named benchmarks: which task streams a run trains, validates and tests on.

Validation and test streams use fixed seeds that do not depend on the run seed, so every
run and every ``metalab eval`` of a benchmark sees the same validation and test episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from metalab.data.augment import Jitter
from metalab.data.dataset import ClassDataset
from metalab.data.sampler import EpisodeSampler, TaskSource
from metalab.data.sequences import LabelCode, SequenceSampler
from metalab.data.sinusoid import SinusoidTasks
from metalab.utils.errors import MetalabError

VAL_STREAM = 0x7A1
TEST_STREAM = 0x7E57
OMNIGLOT_SPLITS = ("vinyals", "vinyals-trainval", "lake", "random")


@dataclass(frozen=True)
class TaskSpec:
    """What a learner must map: inputs of ``input_shape`` to ``output_dim`` outputs.

    ``labels``: how the labels are written where they are strings of characters (a
    :class:`~metalab.data.sequences.LabelCode`; ``output_dim`` is then its width, one softmax
    per character); ``None``: one output per class.
    """

    input_shape: tuple[int, ...]
    output_dim: int
    classification: bool
    labels: LabelCode | None = None


@dataclass(frozen=True)
class BenchmarkConfig:
    """Which benchmark and which episodes.

    Attributes:
        name: ``sinusoid``, ``omniglot`` (N-way K-shot episodes) or ``omniglot-online``
            (the sequence protocol of Santoro et al., 2016, "One-shot Learning with
            Memory-Augmented Neural Networks", ICML: each episode presents ``n_way``
            classes, ``n_query`` (default 10) instances of each, in random order, and the
            label of a step is shown at the next step; see
            :class:`~metalab.data.sequences.SequenceSampler`. Same splits as ``omniglot``,
            20x20 images as in the paper; ``k_shot`` is not used).
        data_dir: folder holding the Omniglot archives (Omniglot only).
        cache_dir: where decoded images are cached (default ``~/.cache/metalab``).
        split: Omniglot split: ``vinyals`` (train 1028 / val 172 / test 423 characters,
            x4 rotations), ``vinyals-trainval`` (train on all 1200 Vinyals training
            characters; validation then overlaps training), ``lake`` (background minus the
            validation alphabets / validation alphabets / evaluation) or ``random`` (characters
            split at random whatever their alphabet, 1100 / 100 / 423, x4 rotations: the sizes
            of Finn et al.'s MAML code release; see :mod:`metalab.data.omniglot`).
        n_way: classes per test (and validation) episode.
        k_shot: support examples per class at test time (per task for regression).
        n_query: query examples per class at test time; ``None``: 15 for Omniglot, 100
            for sinusoid; ``omniglot-online``: instances per class in a sequence, ``None``: 10.
        train_n_way, train_k_shot, train_n_query: the same for training episodes;
            ``None`` means as at test time (sinusoid: 10 training query points).
        seed: seed of the training stream.
        image_size: side of the (square) Omniglot images; ``None``: 28 for ``omniglot``,
            20 for ``omniglot-online``.
        env_workers: meta-RL on MuJoCo and Meta-World: step the environments in this many
            worker processes (0: in the training process); the episodes are the same.
        jitter_degrees, jitter_pixels: ``omniglot-online`` only: rotate every training image
            by a random angle in +-jitter_degrees and shift it by up to +-jitter_pixels per axis
            (Santoro et al.'s augmentation; the paper gives no magnitudes); 0: none.
        label_length, label_alphabet: ``omniglot-online`` only: ``label_length > 1`` labels
            every class of an episode with a random string of ``label_length`` characters over
            ``label_alphabet`` symbols (Santoro et al.'s 15-class episodes: 5 and 5, the
            default alphabet; :class:`~metalab.data.sequences.LabelCode`); 1: one-hot labels
            ``0..n_way-1`` (the alphabet is then not used).
    """

    name: str = "sinusoid"
    data_dir: str | None = None
    cache_dir: str | None = None
    split: str = "vinyals"
    n_way: int = 5
    k_shot: int = 5
    n_query: int | None = None
    train_n_way: int | None = None
    train_k_shot: int | None = None
    train_n_query: int | None = None
    seed: int = 0
    image_size: int | None = None
    env_workers: int = 0
    jitter_degrees: float = 0.0
    jitter_pixels: float = 0.0
    label_length: int = 1
    label_alphabet: int = 5

    def __post_init__(self) -> None:
        if Jitter(self.jitter_degrees, self.jitter_pixels) and self.name != "omniglot-online":
            raise MetalabError(f"jitter_degrees and jitter_pixels apply to omniglot-online's training images only, "
                               f"not to {self.name!r}: leave them at 0")
        code = self.label_code()
        if code is not None:
            if self.name != "omniglot-online":
                raise MetalabError(f"string labels (label_length={self.label_length}) apply to omniglot-online only, "
                                   f"not to {self.name!r}: leave label_length at 1")
            code.check_classes(max(self.n_way, self.train_n_way or self.n_way))

    def label_code(self) -> LabelCode | None:
        """The string code of ``label_length > 1``; ``None`` for one-hot labels."""
        if isinstance(self.label_length, bool) or not isinstance(self.label_length, int) or self.label_length < 1:
            raise MetalabError(f"label_length must be a positive integer (1: one-hot labels), got {self.label_length!r}")
        return LabelCode(self.label_length, self.label_alphabet) if self.label_length > 1 else None


@dataclass(frozen=True)
class Benchmark:
    """The three streams of a benchmark and what its learners map."""

    name: str
    spec: TaskSpec
    metric: str
    train: TaskSource
    val: TaskSource
    test: TaskSource


def _sinusoid(cfg: BenchmarkConfig, progress: bool) -> Benchmark:
    k_train = cfg.train_k_shot or cfg.k_shot
    q_train = cfg.train_n_query or 10
    q_test = cfg.n_query or 100
    return Benchmark(
        name="sinusoid",
        spec=TaskSpec(input_shape=(1,), output_dim=1, classification=False),
        metric="mse",
        train=SinusoidTasks(k_train, q_train, seed=cfg.seed),
        val=SinusoidTasks(cfg.k_shot, q_test, seed=VAL_STREAM),
        test=SinusoidTasks(cfg.k_shot, q_test, seed=TEST_STREAM),
    )


def _omniglot_splits(cfg: BenchmarkConfig, image_size: int, progress: bool) -> tuple[ClassDataset, ...]:
    """The train, validation and test classes of ``cfg.split`` at ``image_size`` pixels."""
    from metalab.data.omniglot import load_omniglot, omniglot_split

    if cfg.data_dir is None:
        raise MetalabError(
            f"the {cfg.name} benchmark needs the folder with images_background.zip and "
            "images_evaluation.zip: pass --data-dir (here: ../shared/data/omniglot)"
        )
    if cfg.split not in OMNIGLOT_SPLITS:
        raise MetalabError(f"unknown omniglot split {cfg.split!r}; choose one of {OMNIGLOT_SPLITS}")
    images = load_omniglot(Path(cfg.data_dir), cache_dir=cfg.cache_dir, image_size=image_size, progress=progress)
    if cfg.split == "lake":
        val_names = {n.rsplit("/", 1)[0] for n in omniglot_split(images, "vinyals-val").class_names}
        background = omniglot_split(images, "background")
        keep = [i for i, n in enumerate(background.class_names) if n not in val_names]
        train = background.subset(keep)
        val = background.subset([i for i, n in enumerate(background.class_names) if n in val_names])
        test = omniglot_split(images, "evaluation")
    elif cfg.split == "random":
        train, val, test = (omniglot_split(images, f"random-{part}") for part in ("train", "val", "test"))
    else:
        train = omniglot_split(images, "vinyals-train" if cfg.split == "vinyals" else "vinyals-trainval")
        val = omniglot_split(images, "vinyals-val")
        test = omniglot_split(images, "vinyals-test")
    return train, val, test


def _omniglot(cfg: BenchmarkConfig, progress: bool) -> Benchmark:
    train, val, test = _omniglot_splits(cfg, 28 if cfg.image_size is None else cfg.image_size, progress)
    q_test = cfg.n_query or 15
    n_train = cfg.train_n_way or cfg.n_way
    k_train = cfg.train_k_shot or cfg.k_shot
    return Benchmark(
        name="omniglot",
        spec=TaskSpec(input_shape=train.sample_shape, output_dim=cfg.n_way, classification=True),
        metric="accuracy",
        train=EpisodeSampler(train, n_train, k_train, cfg.train_n_query or q_test, seed=cfg.seed),
        val=EpisodeSampler(val, cfg.n_way, cfg.k_shot, q_test, seed=VAL_STREAM),
        test=EpisodeSampler(test, cfg.n_way, cfg.k_shot, q_test, seed=TEST_STREAM),
    )


def _omniglot_online(cfg: BenchmarkConfig, progress: bool) -> Benchmark:
    # Santoro et al. downscale the 105x105 characters to 20x20
    train, val, test = _omniglot_splits(cfg, 20 if cfg.image_size is None else cfg.image_size, progress)
    m_test = cfg.n_query or 10
    code = cfg.label_code()
    return Benchmark(
        name="omniglot-online",
        spec=TaskSpec(input_shape=train.sample_shape, output_dim=code.width if code else cfg.n_way,
                      classification=True, labels=code),
        metric="accuracy",
        train=SequenceSampler(train, cfg.train_n_way or cfg.n_way, cfg.train_n_query or m_test, seed=cfg.seed,
                              jitter=Jitter(cfg.jitter_degrees, cfg.jitter_pixels) or None, code=code),
        val=SequenceSampler(val, cfg.n_way, m_test, seed=VAL_STREAM, code=code),
        test=SequenceSampler(test, cfg.n_way, m_test, seed=TEST_STREAM, code=code),
    )


BENCHMARKS = {"sinusoid": _sinusoid, "omniglot": _omniglot, "omniglot-online": _omniglot_online}


def make_benchmark(cfg: BenchmarkConfig, progress: bool = False) -> Benchmark:
    """Build the train/val/test streams named by ``cfg``; ``progress`` shows data decoding."""
    try:
        factory = BENCHMARKS[cfg.name]
    except KeyError:
        raise MetalabError(
            f"unknown benchmark {cfg.name!r}; choose one of {sorted(BENCHMARKS)}"
        ) from None
    return factory(cfg, progress)
