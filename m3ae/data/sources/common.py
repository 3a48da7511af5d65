"""Helpers shared by the source readers: required files, JSON lists and lines, VQA records,
held-out splits by image, dropped empty answers."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from m3ae.data.prepare import Issues, RawExample
from m3ae.errors import DataError


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    return path


def read_json_list(path: Path) -> list[Any]:
    """A JSON file holding a list; a syntax error names the file and line."""
    _require(path, "annotation file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from err
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _record_fields(record: Any, where: str, fields: tuple[str, ...], split: str, issues: Issues) -> bool:
    if not isinstance(record, dict) or any(f not in record for f in fields):
        missing = [f for f in fields if not isinstance(record, dict) or f not in record]
        issues.bad(split, "malformed_record", f"{where}: malformed record, missing {missing}")
        return False
    return True


def _vqa_examples(
    path: Path, split: str, image_root: Path, name_key: str, issues: Issues, keep=lambda r: True,
    category_key: str | None = None, image_keys: dict[str, str] | None = None,
) -> list[RawExample]:
    """VQA records of one JSON file. ``category_key`` names the record's question category,
    ``image_keys`` maps record fields that describe the image to their metadata names."""
    examples = []
    for i, rec in enumerate(read_json_list(path)):
        where = f"{path} record {i}"
        if not _record_fields(
            rec, where, (name_key, "qid", "question", "answer", "answer_type"), split, issues
        ):
            continue
        if not keep(rec):
            issues.filter(split, "not_english")
            continue
        meta = {name: str(rec[key]).strip() for key, name in (image_keys or {}).items()
                if str(rec.get(key) or "").strip()}
        examples.append(
            RawExample(
                split=split,
                image_id=str(rec[name_key]),
                where=where,
                image_path=image_root / str(rec[name_key]),
                text=rec["question"],
                answer=rec["answer"],
                answer_type=rec["answer_type"],
                question_id=int(rec["qid"]),
                category=str(rec[category_key]).strip() if category_key and rec.get(category_key) else None,
                image_meta=meta or None,
            )
        )
    return examples


def hold_out_by_image(examples: list[RawExample], fraction: float, seed: int) -> tuple[list, list]:
    """Split examples into (kept, held out) so that no image is on both sides; seeded."""
    images = sorted({ex.image_id for ex in examples})
    rng = random.Random(seed)
    rng.shuffle(images)
    held = set(images[: max(1, round(fraction * len(images)))])
    kept = [ex for ex in examples if ex.image_id not in held]
    val = [ex for ex in examples if ex.image_id in held]
    for ex in val:
        ex.split = "val"
    return kept, val


def _drop_empty_answers(examples: list[RawExample], issues: Issues) -> list[RawExample]:
    """The examples whose answer is not blank; each blank one is a known quirk (counted, said once)."""
    kept = []
    for ex in examples:
        if str(ex.answer).strip():
            kept.append(ex)
        else:
            issues.known_quirk(ex.split, "empty_answer",
                               f"{ex.where}: empty answer, dropped (a known quirk of the official "
                               "release; the clean protocol has no empty class)")
    return kept


def read_jsonl(path: Path, split: str, issues: Issues) -> list[tuple[str, dict[str, Any]]]:
    """(where, object) for each non-empty line of a JSON-lines file; bad lines go through ``issues``."""
    out = []
    # utf-8-sig: a byte-order mark (some Windows editors write one) is not part of the first line
    for n, line in enumerate(_require(path, "JSON-lines file").read_text(encoding="utf-8-sig").split("\n")):
        if not line.strip():
            continue
        where = f"{path}:{n + 1}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            issues.bad(split, "malformed_line", f"{where}: malformed JSON ({err.msg})")
            continue
        if not isinstance(obj, dict):
            issues.bad(split, "malformed_line", f"{where}: expected a JSON object")
            continue
        out.append((where, obj))
    return out
