"""ROCO readers: radiology pre-training texts and the retrieval pools."""

from __future__ import annotations

import random
from pathlib import Path

from m3ae.data.prepare import SPLITS, Issues, RawExample, clean_text
from m3ae.data.sources.common import _require, read_jsonl

ROCO_POOL_SIZE = 2000
"""ROCO retrieval: image-caption pairs in the val and test pools."""


def _roco_dir(src: Path, split: str) -> Path:
    return src / split / "radiology"


def _roco_captions(src: Path, split: str, issues: Issues, lines: list[tuple[str, str]] | None = None):
    """(where, roco_id, caption) per well-formed captions.txt line (``ROCO_id<TAB>caption``)."""
    path = _require(_roco_dir(src, split) / "captions.txt", "ROCO captions.txt")
    if lines is None:
        lines = [
            (f"{path}:{n + 1}", line) for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"))
        ]
    for where, line in lines:
        if not line.strip():
            continue
        parts = line.strip().split("\t")
        if len(parts) != 2:
            issues.bad(split, "malformed_line", f"{where}: expected ROCO_id<TAB>caption")
            continue
        yield where, parts[0], parts[1]


def _roco_example(src: Path, split: str, roco_id: str, where: str, text: str) -> RawExample:
    return RawExample(
        split=split,
        image_id=f"{split}/{roco_id}.jpg",
        where=where,
        image_path=_roco_dir(src, split) / "images" / f"{roco_id}.jpg",
        text=text,
    )


def _duplicate_roco_id(seen: dict[str, str], roco_id: str, where: str, split: str, issues: Issues) -> bool:
    """True (and reported as bad input) when ``roco_id`` is already in ``seen`` (id -> first place)."""
    if roco_id in seen:
        issues.bad(split, "duplicate_id", f"{where}: duplicate image id {roco_id!r} (first at {seen[roco_id]})")
        return True
    return False


def _roco_figure_map(src: Path, issues: Issues) -> dict[str, str]:
    """``<PMC id>_<figure file>`` -> ROCO id, from every split's dlinks.txt."""
    mapping = {}
    for split in SPLITS:
        path = _require(_roco_dir(src, split) / "dlinks.txt", "ROCO dlinks.txt")
        for n, line in enumerate(path.read_text(encoding="utf-8").split("\n")):
            if not line.strip():
                continue
            parts = line.strip().split("\t")
            words = parts[1].split(" ") if len(parts) == 3 else []
            if len(words) < 3:
                issues.bad(
                    split, "malformed_line", f"{path}:{n + 1}: expected ROCO_id<TAB> wget URL<TAB>figure"
                )
                continue
            pmc = words[2].split("/")[-1].split(".")[0]  # .../PMC1234567.tar.gz -> PMC1234567
            mapping[f"{pmc}_{parts[-1]}"] = parts[0]
    return mapping


def read_roco(
    src: Path, protocol: str, seed: int, issues: Issues, references: Path | None = None
) -> dict[str, list[RawExample]]:
    """ROCO radiology for pre-training: texts = MedICaT inline references + the caption.

    ``references`` is the folder with ``roco_{train,val,test}_references.jsonl`` from the MedICaT
    release; default ``<src>/references``. Without it only captions are used (recorded in summary).
    """
    references = references or src / "references"
    splits: dict[str, list[RawExample]] = {s: [] for s in SPLITS}
    if references.is_dir():
        figure_map = _roco_figure_map(src, issues)
        for split in SPLITS:
            for where, sample in read_jsonl(references / f"roco_{split}_references.jsonl", split, issues):
                roco_id = figure_map.get(sample.get("roco_image_id"))
                if roco_id is None:
                    issues.bad(
                        split,
                        "unknown_reference",
                        f"{where}: roco_image_id {sample.get('roco_image_id')!r} not in any dlinks.txt",
                    )
                    continue
                for text in sample.get("gorc_references") or []:
                    splits[split].append(_roco_example(src, split, roco_id, where, text))
    for split in SPLITS:
        seen: dict[str, str] = {}
        for where, roco_id, caption in _roco_captions(src, split, issues):
            if _duplicate_roco_id(seen, roco_id, where, split, issues):
                continue
            seen[roco_id] = where
            splits[split].append(_roco_example(src, split, roco_id, where, caption))
    return splits


def read_roco_retrieval(
    src: Path, protocol: str, seed: int, issues: Issues, pool_size: int = ROCO_POOL_SIZE
) -> dict[str, list[RawExample]]:
    """ROCO captions for retrieval; val/test are pools of ``pool_size`` pairs.

    paper: one ``random.seed(seed)`` then train, val, test lines shuffled in turn (so the pools depend
    on the train file, as upstream). clean: each split shuffled by its own ``Random(seed)``.
    Lines after a pool is full are not read at all (upstream stops there).
    """
    if protocol == "paper":
        random.seed(seed)
    splits: dict[str, list[RawExample]] = {}
    for split in SPLITS:
        path = _require(_roco_dir(src, split) / "captions.txt", "ROCO captions.txt")
        raw = path.read_text(encoding="utf-8").strip().split("\n")
        lines = [(f"{path}:{n + 1}", line) for n, line in enumerate(raw)]
        (random if protocol == "paper" else random.Random(seed)).shuffle(lines)
        examples, seen = [], {}
        for where, roco_id, caption in _roco_captions(src, split, issues, lines):
            if _duplicate_roco_id(seen, roco_id, where, split, issues):
                continue
            words = len(clean_text(caption).split())
            if words <= 1:
                issues.bad(
                    split, "empty_text" if words == 0 else "one_word_text", f"{where}: caption too short"
                )
                continue
            if words < 3:
                issues.filter(split, "short_text")  # upstream drops it before counting towards the pool
                continue
            seen[roco_id] = where
            examples.append(_roco_example(src, split, roco_id, where, caption))
            if split != "train" and len(examples) == pool_size:
                break
        splits[split] = examples
    return splits
