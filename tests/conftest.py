"""Shared fixtures: the real Omniglot archives in ../shared, decoded once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def omniglot_root() -> Path | None:
    """Where the real archives are: $METALAB_OMNIGLOT, else ../shared/data/omniglot."""
    env = os.environ.get("METALAB_OMNIGLOT")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "omniglot")
    for path in candidates:
        if (path / "images_background.zip").is_file() and (path / "images_evaluation.zip").is_file():
            return path
    return None


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    root = omniglot_root()
    if root is None:
        pytest.skip("real Omniglot archives not found (set METALAB_OMNIGLOT or put them in ../shared/data/omniglot)")
    return root


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("omniglot-cache")


@pytest.fixture(scope="session")
def omniglot_images(omniglot_dir, omniglot_cache):
    from metalab.data.omniglot import load_omniglot

    return load_omniglot(omniglot_dir, cache_dir=omniglot_cache)
