"""ImageCLEF VQA-Med 2019 reader (the original code's layout and the organisers')."""

from __future__ import annotations

from pathlib import Path

from m3ae.data.prepare import SPLITS, Issues, RawExample
from m3ae.data.sources.common import _require
from m3ae.errors import DataError

MEDVQA_CATEGORIES = ("Modality", "Organ", "Plane")  # Abnormality (C4) excluded, as upstream
MEDVQA_ALL_CATEGORIES = ("Modality", "Plane", "Organ", "Abnormality")  # the organisers' C1..C4
MEDVQA_RELEASE_SPLITS = {"train": "train", "val": "val"}
"""Split -> the tag of the organisers' file names (``C1_Modality_train.txt``, ``Train_images/``)."""
MEDVQA_TEST_QUESTIONS = "VQAMed2019_Test_Questions_w_Ref_Answers.txt"
MEDVQA_TEST_IMAGES = "VQAMed2019_Test_Images"
MEDVQA_NO_TEST_IMAGES = "test_images_not_released"
"""Filter reason: the organisers never released the 500 test images publicly, only the questions."""


def medvqa_categories(categories: str | None) -> tuple[str, ...]:
    """``--categories``: None -> upstream's Modality, Organ, Plane; "all" -> the four; else a
    comma-separated list of names (any case)."""
    if not categories:
        return MEDVQA_CATEGORIES
    if categories.strip().lower() == "all":
        return MEDVQA_ALL_CATEGORIES
    known = {c.lower(): c for c in MEDVQA_ALL_CATEGORIES}
    names = [c.strip().lower() for c in categories.split(",") if c.strip()]
    unknown = [c for c in names if c not in known]
    if unknown or not names:
        raise DataError(f"--categories: unknown {unknown or categories!r}; expected 'all' or some of "
                        f"{', '.join(MEDVQA_ALL_CATEGORIES)}")
    return tuple(known[c] for c in names)


def _medvqa_lines(path: Path, split: str, category: str | None, issues: Issues):
    """(where, image id, category, question, answer) per line of a VQA-Med text file: lines are
    ``image_id|question|answer`` in per-category files and ``image_id|category|question|answer``
    in the test file (``category`` None)."""
    fields = 3 if category else 4
    text = path.read_text(encoding="utf-8").strip()
    for n, line in enumerate(text.split("\n") if text else []):
        where, parts = f"{path}:{n + 1}", line.rstrip("\r").split("|")
        if len(parts) != fields:
            shape = "image_id|question|answer" if category else "image_id|category|question|answer"
            issues.bad(split, "malformed_line", f"{where}: expected {shape}, got {line!r}")
            continue
        if category:
            yield where, parts[0], category, parts[1], parts[2]
        else:
            yield where, parts[0], parts[1].strip().capitalize(), parts[2], parts[3]


def _medvqa_original(src: Path, split: str, chosen: tuple[str, ...]) -> list[tuple[Path, str | None, Path, str]]:
    """The original code's layout: (QA file, category, image folder, image-id prefix) per category."""
    images = src / split / "images"
    return [(_require(src / split / "QA" / f"{c}.csv", "VQA-Med QA file"), c, images, f"{split}/images/")
            for c in chosen]


def _medvqa_release(src: Path, split: str, chosen: tuple[str, ...]) -> list[tuple[Path, str | None, Path, str]]:
    """The organisers' layout: ``<Split>/QAPairsByCategory/C<n>_<Category>_<split>.txt`` and
    ``<Split>/<Split>_images/``; the test file ``*/VQAMed2019_Test_Questions_w_Ref_Answers.txt``
    (optional: its categories are in each line; images in ``VQAMed2019_Test_Images/``)."""
    if split == "test":
        found = sorted(src.glob(f"*/{MEDVQA_TEST_QUESTIONS}"))
        return [(found[0], None, found[0].parent / MEDVQA_TEST_IMAGES,
                 f"{found[0].parent.name}/{MEDVQA_TEST_IMAGES}/")] if found else []
    tag = MEDVQA_RELEASE_SPLITS[split]
    files = {path.stem.split("_")[1]: path for path in src.glob(f"*/QAPairsByCategory/C*_{tag}.txt")}
    out = []
    for category in chosen:
        if category not in files:
            raise DataError(f"{src}: no */QAPairsByCategory/C*_{category}_{tag}.txt (VQA-Med {split} {category})")
        folder = files[category].parent.parent
        images = folder / f"{tag.capitalize()}_images"
        out.append((files[category], category, images, f"{folder.name}/{images.name}/"))
    return out


def read_medvqa_2019(
    src: Path, protocol: str, seed: int, issues: Issues, categories: str | None = None
) -> dict[str, list[RawExample]]:
    """ImageCLEF VQA-Med 2019, in the original code's layout (``{split}/QA/{Category}.csv``) or the
    organisers' (``<Split>/QAPairsByCategory/C*_<split>.txt``, ``<Split>_images/``, the test questions).

    ``categories`` chooses the question categories (default: upstream's, without Abnormality); each
    example records its category. Question ids are running line numbers over the category files,
    continued across splits (upstream). Every question is OPEN. Test questions whose images folder
    is absent (the public release) are dropped and counted as ``test_images_not_released``.
    """
    chosen = medvqa_categories(categories)
    if (src / "train" / "QA").is_dir():
        layout = _medvqa_original
    elif any(src.glob("*/QAPairsByCategory")):
        layout = _medvqa_release
    else:
        raise DataError(f"{src}: no VQA-Med 2019 layout: expected train/QA/*.csv (the original code's) or "
                        "<Split>/QAPairsByCategory/C*_<split>.txt (the organisers')")
    splits, offset = {}, 0
    for split in SPLITS:
        lines = []
        for path, category, images, prefix in layout(src, split, chosen):
            lines += [(line, images, prefix) for line in _medvqa_lines(path, split, category, issues)]
        examples = []
        for idx, ((where, image_id, category, question, answer), images, prefix) in enumerate(lines):
            if category not in chosen:
                continue
            examples.append(RawExample(
                split=split, image_id=f"{prefix}{image_id}.jpg", where=where,
                image_path=images / f"{image_id}.jpg", text=question, answer=answer,
                answer_type="OPEN", question_id=idx + offset, category=category,
            ))
        offset += len(lines)
        if split == "test" and examples and not examples[0].image_path.parent.is_dir() and layout is _medvqa_release:
            issues.filter(split, MEDVQA_NO_TEST_IMAGES, len(examples))
            examples = []
        splits[split] = examples
    return splits
