"""Reader for the .arrow files written by the original (upstream) preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m3ae.data.prepare import SPLITS, Issues, RawExample
from m3ae.errors import DataError

UPSTREAM_ARROW_NAMES = {
    "vqa-rad": "vqa_vqa_rad",
    "slake": "vqa_slack",
    "vqa-med-2019": "vqa_medvqa_2019",
    "melinda": "cls_melinda",
    "roco": "roco",
    "medicat": "medicat",
    "roco-retrieval": "irtr_roco",
}


def _upstream_arrow(src: Path, dataset: str, split: str):
    import pyarrow as pa

    path = src / f"{UPSTREAM_ARROW_NAMES[dataset]}_{split}.arrow"
    if not path.exists():
        raise DataError(f"{path}: upstream arrow file not found (expected <src>/{path.name})")
    try:
        return path, pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except pa.ArrowInvalid as err:
        raise DataError(f"{path}: not a readable Arrow IPC file ({err})") from err


class _ArrowImage:
    """Lazy bytes of row ``row`` of a memory-mapped upstream ``image`` column."""

    def __init__(self, column, row: int) -> None:
        self.column, self.row = column, row

    def __call__(self) -> bytes:
        return self.column[self.row].as_py()


def _arrow_vqa(row: dict[str, Any], base: dict[str, Any], issues: Issues, label_column: str,
               seen: dict[int, str]) -> list[RawExample]:
    """A VQA arrow row (one image, its questions); ``seen``: label -> answer, filled in."""
    out = []
    for q, question in enumerate(row["questions"]):
        labels, names = row["answer_labels"][q], row["answers"][q]
        if len(labels) != 1:
            issues.bad(base["split"], "malformed_record", f"{base['where']}: question {q} has {len(labels)} answers")
            continue
        seen[labels[0]] = names[0]
        out.append(RawExample(**base, text=question, answer=names[0], label=labels[0],
                              answer_type=int(row["answer_type"][q]), question_id=int(row["question_id"][q])))
    return out


def _arrow_cls(row: dict[str, Any], base: dict[str, Any], issues: Issues, label_column: str,
               seen: dict[int, str]) -> list[RawExample]:
    """A MELINDA arrow row: label indices only, so the class names are "0", "1", ..."""
    out = []
    for c, caption in enumerate(row["caption"]):
        label = int(row[label_column][c])
        seen[label] = str(label)
        out.append(RawExample(**base, text=caption, label=label, label_name=str(label)))
    return out


def _arrow_captions(row: dict[str, Any], base: dict[str, Any], issues: Issues, label_column: str,
                    seen: dict[int, str]) -> list[RawExample]:
    return [RawExample(**base, text=caption) for caption in row["caption"]]


def _vqa_vocabulary(src: Path, seen: dict[int, str]) -> list[str]:
    """The answer list rebuilt from the stored (label, answer) pairs; every label must appear."""
    size = max(seen) + 1 if seen else 0
    missing = [i for i in range(size) if i not in seen]
    if missing:
        raise DataError(f"{src}: answer labels {missing[:5]} appear in no arrow row; cannot rebuild the answer list")
    return [seen[i] for i in range(size)]


def _cls_vocabulary(src: Path, seen: dict[int, str]) -> list[str]:
    return [str(i) for i in range(max(seen) + 1 if seen else 0)]


ARROW_READERS = {"vqa": (_arrow_vqa, _vqa_vocabulary), "cls": (_arrow_cls, _cls_vocabulary)}
"""Folder kind -> (row reader, vocabulary builder); caption folders otherwise (no vocabulary)."""


def read_upstream_arrows(
    src: Path, dataset: str, task: str, issues: Issues, label_column: str = "p_meth_label"
) -> tuple[dict[str, list[RawExample]], list[str] | None]:
    """The .arrow files written by the original preprocessing (spec §5.1/§5.3), one row per image.

    Returns (splits, vocabulary). For VQA the answer list is rebuilt from the stored
    (label, answer) pairs; MELINDA arrows hold only label indices, so class names are "0", "1", ...
    """
    read_row, vocabulary = ARROW_READERS.get(task, (_arrow_captions, None))
    splits: dict[str, list[RawExample]] = {s: [] for s in SPLITS}
    seen: dict[int, str] = {}  # label -> answer or class name
    for split in SPLITS:
        path, table = _upstream_arrow(src, dataset, split)
        images = table.column("image")  # memory-mapped: bytes are read one image at a time, on use
        text_columns = table.drop_columns(["image"])
        for r, row in enumerate(text_columns.to_pylist()):
            base = {"split": split, "image_id": str(row["image_id"]), "where": f"{path} row {r}",
                    "image_bytes": _ArrowImage(images, r)}
            splits[split].extend(read_row(row, base, issues, label_column, seen))
    return splits, (vocabulary(src, seen) if vocabulary is not None else None)
