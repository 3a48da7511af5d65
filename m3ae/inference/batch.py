"""Batch VQA over a CSV: one question per row (columns image and question; relative image paths are
read from the CSV's folder), answers written to a CSV that repeats every input column and adds answer
and probability (`m3ae predict --input/--output`)."""
from __future__ import annotations

import csv
from pathlib import Path

from m3ae.errors import DataError, M3AEError

INPUT_COLUMNS = ("image", "question")


def read_questions(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """Read a batch CSV; relative image paths are resolved against the CSV's folder.

    Returns:
        (rows as dicts, the CSV's column names).

    Raises:
        DataError: naming the file and line of a missing column or an empty cell.
    """
    if not path.is_file():
        raise DataError(f"{path}: input CSV not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        missing = [c for c in INPUT_COLUMNS if c not in columns]
        if missing:
            have = ", ".join(columns) or "none"
            raise DataError(f"{path}:1: missing column(s) {', '.join(missing)} (have: {have})")
        rows = []
        for row in reader:
            line = reader.line_num
            for column in INPUT_COLUMNS:
                if not (row.get(column) or "").strip():
                    raise DataError(f"{path}:{line}: empty '{column}'")
            image = Path(row["image"].strip())
            row["_image_path"] = str(image if image.is_absolute() else path.parent / image)
            row["_line"] = str(line)
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no questions (only a header)")
    return rows, columns


def write_answers(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    """Write the input rows plus `answer` and `probability` columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out_columns = columns + [c for c in ("answer", "probability") if c not in columns]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=out_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)



def answer_csv(pipe, input_csv: str | Path, output_csv: str | Path, batch_size: int = 16,
               frame: int | None = None) -> int:
    """Answer every question of ``input_csv`` (columns image and question) with ``pipe`` and write
    ``output_csv``: every input column plus the top answer and its probability. Returns the row count.

    Raises:
        DataError: naming the CSV line of a bad row or an image that cannot be read.
    """
    from m3ae.inference.pipeline import to_rgb_image

    input_csv, output_csv = Path(input_csv), Path(output_csv)
    rows, columns = read_questions(input_csv)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        images = []
        for row in chunk:  # decode one by one so that an error names its CSV line
            try:
                images.append(to_rgb_image(row["_image_path"], frame))
            except M3AEError as err:
                raise DataError(f"{input_csv}:{row['_line']}: {err}") from None
        results = pipe.predict_batch(images, [r["question"] for r in chunk], top_k=1)
        for row, answers in zip(chunk, results):
            row["answer"] = answers[0]["answer"]
            row["probability"] = f"{answers[0]['probability']:.4f}"
    write_answers(output_csv, rows, columns)
    return len(rows)
