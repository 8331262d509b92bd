"""Omniglot: decode the official archives once, cache them, and cut the standard splits.

Omniglot (Lake, Salakhutdinov & Tenenbaum, 2015, "Human-level concept learning through
probabilistic program induction", Science 350) holds 1623 handwritten characters from 50
alphabets, each drawn by 20 people. ``images_background.zip`` (30 alphabets, 964
characters) and ``images_evaluation.zip`` (20 alphabets, 659 characters) are read in place
with :mod:`zipfile`; the decoded images are cached as one tensor file per image size and
archive fingerprint.

Splits:

- ``background`` / ``evaluation``: Lake et al.'s split, one archive each.
- ``vinyals-*``: the split of Vinyals et al. (2016, "Matching Networks for One Shot
  Learning", NeurIPS), used by Prototypical, Relation networks and torchmeta. Test is 423
  characters of the evaluation archive (Gurmukhi character42-45 and all of Kannada, Keble,
  Malayalam, Manipuri, Mongolian, Old_Church_Slavonic_(Cyrillic), Oriya, Sylheti,
  Syriac_(Serto), Tengwar, Tibetan and ULOG); trainval is the other 1200. Validation is
  carved out of trainval as in the Prototypical Networks code release (Snell et al., 2017):
  the background alphabets Hebrew, Mkhedruli_(Georgian), Armenian, Early_Aramaic and Bengali
  (172 characters); train is the remaining 1028. Each character gives 4 classes rotated by
  0, 90, 180 and 270 degrees.
- ``random-*``: the characters split at random, whatever their alphabet: 1100 train, 100
  validation and 423 test characters, x4 rotations. These are the sizes of Finn et al.'s MAML
  code release (2017), which shuffles the character folders with ``random.seed(1)`` (its
  permutation depends on the directory listing and cannot be rebuilt); Santoro et al. (2016)
  give only "1200 training, 423 test classes". Test characters then come from alphabets seen in
  training, unlike the Vinyals split. The permutation here is ``RandomState(1)`` over the
  character ids, fixed for good (numpy's legacy generator never changes its stream).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from tqdm import tqdm

from metalab.data.dataset import ClassDataset
from metalab.utils.errors import MetalabError
from metalab.utils.io import atomic_torch_save

ARCHIVES = ("images_background.zip", "images_evaluation.zip")
SPLITS = ("background", "evaluation", "vinyals-train", "vinyals-val", "vinyals-trainval", "vinyals-test",
          "random-train", "random-val", "random-test")

# (alphabets, characters) of each archive in the official release.
_EXPECTED = {"images_background.zip": (30, 964), "images_evaluation.zip": (20, 659)}
_DRAWERS = 20
_NUM_CHARACTERS = 1623
_VINYALS_TEST_ALPHABETS = (
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)",
    "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG",
)
_VINYALS_TEST_EXTRA = tuple(f"Gurmukhi/character{n}" for n in (42, 43, 44, 45))
_VINYALS_VAL_ALPHABETS = ("Hebrew", "Mkhedruli_(Georgian)", "Armenian", "Early_Aramaic", "Bengali")
_RANDOM_SIZES = (1100, 100, 423)  # train, validation, test characters of the random split
_RANDOM_SEED = 1


@dataclass(frozen=True)
class OmniglotImages:
    """All 1623 characters, ordered by global id.

    Attributes:
        images: ``(1623, 20, S, S)`` uint8, strokes bright (255) on a 0 background;
            ``images[c, d]`` is drawer ``d + 1`` of character ``c``.
        alphabets: alphabet of each character, e.g. ``"Greek"``.
        characters: folder of each character within its alphabet, e.g. ``"character07"``.
        char_ids: 0-based global id (``IIII - 1`` of ``IIII_DD.png``), ``0..1622``.
        background: ``(1623,)`` bool, True for characters of ``images_background.zip``.
    """

    images: Tensor
    alphabets: tuple[str, ...]
    characters: tuple[str, ...]
    char_ids: tuple[int, ...]
    background: Tensor


def _fix_hint(root: Path) -> str:
    return f"put the official {ARCHIVES[0]} and {ARCHIVES[1]} of Omniglot in {root} (pass --data-dir)"


def _scan(archive: zipfile.ZipFile, path: Path, root: Path) -> dict[int, tuple[str, str, list[str]]]:
    """Map each global id (1-based) to ``(alphabet, character, members by drawer)``, checking counts."""
    prefix = path.name[: -len(".zip")]
    pattern = re.compile(rf"{prefix}/([^/]+)/(character\d+)/(\d{{4}})_(\d{{2}})\.png")
    found: dict[tuple[str, str], dict[int, dict[int, str]]] = defaultdict(lambda: defaultdict(dict))
    for name in archive.namelist():
        match = pattern.fullmatch(name)
        if match:
            alphabet, character, char_id, drawer = match.groups()
            found[alphabet, character][int(char_id)][int(drawer)] = name
    n_alphabets, n_characters = _EXPECTED[path.name]
    problem = None
    if len({a for a, _ in found}) != n_alphabets or len(found) != n_characters:
        problem = (f"found {len({a for a, _ in found})} alphabets / {len(found)} characters under "
                   f"{prefix}/<Alphabet>/characterNN/IIII_DD.png, expected {n_alphabets} / {n_characters}")
    else:
        drawers = list(range(1, _DRAWERS + 1))
        bad = [f"{a}/{c}" for (a, c), ids in found.items()
               if len(ids) != 1 or any(sorted(d) != drawers for d in ids.values())]
        if bad:
            problem = f"{bad[0]} (and {len(bad) - 1} more) does not hold drawings 01..20 of one character id"
    if problem:
        raise MetalabError(f"{path} is not Omniglot's {path.name}: {problem}; {_fix_hint(root)}")
    return {char_id: (a, c, [drawers[d] for d in range(1, _DRAWERS + 1)])
            for (a, c), ids in found.items() for char_id, drawers in ids.items()}


def _decode(png: bytes, image_size: int) -> np.ndarray:
    """One 105x105 PNG to an inverted ``(S, S)`` uint8 array (strokes 255)."""
    image = ImageOps.invert(Image.open(io.BytesIO(png)).convert("L"))
    return np.asarray(image.resize((image_size, image_size), Image.Resampling.LANCZOS))


def _decode_archives(paths: list[Path], root: Path, image_size: int, progress: bool) -> dict:
    """Read both archives, check their layout first, then decode every image."""
    archives, entries = [], {}
    try:
        for path in paths:
            try:
                archives.append(zipfile.ZipFile(path))
            except (zipfile.BadZipFile, OSError) as err:
                raise MetalabError(
                    f"{path} is not a readable zip archive ({err}); {_fix_hint(root)}"
                ) from err
            entries.update({i: (len(archives) - 1, *v) for i, v in _scan(archives[-1], path, root).items()})
        if sorted(entries) != list(range(1, _NUM_CHARACTERS + 1)):
            raise MetalabError(f"the character ids IIII in {paths[0]} and {paths[1]} are not 0001..1623 "
                               f"each once; {_fix_hint(root)}")
        images = np.empty((_NUM_CHARACTERS, _DRAWERS, image_size, image_size), dtype=np.uint8)
        for index in tqdm(range(_NUM_CHARACTERS), desc="decoding Omniglot", disable=not progress):
            which, _, _, members = entries[index + 1]
            for drawer, member in enumerate(members):
                try:
                    images[index, drawer] = _decode(archives[which].read(member), image_size)
                except Exception as err:  # zlib, CRC or PIL errors: the archive is damaged
                    raise MetalabError(f"cannot decode {member} in {paths[which]} ({err}); "
                                       f"{_fix_hint(root)}") from err
    finally:
        for archive in archives:
            archive.close()
    order = [entries[i + 1] for i in range(_NUM_CHARACTERS)]
    return {"images": torch.from_numpy(images), "alphabets": [e[1] for e in order],
            "characters": [e[2] for e in order], "char_ids": list(range(_NUM_CHARACTERS)),
            "background": torch.tensor([e[0] == 0 for e in order])}


def _from_fields(fields: object, image_size: int) -> OmniglotImages | None:
    """The cached fields as OmniglotImages, or None if they are not a complete cache."""
    try:
        images = fields["images"]
        shape = (_NUM_CHARACTERS, _DRAWERS, image_size, image_size)
        if images.dtype != torch.uint8 or tuple(images.shape) != shape:
            return None
        result = OmniglotImages(images, tuple(fields["alphabets"]), tuple(fields["characters"]),
                                tuple(int(i) for i in fields["char_ids"]), fields["background"].bool())
    except (TypeError, KeyError, AttributeError, ValueError):
        return None
    lengths = {len(result.alphabets), len(result.characters), len(result.char_ids)}
    return result if lengths | {result.background.numel()} == {_NUM_CHARACTERS} else None


def load_omniglot(
    root: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    image_size: int = 28,
    progress: bool = False,
) -> OmniglotImages:
    """Load all of Omniglot from the official archives, decoding once per image size.

    Args:
        root: folder holding ``images_background.zip`` and ``images_evaluation.zip``.
        cache_dir: where ``omniglot-{image_size}-{fingerprint}.pt`` is kept; default
            ``~/.cache/metalab``. The fingerprint hashes the archives' bytes, so a changed
            archive is decoded again; an unreadable cache file is decoded again too.
        image_size: side ``S`` of the square images (LANCZOS-resized from 105).
        progress: show a progress bar while decoding.

    Returns:
        OmniglotImages with ``images`` of shape ``(1623, 20, S, S)`` uint8.

    Raises:
        MetalabError: the folder or an archive is missing, unreadable or not Omniglot's.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise MetalabError(f"image_size must be a positive int, got {image_size!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MetalabError(f"Omniglot folder {root} does not exist; {_fix_hint(root)}")
    paths = [root / name for name in ARCHIVES]
    for path in paths:
        if not path.is_file():
            raise MetalabError(f"{path} is missing; {_fix_hint(root)}")
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else Path.home() / ".cache" / "metalab"
    cache = cache_dir / f"omniglot-{image_size}-{digest.hexdigest()[:16]}.pt"
    if cache.is_file():
        try:
            cached = _from_fields(torch.load(cache, weights_only=True), image_size)
        except Exception:  # any unreadable file is simply decoded again
            cached = None
        if cached is not None:
            return cached
    fields = _decode_archives(paths, root, image_size, progress)
    try:
        atomic_torch_save(fields, cache)
    except OSError as err:
        raise MetalabError(
            f"cannot write the Omniglot cache {cache} ({err}); pass a writable cache_dir"
        ) from err
    return _from_fields(fields, image_size)


