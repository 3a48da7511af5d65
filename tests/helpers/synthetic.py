"""Tiny prepared folders for every task, built through `m3ae prepare`'s custom format
(8 train, 4 val, 4 test examples); shared by the end-to-end and the DDP tests."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
# the recipes' batch sizes are for real data; the test folders hold a few examples
TINY = ["--train.progress", "false", "--train.tensorboard", "false", "--train.batch_size", "4",
        "--train.per_device_batch_size", "2", "--train.log_every", "1"]
WORDS = "chest lung heart liver kidney brain spine bone left right mass fluid normal large small".split()



def _images(folder: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        arr = (rng.random((40, 40, 3)) * 255).astype("uint8")
        arr[: 10 + 2 * i, :, i % 3] = 255  # make images differ in a learnable way
        name = f"img{i}.png"
        Image.fromarray(arr).save(folder / name)
        names.append(name)
    return names


def _write(folder: Path, split: str, rows: list[dict]) -> None:
    with open(folder / f"{split}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _caption(i: int, n: int = 5) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))


def prepare(tmp: Path, task: str) -> Path:
    """A prepared folder for ``task`` with 8 train, 4 val and 4 test examples."""
    from m3ae.data import prepare_dataset

    raw = tmp / f"raw_{task}"
    raw.mkdir()
    names = _images(raw, 8)
    sizes = {"train": range(8), "val": range(4), "test": range(4, 8)}
    for split, idx in sizes.items():
        rows = []
        for i in idx:
            if task == "vqa":
                rows.append({"image": names[i], "question": f"is there a {WORDS[i]} here?",
                             "answer": ["yes", "no", "left", "right"][i % 4],
                             "answer_type": "CLOSED" if i % 2 == 0 else "OPEN", "question_id": 100 * i + len(rows)})
            elif task == "cls":
                rows.append({"image": names[i], "text": _caption(i), "label": ["ct", "mri", "xray"][i % 3]})
            else:
                rows.append({"image": names[i], "caption": _caption(i)})
        _write(raw, split, rows)
    out = tmp / f"data_{task}"
    prepare_dataset("custom", raw, out, task=task if task in ("pretrain", "irtr") else None)
    return out
