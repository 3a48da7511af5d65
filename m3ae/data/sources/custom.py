"""Reader for user data: CSV or JSONL files with image paths and texts."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from m3ae.data.kinds import CAPTION_KINDS
from m3ae.data.prepare import SPLITS, Issues, RawExample
from m3ae.data.sources.common import read_jsonl
from m3ae.errors import DataError
from m3ae.guards import is_inside

CUSTOM_SUFFIXES = (".csv", ".jsonl")
CUSTOM_TASK_COLUMNS = {"vqa": ("question", "answer"), "cls": ("text", "label"), "pretrain": ("caption",)}


def _custom_records(path: Path, split: str, issues: Issues) -> list[tuple[str, dict[str, Any]]]:
    if path.suffix == ".jsonl":
        return read_jsonl(path, split, issues)
    records = []
    with path.open(newline="", encoding="utf-8-sig") as fh:  # Excel's "CSV UTF-8" starts with a BOM
        reader = csv.DictReader(fh)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row or None in row.values():
                issues.bad(split, "malformed_line", f"{where}: wrong number of fields")
                continue
            records.append((where, row))
    return records


def _custom_files(src: Path) -> dict[str, Path | None]:
    """A single file (with a ``split`` column) or a folder of {train,val,test}.{csv,jsonl}."""
    if src.is_file():
        if src.suffix not in CUSTOM_SUFFIXES:
            raise DataError(f"{src}: custom data must be .csv or .jsonl")
        return {"*": src}
    found = {}
    for split in SPLITS:
        hits = [src / f"{split}{suffix}" for suffix in CUSTOM_SUFFIXES if (src / f"{split}{suffix}").exists()]
        found[split] = hits[0] if hits else None
    if not any(found.values()):
        raise DataError(f"{src}: no train/val/test .csv or .jsonl files")
    return found


def custom_task(columns: set[str], task: str | None) -> str:
    """Which task a custom file describes, from its columns (``--task`` decides caption files)."""
    if {"question", "answer"} <= columns:
        return "vqa"
    if {"text", "label"} <= columns:
        return "cls"
    if "caption" in columns:
        return task if task in CAPTION_KINDS else "pretrain"
    raise DataError(
        f"custom data needs columns image + caption, image + question + answer, or image + text + label; "
        f"found {sorted(columns)}"
    )


def _custom_image_path(rec: dict[str, Any], path: Path, root: Path, allow_outside: bool,
                       where: str, split: str, issues: Issues) -> Path | None:
    """The record's image path (relative to its file's folder), or None when it is bad input:
    empty, or outside the source folder without ``--allow-outside-src`` (data files from
    someone else must not make us read arbitrary files such as /etc or ../../secrets)."""
    if not str(rec.get("image") or "").strip():
        issues.bad(split, "malformed_record", f"{where}: no image path")
        return None
    image_path = Path(str(rec["image"]).strip())
    image_path = image_path if image_path.is_absolute() else path.parent / image_path
    if not allow_outside and not is_inside(image_path, root):
        issues.bad(split, "outside_src", f"{where}: image {rec['image']!r} is outside the source folder "
                   f"{root}; pass --allow-outside-src to read it")
        return None
    return image_path


def _custom_question_ids(splits: dict[str, list[RawExample]]) -> None:
    """Integer ids stay as they are; string ids ("q0_0") become integers in order of first use,
    with the original kept in ``question_key`` (written to question_ids.json); in place."""
    examples = [ex for split in SPLITS for ex in splits[split]]
    if all(isinstance(ex.question_id, int) for ex in examples):
        return
    numbers: dict[Any, int] = {}
    for ex in examples:
        ex.question_key = str(ex.question_id)
        ex.question_id = numbers.setdefault(ex.question_key, len(numbers))


def _question_id(raw: Any, n: int) -> int | str:
    """A custom record's id: an int when it reads as one, else the trimmed string; ``n`` if empty."""
    text = str(raw if raw is not None else "").strip()
    if not text:
        return n
    try:
        return int(text)
    except ValueError:
        return text


def _custom_vqa(ex: RawExample, rec: dict[str, Any], n: int) -> None:
    ex.text, ex.answer = rec["question"], rec["answer"]
    ex.answer_type = rec.get("answer_type") or "OPEN"
    ex.question_id = _question_id(rec.get("question_id"), n)


def _custom_cls(ex: RawExample, rec: dict[str, Any], n: int) -> None:
    ex.text, ex.label_name = rec["text"], str(rec["label"]).strip()


def _custom_caption(ex: RawExample, rec: dict[str, Any], n: int) -> None:
    ex.text = rec["caption"]


CUSTOM_FIELDS = {"vqa": _custom_vqa, "cls": _custom_cls}
"""Folder kind -> fills a custom record's fields into its RawExample (captions otherwise)."""


def read_custom(
    src: Path, protocol: str, seed: int, issues: Issues, task: str | None = None, allow_outside_src: bool = False
) -> tuple[str, dict[str, list[RawExample]]]:
    """User data: CSV or JSONL with ``image`` plus caption / question+answer[+answer_type] / text+label.

    Image paths are relative to the file's folder (or absolute) and must lie inside the source
    folder unless ``allow_outside_src``. A single file needs a ``split`` column (train/val/test).
    Question ids may be integers or strings. Returns (task, splits).
    """
    root = src if src.is_dir() else src.parent
    splits: dict[str, list[RawExample]] = {s: [] for s in SPLITS}
    detected = None
    for file_split, path in _custom_files(src).items():
        if path is None:
            continue
        for n, (where, rec) in enumerate(
            _custom_records(path, "train" if file_split == "*" else file_split, issues)
        ):
            split = str(rec.get("split", "")).strip().lower() if file_split == "*" else file_split
            split = {"dev": "val", "valid": "val", "validation": "val"}.get(split, split)
            if split not in SPLITS:
                issues.bad(
                    "train", "malformed_record", f"{where}: split {rec.get('split')!r} is not train/val/test"
                )
                continue
            kind = custom_task(set(rec), task)
            if detected is not None and kind != detected:
                raise DataError(
                    f"{where}: columns describe a {kind} record but earlier records were {detected}"
                )
            detected = kind
            image_path = _custom_image_path(rec, path, root, allow_outside_src, where, split, issues)
            if image_path is None:
                continue
            ex = RawExample(
                split=split, image_id=str(rec["image"]).strip(), where=where, image_path=image_path
            )
            CUSTOM_FIELDS.get(kind, _custom_caption)(ex, rec, n)
            splits[split].append(ex)
    if detected is None:
        raise DataError(f"{src}: no records")
    _custom_question_ids(splits)
    return detected, splits
