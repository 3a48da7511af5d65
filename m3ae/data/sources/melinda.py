"""MELINDA reader."""

from __future__ import annotations

import csv
from pathlib import Path

from m3ae.data.prepare import Issues, RawExample
from m3ae.data.sources.common import _require
from m3ae.errors import DataError

MELINDA_FILES = {"train": "train.csv", "val": "dev.csv", "test": "test.csv"}
MELINDA_LABEL_COLUMNS = ("i_meth", "p_meth", "i_meth_label", "p_meth_label")


def read_melinda(
    src: Path, protocol: str, seed: int, issues: Issues, label_column: str = "p_meth_label"
) -> dict[str, list[RawExample]]:
    """MELINDA: train/dev/test.csv (columns figure_file, caption, i_meth, p_meth, i_meth_label,
    p_meth_label) and melinda_images/; one example per row, label from ``label_column``."""
    if label_column not in MELINDA_LABEL_COLUMNS:
        raise DataError(f"--label-column must be one of {MELINDA_LABEL_COLUMNS} (got {label_column!r})")
    splits = {}
    for split, name in MELINDA_FILES.items():
        path = _require(src / name, "MELINDA csv")
        examples = []
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [
                c for c in ("figure_file", "caption", label_column) if c not in (reader.fieldnames or [])
            ]
            if missing:
                raise DataError(f"{path}:1: header lacks columns {missing}")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row or any(row.get(c) is None for c in ("figure_file", "caption", label_column)):
                    issues.bad(split, "malformed_line", f"{where}: wrong number of fields")
                    continue
                examples.append(
                    RawExample(
                        split=split,
                        image_id=row["figure_file"],
                        where=where,
                        image_path=src / "melinda_images" / row["figure_file"],
                        text=row["caption"],
                        label_name=row[label_column].strip(),
                    )
                )
        splits[split] = examples
    return splits
