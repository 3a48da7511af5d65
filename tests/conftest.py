"""Shared test set-up: offline only, tiny sizes, paths to the real data when it is present."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Nothing in the test suite may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Training and inference set a process-wide malloc policy (m3ae.allocator); the suite runs hundreds
# of them in one process, so it keeps glibc's own (the policies are tested in subprocesses).
os.environ.setdefault("M3AE_MALLOC", "system")
# Measured choices (train.memory: auto) are cached per machine; the suite keeps its own cache.
os.environ.setdefault("M3AE_CACHE_DIR", tempfile.mkdtemp(prefix="m3ae-test-cache-"))

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real VQA-RAD / SLAKE releases live in ../shared/data next to the checkout (CI copies it there).
SHARED_DATA = Path(os.environ.get("M3AE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder with the real raw datasets; tests that need it skip with the reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found at {SHARED_DATA} (set M3AE_SHARED_DATA)")
    return SHARED_DATA


BUNDLED_VQA_RAD = REPO_ROOT / "data" / "vqa_rad"
"""VQA-RAD ships with the repository (images shrunk to at most 384 px, same JSON files)."""


@pytest.fixture(scope="session")
def vqa_rad_data() -> Path:
    """The raw VQA-RAD release: the real-data folder's copy when there is one, else the bundled one,
    so that a fresh clone without ../shared runs every VQA-RAD test."""
    shared = SHARED_DATA / "vqa_rad"
    return shared if shared.is_dir() else BUNDLED_VQA_RAD


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op torch thread per test: tiny models gain nothing from more, and on a busy 2-core
    machine OpenMP spin-waiting makes them several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ shared fixtures (tiny sizes)
B, L_T = 4, 8
"""Batch size and text length of the synthetic batches."""


def _make_tiny(heads=("mlm", "mim", "itm"), num_answers: int = 5, num_classes: int = 3, seed: int = 0,
               dropout: float | None = None):
    import dataclasses

    import torch

    from m3ae.models import M3AE, ModelConfig

    cfg = ModelConfig.from_name("m3ae-tiny").with_heads(list(heads), num_answers, num_classes)
    if dropout is not None:
        cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, dropout=dropout),
                                  fusion=dataclasses.replace(cfg.fusion, dropout=dropout))
    torch.manual_seed(seed)
    return M3AE(cfg)


def _task_batch(task: str, model, seed: int = 0, false_texts: int = 2) -> dict:
    """A batch with every key the task reads, for the model's sizes (seeded)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    size, n = model.config.vision.image_size, model.config.vision.num_patches
    ids = torch.randint(3, 1000, (B, L_T), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2  # <s> ... </s>
    mask = torch.ones(B, L_T, dtype=torch.long)
    mask[0, -2:] = 0
    pixels = torch.randn(B, 3, size, size, generator=g)
    batch = {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}
    if task == "pretrain":
        labels = torch.full((B, L_T), -100)
        labels[:, 2] = ids[:, 2]
        mlm_ids = ids.clone()
        mlm_ids[:, 2] = 50264  # <mask>
        batch.update(mlm_input_ids=mlm_ids, mlm_labels=labels, image_noise=torch.rand(B, n, generator=g),
                     itm_labels=torch.tensor([1, 0, 1, 0]),
                     itm_pixel_values=torch.randn(B, 3, size, size, generator=g),
                     itm_noise=torch.rand(B, 2, generator=g))
    elif task == "vqa":
        batch["vqa_targets"] = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 4]), 5).float()
    elif task == "cls":
        batch["labels"] = torch.tensor([0, 1, 2, 0])
    elif task == "irtr":  # 1 true + `false_texts` other captions per image
        k = 1 + false_texts
        other = torch.randint(3, 1000, (B, k, L_T), generator=g)
        other[:, 0] = ids
        batch.update(input_ids=other, attention_mask=mask[:, None].repeat(1, k, 1))
    return batch


@pytest.fixture
def tiny_model():
    """Factory: ``tiny_model(heads, num_answers=5, num_classes=3, seed=0, dropout=None)`` -> M3AE."""
    return _make_tiny


@pytest.fixture
def task_batch():
    """Factory: ``task_batch(task, model, seed=0)`` -> a synthetic batch with the task's keys."""
    return _task_batch


@pytest.fixture(scope="session")
def tokenizer():
    """The packaged RoBERTa tokenizer (offline)."""
    from m3ae.data import load_tokenizer

    return load_tokenizer()


@pytest.fixture
def rgb_images():
    """Four distinct 40x40 RGB PIL images (seeded noise with a bright band of growing height)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(4):
        arr = (rng.random((40, 40, 3)) * 255).astype("uint8")
        arr[: 10 + 5 * i, :, i % 3] = 255
        out.append(Image.fromarray(arr))
    return out