def _to_float(batch: Tensor) -> Tensor:
    """uint8 ``(n, 1, S, S)`` to float32 in [0, 1]."""
    return batch.to(torch.float32) / 255.0


def _random_membership(char_ids: list[int]) -> dict[str, list[bool]]:
    """Membership of each character in ``random-train`` / ``-val`` / ``-test``.

    The character ids (0..1622) are permuted by ``RandomState(1)``; the first 1100 train, the
    next 100 validate, the last 423 test.
    """
    part = np.empty(_NUM_CHARACTERS, dtype=np.int64)
    part[np.random.RandomState(_RANDOM_SEED).permutation(_NUM_CHARACTERS)] = np.repeat(np.arange(3), _RANDOM_SIZES)
    return {f"random-{name}": [int(part[c]) == k for c in char_ids] for k, name in enumerate(("train", "val", "test"))}


def omniglot_split(images: OmniglotImages, split: str, rotations: bool | None = None) -> ClassDataset:
    """The classes of one split as a ClassDataset.

    Args:
        images: the output of :func:`load_omniglot`, ``images`` ``(1623, 20, S, S)``.
        split: one of ``SPLITS``.
        rotations: 4 classes per character (rotated by 0/90/180/270 degrees); default True
            for the ``vinyals-*`` and ``random-*`` splits and False for ``background``/``evaluation``.

    Returns:
        ClassDataset with ``data`` ``(C, 20, 1, S, S)`` uint8 in character-id order (the four
        rotations of a character adjacent), ``class_ids`` the character id or
        ``4 * char_id + k`` for rotation ``k``, names ``"Alphabet/characterNN[/rot<deg>]"``,
        and a ``transform`` to float32 in [0, 1].
    """
    if split not in SPLITS:
        raise MetalabError(f"unknown Omniglot split {split!r}; choose one of {', '.join(SPLITS)}")
    if rotations is None:
        rotations = split.startswith(("vinyals-", "random-"))
    names = [f"{a}/{c}" for a, c in zip(images.alphabets, images.characters)]
    background = images.background.tolist()
    test = [not bg and (a in _VINYALS_TEST_ALPHABETS or n in _VINYALS_TEST_EXTRA)
            for bg, a, n in zip(background, images.alphabets, names)]
    val = [bg and a in _VINYALS_VAL_ALPHABETS for bg, a in zip(background, images.alphabets)]
    member = {"background": background, "evaluation": [not bg for bg in background],
              "vinyals-test": test, "vinyals-trainval": [not t for t in test], "vinyals-val": val,
              "vinyals-train": [not t and not v for t, v in zip(test, val)],
              **_random_membership(images.char_ids)}[split]
    keep = [i for i, m in enumerate(member) if m]
    data = images.images[torch.tensor(keep, dtype=torch.int64)].unsqueeze(2)
    ids = [images.char_ids[i] for i in keep]
    names = [names[i] for i in keep]
    if rotations:
        data = torch.stack([torch.rot90(data, k, dims=(-2, -1)) for k in range(4)], dim=1).flatten(0, 1)
        ids = [4 * i + k for i in ids for k in range(4)]
        names = [f"{n}/rot{90 * k}" for n in names for k in range(4)]
    return ClassDataset(data=data, class_ids=tuple(ids), class_names=tuple(names), transform=_to_float)
