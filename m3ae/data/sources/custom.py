"""Readers for each raw release: turn its files into ``RawExample`` lists per split.

One function per source (``read_vqa_rad``, ``read_slake``, ...). They only parse and split; all
validation of texts and images, vocabularies and writing happen in ``m3ae.data.prepare``.
Line numbers in messages are 1-based; JSON list records are numbered from 0 (their index).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

from m3ae.data.kinds import CAPTION_KINDS
from m3ae.data.prepare import SPLITS, Issues, RawExample, clean_text
from m3ae.errors import DataError
from m3ae.guards import is_inside

VQA_RAD_VAL_FRACTION = 0.1
"""Clean protocol: share of VQA-RAD train images held out as validation."""
MEDICAT_EVAL_SIZE = 1000
"""MedICaT: the last 2,000 shuffled radiology figures become val (first 1,000) and test (last 1,000)."""
ROCO_POOL_SIZE = 2000
"""ROCO retrieval: image-caption pairs in the val and test pools."""
MEDVQA_CATEGORIES = ("Modality", "Organ", "Plane")  # Abnormality (C4) excluded, as upstream
MEDVQA_ALL_CATEGORIES = ("Modality", "Plane", "Organ", "Abnormality")  # the organisers' C1..C4
SLAKE_IMAGE_FIELDS = {"modality": "modality", "location": "location"}
"""SLAKE record field -> image metadata name (metadata.json)."""
VQA_RAD_IMAGE_FIELDS = {"image_organ": "organ"}
SLAKE_FILES = {"train": "train.json", "val": "validate.json", "test": "test.json"}
MELINDA_FILES = {"train": "train.csv", "val": "dev.csv", "test": "test.csv"}
MELINDA_LABEL_COLUMNS = ("i_meth", "p_meth", "i_meth_label", "p_meth_label")


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


def read_vqa_rad(src: Path, protocol: str, seed: int, issues: Issues) -> dict[str, list[RawExample]]:
    """VQA-RAD (MEVF split): trainset.json, testset.json [, valset.json], images/.

    paper: val = valset.json when present, else a copy of the test set (what upstream's valset.json
    is). clean: val = 10% of the train images, held out with ``seed``.
    """
    images = src / "images"
    read = lambda path, split: _vqa_examples(path, split, images, "image_name", issues,
                                            category_key="question_type", image_keys=VQA_RAD_IMAGE_FIELDS)
    splits = {s: read(src / f"{s}set.json", s) for s in ("train", "test")}
    if protocol == "paper":
        valset = src / "valset.json"
        if valset.exists():
            splits["val"] = read(valset, "val")
        else:
            splits["val"] = [RawExample(**{**ex.__dict__, "split": "val"}) for ex in splits["test"]]
    else:
        splits["train"], splits["val"] = hold_out_by_image(splits["train"], VQA_RAD_VAL_FRACTION, seed)
    return {s: splits[s] for s in SPLITS}


def read_slake(src: Path, protocol: str, seed: int, issues: Issues) -> dict[str, list[RawExample]]:
    """SLAKE 1.0: train/validate/test.json + imgs/; English questions only (both protocols).

    clean: records with an empty answer are dropped and counted (``dropped``), not refused; the
    official release has one (train qid 1622, "Does the picture contain liver?"). paper keeps it,
    as upstream does ("" is one of its 222 answers).
    """
    english = lambda rec: rec.get("q_lang") == "en"
    splits = {
        s: _vqa_examples(src / f, s, src / "imgs", "img_name", issues, english,
                         category_key="content_type", image_keys=SLAKE_IMAGE_FIELDS)
        for s, f in SLAKE_FILES.items()
    }
    if protocol == "clean":
        splits = {s: _drop_empty_answers(examples, issues) for s, examples in splits.items()}
    return splits


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


def _medicat_texts(sample: dict[str, Any]) -> list[str]:
    texts = []
    if sample.get("s2_caption"):
        texts.append(sample["s2_caption"])
    texts.extend(sample.get("s2orc_references") or [])
    return texts


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


def read_medicat(
    src: Path, protocol: str, seed: int, issues: Issues, eval_size: int = MEDICAT_EVAL_SIZE
) -> dict[str, list[RawExample]]:
    """MedICaT: release/s2_full_figures_oa_nonroco_combined_medical_top4_public.jsonl + release/figures/.

    Radiology figures only; shuffled with ``random.seed(seed)`` (42 upstream); the last
    2 x ``eval_size`` become val then test. Texts = caption + inline references, one example each.
    """
    path = src / "release" / "s2_full_figures_oa_nonroco_combined_medical_top4_public.jsonl"
    records = [(w, o) for w, o in read_jsonl(path, "train", issues) if o.get("radiology")]
    random.seed(seed)  # the module-level generator, as upstream, so the shuffle is identical
    indices = list(range(len(records)))
    random.shuffle(indices)
    parts = {
        "train": indices[: -2 * eval_size],
        "val": indices[-2 * eval_size : -eval_size],
        "test": indices[-eval_size:],
    }
    splits: dict[str, list[RawExample]] = {s: [] for s in SPLITS}
    for split, chosen in parts.items():
        for i in chosen:
            where, sample = records[i]
            if "pdf_hash" not in sample or "fig_uri" not in sample:
                issues.bad(split, "malformed_record", f"{where}: missing pdf_hash/fig_uri")
                continue
            name = f"{sample['pdf_hash']}_{sample['fig_uri']}"
            for text in _medicat_texts(sample):
                splits[split].append(
                    RawExample(
                        split=split,
                        image_id=f"figures/{name}",
                        where=where,
                        image_path=src / "release" / "figures" / name,
                        text=text,
                    )
                )
    return splits


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
