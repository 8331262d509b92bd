"""Omniglot loading, caching, errors and splits, checked on the real archives."""

from __future__ import annotations

import pickle
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from metalab.data.omniglot import ARCHIVES, SPLITS, load_omniglot, omniglot_split
from metalab.utils.errors import MetalabError

# Written out here rather than imported, so a wrong constant in the module fails a test.
TEST_ALPHABETS = (
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)",
    "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG",
)
VAL_ALPHABETS = ("Hebrew", "Mkhedruli_(Georgian)", "Armenian", "Early_Aramaic", "Bengali")


def _names(dataset):
    return set(dataset.class_names)


def _cache_file(cache_dir: Path, image_size: int = 28) -> Path:
    (path,) = cache_dir.glob(f"omniglot-{image_size}-*.pt")
    return path


def _fingerprint(cache: Path) -> str:
    """The archive fingerprint in ``omniglot-{image_size}-{fingerprint}.pt``."""
    return cache.stem.split("-", 2)[2]


def _snapshot(path: Path) -> tuple[int, int, bytes]:
    """What changes if a file is rewritten: inode, modification time and content."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, path.read_bytes()


# ---------------------------------------------------------------------------- images


def test_counts_and_layout(omniglot_images):
    imgs = omniglot_images
    assert imgs.images.shape == (1623, 20, 28, 28) and imgs.images.dtype == torch.uint8
    assert len(imgs.alphabets) == len(imgs.characters) == len(imgs.char_ids) == 1623
    assert imgs.background.dtype == torch.bool and int(imgs.background.sum()) == 964
    assert len({a for a, bg in zip(imgs.alphabets, imgs.background.tolist()) if bg}) == 30
    assert len({a for a, bg in zip(imgs.alphabets, imgs.background.tolist()) if not bg}) == 20
    assert imgs.char_ids == tuple(range(1623))
    # global ids 0001..0964 are the background archive (Arcadian first, ULOG last)
    assert imgs.background[:964].all() and not imgs.background[964:].any()
    assert (imgs.alphabets[0], imgs.characters[0]) == ("Arcadian", "character01")
    assert (imgs.alphabets[-1], imgs.characters[-1]) == ("ULOG", "character26")
    # every one of the 20 drawings of every character is a real image, not padding
    assert (imgs.images.amax(dim=(2, 3)) > 100).all()


def test_pixels(omniglot_images):
    images = omniglot_images.images
    # strokes bright on a dark background: most pixels are exactly 0, corners nearly always
    assert (images == 0).float().mean() > 0.6
    assert (images[:, :, 0, 0] == 0).float().mean() > 0.999
    assert (images.amax(dim=(2, 3)) >= 250).float().mean() > 0.98
    assert int(images.max()) == 255
    assert 10 < images.float().mean() < 40
    greek07 = [i for i, (a, c) in enumerate(zip(omniglot_images.alphabets, omniglot_images.characters))
               if (a, c) == ("Greek", "character07")]
    assert len(greek07) == 1
    assert 3 < images[greek07[0], 0].float().mean() < 80


# ---------------------------------------------------------------------------- splits


@pytest.mark.parametrize(
    "split, characters",
    [("background", 964), ("evaluation", 659), ("vinyals-trainval", 1200),
     ("vinyals-train", 1028), ("vinyals-val", 172), ("vinyals-test", 423),
     ("random-train", 1100), ("random-val", 100), ("random-test", 423)],
)
def test_split_sizes(omniglot_images, split, characters):
    plain = omniglot_split(omniglot_images, split, rotations=False)
    rotated = omniglot_split(omniglot_images, split, rotations=True)
    assert plain.num_classes == characters and rotated.num_classes == 4 * characters
    default = omniglot_split(omniglot_images, split)
    assert default.num_classes == (rotated if split.startswith(("vinyals-", "random-")) else plain).num_classes
    assert plain.data.shape == (characters, 20, 1, 28, 28) and plain.data.dtype == torch.uint8
    assert len(set(rotated.class_ids)) == rotated.num_classes


def test_vinyals_test_is_the_published_list(omniglot_images):
    per_alphabet = Counter(a for a, bg in zip(omniglot_images.alphabets, omniglot_images.background.tolist())
                           if not bg and a in TEST_ALPHABETS)
    assert set(per_alphabet) == set(TEST_ALPHABETS)
    expected = {f"{a}/character{n:02d}" for a, count in per_alphabet.items() for n in range(1, count + 1)}
    expected |= {f"Gurmukhi/character{n}" for n in (42, 43, 44, 45)}
    test = _names(omniglot_split(omniglot_images, "vinyals-test", rotations=False))
    assert test == expected and len(test) == 423
    trainval = _names(omniglot_split(omniglot_images, "vinyals-trainval", rotations=False))
    assert "Gurmukhi/character41" in trainval and "Gurmukhi/character42" in test
    assert "Gurmukhi/character45" in test and "Gurmukhi/character46" not in test | trainval
    assert sum(a == "Gurmukhi" for a in omniglot_images.alphabets) == 45
    assert {"Angelic/character01", "Glagolitic/character45", "Greek/character07"} <= trainval


def test_vinyals_val_is_the_protonet_alphabets(omniglot_images):
    val = omniglot_split(omniglot_images, "vinyals-val", rotations=False)
    assert {name.split("/")[0] for name in val.class_names} == set(VAL_ALPHABETS)
    by_name = dict(zip((f"{a}/{c}" for a, c in zip(omniglot_images.alphabets, omniglot_images.characters)),
                       omniglot_images.background.tolist()))
    assert all(by_name[name] for name in val.class_names)  # all from images_background


@pytest.mark.parametrize("rotations", [False, True])
def test_vinyals_splits_partition(omniglot_images, rotations):
    split = {s: _names(omniglot_split(omniglot_images, s, rotations)) for s in SPLITS[2:]}
    assert not split["vinyals-train"] & split["vinyals-val"]
    assert not split["vinyals-trainval"] & split["vinyals-test"]
    assert split["vinyals-train"] | split["vinyals-val"] == split["vinyals-trainval"]
    assert len(split["vinyals-trainval"] | split["vinyals-test"]) == 1623 * (4 if rotations else 1)
    background = _names(omniglot_split(omniglot_images, "background", rotations))
    assert background <= split["vinyals-trainval"]
    if rotations:
        assert "Greek/character07/rot90" in split["vinyals-train"]
        assert {"Hebrew/character01/rot0", "Hebrew/character01/rot270"} <= split["vinyals-val"]


def test_random_split_partitions_the_characters_across_alphabets(omniglot_images):
    parts = {p: omniglot_split(omniglot_images, f"random-{p}", rotations=False) for p in ("train", "val", "test")}
    ids = {p: set(d.class_ids) for p, d in parts.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert ids["train"] | ids["val"] | ids["test"] == set(range(1623))
    # characters are drawn whatever their alphabet: the test set shares alphabets with training (the Vinyals
    # split holds whole alphabets out) and draws on both archives
    alphabets = {p: {n.split("/")[0] for n in d.class_names} for p, d in parts.items()}
    assert len(alphabets["test"]) >= 45 and len(alphabets["test"] - alphabets["train"]) == 0
    background = dict(zip(omniglot_images.char_ids, omniglot_images.background.tolist()))
    assert 100 < sum(background[i] for i in ids["test"]) < 323
    # fixed for good: RandomState(1)'s permutation of the character ids
    order = np.random.RandomState(1).permutation(1623)
    assert set(order[:1100].tolist()) == ids["train"] and set(order[1100:1200].tolist()) == ids["val"]
    rotated = omniglot_split(omniglot_images, "random-test")
    assert set(rotated.class_ids) == {4 * i + k for i in ids["test"] for k in range(4)}


def test_ids_names_and_rotation(omniglot_images):
    plain = omniglot_split(omniglot_images, "vinyals-train", rotations=False)
    rotated = omniglot_split(omniglot_images, "vinyals-train")
    c = plain.class_names.index("Greek/character07")
    char_id = plain.class_ids[c]
    assert omniglot_images.characters[char_id] == "character07"
    for k, deg in enumerate((0, 90, 180, 270)):
        r = rotated.class_names.index(f"Greek/character07/rot{deg}")
        assert r == 4 * c + k and rotated.class_ids[r] == 4 * char_id + k
        assert torch.equal(rotated.data[r], torch.rot90(plain.data[c], k, dims=(-2, -1)))
    rot0, rot90 = rotated.data[4 * c], rotated.data[4 * c + 1]
    assert not torch.equal(rot0, rot90) and torch.equal(rot90, torch.rot90(rot0, 1, dims=(-2, -1)))
    assert torch.equal(plain.data[c, :, 0], omniglot_images.images[char_id])
    lake = omniglot_split(omniglot_images, "evaluation", rotations=True)
    assert lake.class_names[:2] == ("Angelic/character01/rot0", "Angelic/character01/rot90")
    assert lake.class_ids[:2] == (4 * 964, 4 * 964 + 1)


def test_transform_gives_unit_floats(omniglot_images):
    split = omniglot_split(omniglot_images, "vinyals-test")
    batch = split.gather(torch.tensor([0, 5]), torch.tensor([[0, 1, 2], [3, 4, 19]]))
    assert batch.shape == (6, 1, 28, 28) and batch.dtype == torch.float32
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0 and float(batch.max()) > 0.9
    raw = split.data[0, 0]
    assert torch.allclose(split.transform(raw.clone()), raw.float() / 255)
    assert pickle.loads(pickle.dumps(split.transform)) is split.transform


def test_unknown_split(omniglot_images):
    with pytest.raises(MetalabError, match="vinyals-trainval"):
        omniglot_split(omniglot_images, "vinyals")


# ---------------------------------------------------------------------------- cache


def test_cache_is_reused(omniglot_dir, omniglot_cache, omniglot_images, capsys):
    cache = _cache_file(omniglot_cache)
    assert cache.stat().st_size > 1623 * 20 * 28 * 28
    before = _snapshot(cache)
    capsys.readouterr()
    again = load_omniglot(omniglot_dir, cache_dir=omniglot_cache, progress=True)
    assert "decoding Omniglot" not in capsys.readouterr().err  # no progress bar: nothing decoded
    assert torch.equal(again.images, omniglot_images.images)
    assert torch.equal(again.background, omniglot_images.background)
    assert (again.alphabets, again.characters, again.char_ids) == (
        omniglot_images.alphabets, omniglot_images.characters, omniglot_images.char_ids)
    assert _snapshot(cache) == before  # read, not rewritten
    assert list(omniglot_cache.glob("omniglot-28-*.pt")) == [cache]


# A decode at this size costs about as much as one at 28, so the tests below share as few as
# they can: one fresh decode of re-packed archives (module fixture) and one per damaged cache.
SMALL = 8


@pytest.fixture(scope="module")
def repacked(omniglot_dir, omniglot_cache, tmp_path_factory):
    """The real archives copied with a new zip comment (same drawings, other bytes), loaded at SMALL.

    The cache folder starts with a SMALL-size file named for the real archives' fingerprint: a
    copy of the 28-pixel cache, so a readable file whose fields do not fit SMALL.
    """
    base = tmp_path_factory.mktemp("repacked")
    root, cache_dir = base / "data", base / "cache"
    root.mkdir()
    cache_dir.mkdir()
    for name in ARCHIVES:
        shutil.copyfile(omniglot_dir / name, root / name)
    with zipfile.ZipFile(root / ARCHIVES[1], "a") as archive:
        archive.comment = b"re-packed"
    real = _cache_file(omniglot_cache)
    old = cache_dir / f"omniglot-{SMALL}-{_fingerprint(real)}.pt"
    shutil.copyfile(real, old)
    old_before = _snapshot(old)
    images = load_omniglot(root, cache_dir=cache_dir, image_size=SMALL)
    return {"root": root, "cache_dir": cache_dir, "old": old, "old_before": old_before, "images": images}


def test_changed_archive_gets_new_cache(repacked, omniglot_images, capsys):
    old, cache_dir, images = repacked["old"], repacked["cache_dir"], repacked["images"]
    (new,) = set(cache_dir.glob(f"omniglot-{SMALL}-*.pt")) - {old}  # next to the old file, not over it
    assert _fingerprint(new) != _fingerprint(old)
    assert _snapshot(old) == repacked["old_before"]
    assert images.images.shape == (1623, 20, SMALL, SMALL) and images.images.dtype == torch.uint8
    assert (images.images.amax(dim=(2, 3)) > 0).all() and 10 < images.images.float().mean() < 40  # drawings
    assert (images.alphabets, images.characters, images.char_ids) == (
        omniglot_images.alphabets, omniglot_images.characters, omniglot_images.char_ids)
    assert torch.equal(images.background, omniglot_images.background)
    # the new file serves the re-packed archives from now on
    before = _snapshot(new)
    capsys.readouterr()
    again = load_omniglot(repacked["root"], cache_dir=cache_dir, image_size=SMALL, progress=True)
    assert "decoding Omniglot" not in capsys.readouterr().err
    assert torch.equal(again.images, images.images) and _snapshot(new) == before


# One damage per way a cache can fail: a file torch.load rejects (truncated; garbage bytes and
# pickles that weights_only refuses take the same path) and a readable file with wrong fields
# (a complete 28-pixel cache under the SMALL name). Each recovery is a real decode.
@pytest.mark.parametrize("damage", ["truncated", "wrong-fields"])
def test_corrupt_cache_is_decoded_again(repacked, omniglot_dir, omniglot_cache, tmp_path, capsys, damage):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    if damage == "truncated":  # the re-packed archives' SMALL cache, cut in half
        root = repacked["root"]
        (good,) = set(repacked["cache_dir"].glob(f"omniglot-{SMALL}-*.pt")) - {repacked["old"]}
        bad = cache_dir / good.name
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    else:  # the real archives, whose SMALL name holds the 28-pixel cache
        root = omniglot_dir
        bad = cache_dir / repacked["old"].name
        shutil.copyfile(_cache_file(omniglot_cache), bad)
    damaged = bad.read_bytes()
    capsys.readouterr()
    recovered = load_omniglot(root, cache_dir=cache_dir, image_size=SMALL, progress=True)
    assert "decoding Omniglot" in capsys.readouterr().err
    fresh = repacked["images"]  # a fresh decode of the same drawings at the same size
    assert torch.equal(recovered.images, fresh.images)
    assert torch.equal(recovered.background, fresh.background)
    assert (recovered.alphabets, recovered.characters, recovered.char_ids) == (
        fresh.alphabets, fresh.characters, fresh.char_ids)
    # rewritten in place (no second file, no temporary left) and read back without decoding
    assert list(cache_dir.iterdir()) == [bad] and bad.read_bytes() != damaged
    before = _snapshot(bad)
    again = load_omniglot(root, cache_dir=cache_dir, image_size=SMALL, progress=True)
    assert "decoding Omniglot" not in capsys.readouterr().err
    assert torch.equal(again.images, fresh.images) and _snapshot(bad) == before


# ---------------------------------------------------------------------------- errors


def _data_dir(tmp_path: Path, omniglot_dir: Path, **replace: bytes | None) -> Path:
    """A data folder linking the real archives, with some replaced by bytes or left out (None)."""
    root = tmp_path / "data"
    root.mkdir()
    for name in ARCHIVES:
        key = name[len("images_"): -len(".zip")]
        if key not in replace:
            (root / name).symlink_to(omniglot_dir / name)
        elif replace[key] is not None:
            (root / name).write_bytes(replace[key])
    return root


def _zip_bytes(tmp_path: Path, members: dict[str, bytes]) -> bytes:
    path = tmp_path / "made.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path.read_bytes()


def _load_error(root: Path, tmp_path: Path) -> str:
    with pytest.raises(MetalabError) as info:
        load_omniglot(root, cache_dir=tmp_path / "cache")
    return str(info.value)


def test_missing_root(tmp_path):
    message = _load_error(tmp_path / "nowhere", tmp_path)
    assert str(tmp_path / "nowhere") in message and "images_background.zip" in message
    assert "--data-dir" in message


@pytest.mark.parametrize("which", ["background", "evaluation"])
def test_missing_archive(tmp_path, omniglot_dir, which):
    root = _data_dir(tmp_path, omniglot_dir, **{which: None})
    assert str(root / f"images_{which}.zip") in _load_error(root, tmp_path)


@pytest.mark.parametrize("which", ["background", "evaluation"])
def test_truncated_archive(tmp_path, omniglot_dir, which):
    head = (omniglot_dir / f"images_{which}.zip").read_bytes()[:100_000]
    root = _data_dir(tmp_path, omniglot_dir, **{which: head})
    message = _load_error(root, tmp_path)
    assert str(root / f"images_{which}.zip") in message and "zip" in message


def test_foreign_zip(tmp_path, omniglot_dir):
    foreign = _zip_bytes(tmp_path, {"omniglot/Greek/character01/0001_01.png": b"x", "README": b"hi"})
    root = _data_dir(tmp_path, omniglot_dir, background=foreign)
    message = _load_error(root, tmp_path)
    assert str(root / "images_background.zip") in message and "0 alphabets" in message


def test_missing_drawing_is_found_before_decoding(tmp_path, omniglot_dir):
    with zipfile.ZipFile(omniglot_dir / "images_evaluation.zip") as real:
        names = [n for n in real.namelist() if n.endswith(".png")]
    names.remove("images_evaluation/Tibetan/character29/1584_11.png")
    root = _data_dir(tmp_path, omniglot_dir, evaluation=_zip_bytes(tmp_path, dict.fromkeys(names, b"")))
    message = _load_error(root, tmp_path)
    assert str(root / "images_evaluation.zip") in message and "Tibetan/character29" in message


def test_damaged_image(tmp_path, omniglot_dir):
    with zipfile.ZipFile(omniglot_dir / "images_background.zip") as real:
        names = [n for n in real.namelist() if n.endswith(".png")]
    root = _data_dir(tmp_path, omniglot_dir, background=_zip_bytes(tmp_path, dict.fromkeys(names, b"")))
    message = _load_error(root, tmp_path)
    assert str(root / "images_background.zip") in message and "0001_01.png" in message
