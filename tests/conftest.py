"""Shared test set-up: offline only, tiny sizes, paths to the real data when it is present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the test suite may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real VQA-RAD / SLAKE releases live in ../shared/data next to the checkout (CI copies it there).
SHARED_DATA = Path(os.environ.get("M3AE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder with the real raw datasets; tests that need it skip with the reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found at {SHARED_DATA} (set M3AE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op torch thread per test: tiny models gain nothing from more, and on a busy 2-core
    machine OpenMP spin-waiting makes them several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
