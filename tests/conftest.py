"""Shared fixtures: the real Omniglot archives in ../shared, decoded once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # the workers share the cores: one torch thread each, and the same for the processes the tests start (tests that
    # exercise two threads ask for them, see two_threads); most tests are bound by one core's Python and small ops
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def omniglot_5w1s(omniglot_dir, omniglot_images, omniglot_cache):
    """Real Omniglot, Vinyals split, 5-way 1-shot with 5 queries per class (training and test)."""
    from metalab import BenchmarkConfig, make_benchmark

    return make_benchmark(BenchmarkConfig(
        "omniglot", data_dir=str(omniglot_dir), cache_dir=str(omniglot_cache), n_way=5, k_shot=1, n_query=5,
        train_n_way=5, train_k_shot=1, train_n_query=5))


@pytest.fixture
def two_threads():
    """torch on two intra-op threads for the test (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
