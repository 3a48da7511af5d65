"""`m3ae corpus`: a pre-training folder of image-text pairs built from prepared VQA folders,
with the leakage guard keeping evaluation images out.

Each source image gets texts composed from its own QA pairs and metadata (`m3ae.data.compose`).
Every image of the ``--exclude`` folders' evaluation splits is then left out by id, exact pixels
or near-duplicate pixels (`m3ae.data.guard`), the counts per folder and reason go into
``summary.json`` ("guard"), and a seeded share of the remaining images (grouped by image key, so
a MedPix image in two sources lands on one side) becomes the val split. The result is an ordinary
prepared "pretrain" folder (`m3ae pretrain --data DIR`).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3ae.data.compose import QA, ImageQA, compose_texts
from m3ae.data.guard import (
    CORPUS_DATASET,
    NEAR_THRESHOLD,
    PHASH_SIDE,
    THUMB_SIZE,
    check_prepared,
    count_reasons,
    fingerprint,
    format_overlaps,
    image_key,
    images_fingerprints,
    match,
    overlap_report,
)
from m3ae.data.kinds import MIN_CAPTION_WORDS
from m3ae.data.prepare import SPLITS, Issues, PrepareOptions, RawExample, write_prepared
from m3ae.data.storage import METADATA_FILE, ImageStore, check_output, read_metadata, read_table
from m3ae.errors import DataError, M3AEError

TEXTS_PER = ("image", "category")
DEFAULT_SOURCE_SPLITS = ("train", "val")
DEFAULT_EXCLUDE_SPLITS = ("test", "val")
VAL_FRACTION = 0.05
MAX_TEXT_LEN = 64
"""Texts longer than this many tokens are counted in summary.json (the pre-training recipes' length)."""


@dataclass
class Candidate:
    """A source image on its way into the corpus."""

    image_id: str
    """``<dataset>/<image id in its folder>``: unique across sources."""
    key: str
    """`image_key`: the same for one MedPix image in two sources."""
    where: str
    texts: list[str]
    data: bytes


@dataclass(frozen=True)
class Source:
    """A prepared VQA folder and the splits whose images feed the corpus."""

    folder: Path
    splits: tuple[str, ...] = DEFAULT_SOURCE_SPLITS


def parse_source(text: str) -> Source:
    """``DIR`` or ``DIR:split,split`` (e.g. ``prepared/vqa_rad:train``)."""
    folder, _, splits = str(text).rpartition(":") if ":" in str(text) else (str(text), "", "")
    chosen = tuple(s.strip() for s in splits.split(",") if s.strip()) or DEFAULT_SOURCE_SPLITS
    bad = [s for s in chosen if s not in SPLITS]
    if bad:
        raise M3AEError(f"--from {text}: unknown split(s) {bad}; expected some of {SPLITS}")
    return Source(Path(folder), chosen)


def _vqa_summary(folder: Path, option: str) -> dict[str, Any]:
    """The summary of a prepared VQA folder; a clear error for anything else."""
    summary = check_prepared(folder, f"{option}")
    if summary.get("task") != "vqa":
        raise DataError(f"{folder}: {option} needs a prepared VQA folder, this one holds {summary.get('task')!r} data")
    return summary


def read_source(source: Source) -> tuple[str, list[ImageQA], list[str]]:
    """(dataset, images with their QA pairs and metadata, the splits read) of one source folder.

    VQA-RAD's paper-protocol val split is a copy of its test split: it is never read.
    """
    summary = _vqa_summary(source.folder, "--from")
    splits = [s for s in source.splits if not (s == "val" and summary.get("val_is_test"))]
    metadata = read_metadata(source.folder)
    questions, image_meta = metadata.get("questions", {}), metadata.get("images", {})
    images: dict[str, ImageQA] = {}
    for split in splits:
        for row in read_table(source.folder / f"{split}.arrow").to_pylist():
            image = images.setdefault(row["image_id"], ImageQA(row["image_id"], image_meta.get(row["image_id"], {})))
            known = questions.get(str(row["question_id"]), {})  # without a sidecar: the normalised answer
            image.questions.append(QA(row["question"], known.get("answer", row["answer"]), known.get("category")))
    return str(summary.get("dataset")), list(images.values()), splits


def hold_out(keys: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded ``fraction`` of the distinct image keys (at least one when there are two or more)."""
    distinct = sorted(set(keys))
    random.Random(seed).shuffle(distinct)
    count = round(fraction * len(distinct)) if fraction > 0 else 0
    return set(distinct[: max(count, 1 if fraction > 0 and len(distinct) > 1 else 0)])


def build_corpus(
    sources: list[str | Source],
    out: str | Path,
    exclude: list[str | Path] | None = None,
    exclude_splits: tuple[str, ...] = DEFAULT_EXCLUDE_SPLITS,
    texts_per: str = "image",
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    threshold: int = NEAR_THRESHOLD,
    image_size: int | None = None,
    max_text_len: int = MAX_TEXT_LEN,
    overwrite: bool = False,
    check_overlap: list[str | Path] | None = None,
    tokenizer: str | Path | None = None,
) -> dict[str, Any]:
    """Build a pre-training corpus folder; the Python face of ``m3ae corpus``. Returns its summary.

    Args:
        sources: prepared VQA folders, each ``DIR`` (train + val) or ``DIR:split,...``.
        out: the output folder (written atomically, as `m3ae prepare` does).
        exclude: prepared evaluation folders whose ``exclude_splits`` images must stay out.
        exclude_splits: which of their splits are evaluation images (default test and val).
        texts_per: "image" (one text per image) or "category" (one per image and question category).
        val_fraction: share of the kept images held out as the val split, by image key, seeded.
        seed: the hold-out seed.
        threshold: near-duplicate Hamming threshold of the 256-bit pHash.
        image_size: pre-resize the stored images' shorter side (None keeps the source bytes).
        max_text_len: count texts longer than this many tokens in summary.json.
        overwrite: replace an existing ``out`` that m3ae wrote.
        check_overlap: folders to compare with the new corpus afterwards (printed and in the summary).
        tokenizer: the tokenizer folder the token count uses (None: the packaged RoBERTa files).
    """
    from m3ae.guards import folder_lock, sibling_lock_file

    out = Path(out)
    if texts_per not in TEXTS_PER:
        raise M3AEError(f"--texts must be one of {TEXTS_PER} (got {texts_per!r})")
    if not 0 <= val_fraction < 1:
        raise M3AEError(f"--val-fraction must be in [0, 1) (got {val_fraction})")
    bad_splits = [s for s in exclude_splits if s not in SPLITS]
    if bad_splits:
        raise M3AEError(f"--exclude-splits: unknown {bad_splits}; expected some of {SPLITS}")
    if not sources:
        raise M3AEError("--from needs at least one prepared VQA folder")
    sources = [s if isinstance(s, Source) else parse_source(s) for s in sources]
    protected = {f"--from {s.folder}": s.folder for s in sources}  # --overwrite never removes a source
    with folder_lock(sibling_lock_file(out), out):
        check_output(out, overwrite, protected)  # before the reading, so a refusal comes at once
        candidates, info, dropped = _candidates(sources, texts_per)
        kept, guard = _apply_guard(candidates, [Path(f) for f in exclude or []], exclude_splits, threshold)
        splits = _split_by_image(kept, hold_out([c.key for c in kept], val_fraction, seed))
        extra = {"sources": info, "texts_per": texts_per, "val_fraction": val_fraction, "guard": guard,
                 "composition": {"left_out": dict(dropped)}, "corpus": _corpus_counts(splits, tokenizer)}
        opts = PrepareOptions(CORPUS_DATASET, "pretrain", "clean", "fail", image_size, "jpeg", seed, extra, max_text_len)
        summary = write_prepared(out, splits, opts, Issues("fail"), overwrite, None, protected)
    if check_overlap:
        summary["overlap"] = overlap_report([out, *map(Path, check_overlap)], threshold)
        print(format_overlaps(summary["overlap"]))
    return summary


def _split_by_image(kept: list[Candidate], held: set[str]) -> dict[str, list[RawExample]]:
    """One example per text; an image's texts go to val when its key is held out, else to train."""
    splits: dict[str, list[RawExample]] = {s: [] for s in SPLITS}
    for c in kept:
        split = "val" if c.key in held else "train"
        splits[split] += [RawExample(split, c.image_id, c.where, image_bytes=c.data, text=t) for t in c.texts]
    return splits


def _candidates(sources: list[Source], texts_per: str) -> tuple[list[Candidate], list[dict], Counter]:
    """Every source image with its texts; what each source gave; which QA pairs were left out, by reason."""
    candidates, info, dropped = [], [], Counter()
    for source in sources:
        dataset, images, splits = read_source(source)
        store = ImageStore(source.folder)
        texts_given = 0
        for image in images:
            texts, left_out = compose_texts(dataset, image, texts_per)
            dropped.update(left_out)
            long_enough = [t for t in texts if len(t.split()) >= MIN_CAPTION_WORDS]
            dropped["short_text"] += len(texts) - len(long_enough)
            if not long_enough:
                dropped["image_without_text"] += 1
                continue
            texts_given += len(long_enough)
            candidates.append(Candidate(f"{dataset}/{image.image_id}", image_key(dataset, image.image_id),
                                        f"{source.folder} image {image.image_id}", long_enough,
                                        store.get_bytes(image.image_id)))
        info.append({"folder": str(source.folder), "dataset": dataset, "splits": splits, "images": len(images),
                     "texts": texts_given, "metadata": (source.folder / METADATA_FILE).exists()})
    return candidates, info, dropped


def _apply_guard(candidates: list[Candidate], exclude: list[Path], splits: tuple[str, ...],
                 threshold: int) -> tuple[list[Candidate], dict[str, Any]]:
    """The candidates no evaluation image ties to, and the guard's record for summary.json."""
    guard: dict[str, Any] = {"threshold": threshold, "hash": f"{PHASH_SIDE * PHASH_SIDE}-bit DCT pHash of a "
                             f"{THUMB_SIZE}x{THUMB_SIZE} grey thumbnail", "splits": list(splits),
                             "excluded": {}, "excluded_images": 0}
    if not exclude:
        return candidates, guard
    prints = fingerprint([(c.image_id, c.key, c.data) for c in candidates], "corpus sources")
    out = set()
    for folder in exclude:
        check_prepared(folder, "--exclude")
        reference = images_fingerprints(folder, splits)
        reasons = match(prints, reference, threshold)
        sources = Counter(c.image_id.split("/", 1)[0] for c, r in zip(candidates, reasons) if r)
        guard["excluded"][str(folder)] = {"evaluation_images": len(reference), **count_reasons(reasons),
                                          "by_source": dict(sorted(sources.items()))}
        out |= {i for i, r in enumerate(reasons) if r}
    guard["excluded_images"] = len(out)
    return [c for i, c in enumerate(candidates) if i not in out], guard


def _corpus_counts(splits: dict[str, list[RawExample]], tokenizer: str | Path | None) -> dict[str, Any]:
    """Images, texts and tokens (specials excluded) over all splits, and which tokenizer counted."""
    from m3ae.data.text import load_tokenizer

    texts = [ex.text for exs in splits.values() for ex in exs]
    encode = load_tokenizer(tokenizer)
    tokens = sum(len(ids) for ids in encode(texts, add_special_tokens=False)["input_ids"]) if texts else 0
    return {"images": len({ex.image_id for exs in splits.values() for ex in exs}), "texts": len(texts),
            "tokens": tokens, "tokenizer": str(tokenizer) if tokenizer else "roberta-base (packaged)"}


def format_corpus(summary: dict, out: str) -> str:
    """A few lines: sources, corpus size, the guard's counts per evaluation folder."""
    counts, guard = summary["corpus"], summary["guard"]
    lines = [f"corpus -> {out}: {counts['images']} images, {counts['texts']} texts, {counts['tokens']} tokens ({counts['tokenizer']}) "
             f"(train {summary['splits']['train']['examples']} / val {summary['splits']['val']['examples']} texts)"]
    lines += [f"  from {s['folder']} ({s['dataset']}, {'+'.join(s['splits'])}): {s['images']} images, "
              f"{s['texts']} texts" for s in summary["sources"]]
    for folder, reasons in guard["excluded"].items():
        lines.append(f"  excluded for {folder} ({'+'.join(guard['splits'])}, {reasons['evaluation_images']} images): "
                     f"{reasons['by_id']} by id, {reasons['exact_pixels']} exact pixels, "
                     f"{reasons['near_duplicate']} near duplicates (threshold {guard['threshold']}); "
                     f"from {reasons.get('by_source') or 'no source'}")
    if summary["composition"]["left_out"]:
        lines.append(f"  QA pairs left out: {summary['composition']['left_out']}")
    return "\n".join(lines)
