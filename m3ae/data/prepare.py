"""The common half of `m3ae prepare`: validate raw examples, store images once, write the format.

Each raw source has a reader in ``m3ae.data.sources`` that turns its release into ``RawExample``
lists per split. Everything after that is shared: text and answer-type checks, one decode of
every image (missing, empty, truncated, undecodable, unsupported mode, too large), optional
pre-resizing, answer or label vocabularies by protocol, and an atomic write of the folder.
"""

from __future__ import annotations

import datetime
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3ae.data.answers import normalize_answer
from m3ae.data.images import decode_image, preresize_bytes
from m3ae.data.kinds import MIN_CAPTION_WORDS, FolderKind, folder_kind  # noqa: F401 (MIN_CAPTION_WORDS: old imports)
from m3ae.data.storage import (
    ANSWERS_FILE,
    LABELS_FILE,
    METADATA_FILE,
    SUMMARY_FILE,
    ImageShardWriter,
    atomic_output,
    write_examples,
    write_json,
)
from m3ae.errors import DataError, M3AEError

SPLITS = ("train", "val", "test")
PROTOCOLS = ("paper", "clean")
ON_ERROR = ("fail", "skip")
ANSWER_TYPES = {"closed": 0, "open": 1}
QUESTION_IDS_FILE = "question_ids.json"
"""Integer question_id -> the custom data's original string id, when the ids were strings."""
OUTSIDE_SET = -1
"""Label of a clean-protocol val/test example whose answer (or class) is not in the train set."""


@dataclass
class RawExample:
    """One example as read from a raw release, before validation."""

    split: str
    image_id: str
    """Stable key of the image, e.g. its path relative to the release folder."""
    where: str
    """"file:line" or "file record N", used in every error message about this example."""
    image_path: Path | None = None
    image_bytes: bytes | Callable[[], bytes] | None = None
    """Set instead of image_path when the image comes from an upstream .arrow file (bytes, or a
    callable returning them, so big memory-mapped arrows are not loaded at once)."""
    text: str = ""
    """Caption (pretrain/irtr), question (vqa) or text (cls)."""
    answer: Any = None
    answer_type: Any = None
    question_id: int | str | None = None
    """An integer once read; custom readers map string ids to integers (see ``question_key``)."""
    question_key: str | None = None
    """The original string id of a custom record whose ids are not integers ("q0_0")."""
    label_name: str | None = None
    label: int | None = None
    """Set by readers that already hold label ids (upstream arrows)."""
    category: str | None = None
    """The question's category in its release (VQA-Med "Abnormality", SLAKE "Organ", VQA-RAD "PRES")."""
    image_meta: dict[str, str] | None = None
    """What the release says about the image itself (SLAKE modality/location, VQA-RAD organ)."""


class Issues:
    """Bad-input policy: ``fail`` raises a DataError at once, ``skip`` counts the drop by reason.

    Known quirks of an official release (SLAKE's one empty answer) are neither: the reader drops
    them under every ``on_error`` and they are counted apart, in ``dropped``.
    """

    def __init__(self, on_error: str = "fail") -> None:
        if on_error not in ON_ERROR:
            raise M3AEError(f"--on-error must be one of {ON_ERROR} (got {on_error!r})")
        self.on_error = on_error
        self.skipped: dict[str, Counter] = {s: Counter() for s in SPLITS}
        self.filtered: dict[str, Counter] = {s: Counter() for s in SPLITS}
        self.dropped: dict[str, Counter] = {s: Counter() for s in SPLITS}

    def bad(self, split: str, reason: str, message: str, count: int = 1) -> None:
        """Report bad input: raise (fail) or count ``count`` dropped examples under ``reason`` (skip)."""
        if self.on_error == "fail":
            raise DataError(f"{message} [{reason}; use --on-error skip to drop and count such records]")
        self.skipped.setdefault(split, Counter())[reason] += count

    def known_quirk(self, split: str, reason: str, message: str) -> None:
        """Drop one record of a known release quirk: counted under ``reason`` and said once per reason
        (a user should learn what was left out without a flag, and without a line per record)."""
        if not any(counts[reason] for counts in self.dropped.values()):
            print(f"m3ae prepare: note: {message}")
        self.dropped.setdefault(split, Counter())[reason] += 1

    def dropped_total(self) -> dict[str, int]:
        """Known-quirk drops by reason over all splits (summary.json's top-level ``dropped``)."""
        return dict(sum(self.dropped.values(), Counter()))

    def filter(self, split: str, reason: str, count: int = 1) -> None:
        """Count examples removed by a protocol rule (never an error), e.g. texts under 3 words."""
        self.filtered.setdefault(split, Counter())[reason] += count


@dataclass
class PrepareOptions:
    """What every reader and the writer need to know."""

    dataset: str
    task: str
    protocol: str = "paper"
    on_error: str = "fail"
    image_size: int | None = None
    image_format: str = "jpeg"
    seed: int = 42
    extra_summary: dict[str, Any] = field(default_factory=dict)
    max_text_len: int = 32
    """Texts longer than this many tokens (packaged tokenizer) are counted: training cuts them."""


def clean_text(text: Any) -> str:
    """Collapse whitespace runs to one space and trim (upstream's ``re.sub(r"\\s+", " ", ...)``)."""
    return re.sub(r"\s+", " ", str(text)).strip()


def check_text(ex: RawExample, issues: Issues, what: str, min_words: int = 2) -> bool:
    """Empty and 1-word texts are bad input; for captions, 2-word texts are filtered as upstream does."""
    words = len(ex.text.split())
    if words == 0:
        issues.bad(ex.split, "empty_text", f"{ex.where}: empty {what}")
        return False
    if words == 1:
        issues.bad(ex.split, "one_word_text", f"{ex.where}: {what} has a single word: {ex.text!r}")
        return False
    if words < min_words:
        issues.filter(ex.split, "short_text")
        return False
    return True


def parse_answer_type(ex: RawExample, issues: Issues) -> bool:
    """Map "open"/"closed" (after trimming and case-folding, so "CLOSED " is valid) to 1/0 in place."""
    if isinstance(ex.answer_type, int) and ex.answer_type in (0, 1):
        return True
    key = str(ex.answer_type).strip().casefold() if ex.answer_type is not None else ""
    if key not in ANSWER_TYPES:
        issues.bad(
            ex.split, "bad_answer_type", f"{ex.where}: answer_type {ex.answer_type!r} is not OPEN or CLOSED"
        )
        return False
    ex.answer_type = ANSWER_TYPES[key]
    return True


def validate_examples(splits: dict[str, list[RawExample]], opts: PrepareOptions, issues: Issues) -> None:
    """Drop (or fail on) examples with bad text, answers or answer types; in place."""
    kind = folder_kind(opts.task)
    for split, examples in splits.items():
        kept = []
        for ex in examples:
            ex.text = clean_text(ex.text)
            if not check_text(ex, issues, kind.text, kind.min_words):
                continue
            if kind.answers and not check_answer(ex, split, opts, issues):
                continue
            kept.append(ex)
        splits[split] = kept


def check_answer(ex: RawExample, split: str, opts: PrepareOptions, issues: Issues) -> bool:
    """A VQA example needs an answer (empty only under a named benchmark's paper protocol) and a
    valid answer type; False (after reporting) when it has not."""
    if ex.answer is None:
        issues.bad(split, "malformed_record", f"{ex.where}: no answer")
        return False
    # The paper protocol of a named benchmark keeps an empty answer: SLAKE train has
    # one ("Does the picture contain liver?" -> ""), and upstream's 222 answers include
    # "" as a class. Anywhere else an empty answer is a data error, not a class.
    if not str(ex.answer).strip() and (opts.protocol != "paper" or opts.dataset == "custom"):
        issues.bad(split, "empty_answer", f"{ex.where}: empty answer")
        return False
    return parse_answer_type(ex, issues)


def count_long_texts(splits: dict[str, list[RawExample]], max_text_len: int) -> dict[str, int]:
    """Per split, how many texts the packaged RoBERTa tokenizer makes longer than ``max_text_len``
    tokens (special tokens included): training and prediction keep only the first ones."""
    from m3ae.data.text import load_tokenizer

    tokenizer = load_tokenizer()
    counts = {}
    for split, examples in splits.items():
        texts = [ex.text for ex in examples]
        lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]] if texts else []
        counts[split] = sum(n > max_text_len for n in lengths)
    return counts


def check_duplicates(splits: dict[str, list[RawExample]], key: str, issues: Issues) -> None:
    """A repeated question id (vqa) or image id (one-caption-per-image sources) within a split is bad input."""
    for split, examples in splits.items():
        seen: dict[Any, str] = {}
        kept = []
        for ex in examples:
            value = getattr(ex, key)
            if value in seen:
                issues.bad(
                    split, "duplicate_id", f"{ex.where}: duplicate {key} {value!r} (first at {seen[value]})"
                )
                continue
            seen[value] = ex.where
            kept.append(ex)
        splits[split] = kept


@dataclass
class _ImageEntry:
    example: RawExample  # the first example that references the image (for messages and bytes)
    uses: Counter = field(default_factory=Counter)  # split -> number of examples


def _load_image(entry: _ImageEntry, opts: PrepareOptions) -> tuple[str | None, str, bytes, int, int]:
    """Read and decode one image. Returns (reason or None, message, stored bytes, width, height)."""
    ex = entry.example
    source = str(ex.image_path) if ex.image_path is not None else f"{ex.where} image {ex.image_id}"
    if ex.image_bytes is not None:
        data = ex.image_bytes() if callable(ex.image_bytes) else ex.image_bytes
    else:
        try:
            data = Path(ex.image_path).read_bytes()
        except FileNotFoundError:
            return "missing_image", f"{source}: image file not found (referenced at {ex.where})", b"", 0, 0
        except OSError as err:
            return "missing_image", f"{source}: cannot read ({err}) (referenced at {ex.where})", b"", 0, 0
    if not data:
        return "empty_image", f"{source}: empty image file (0 bytes) (referenced at {ex.where})", b"", 0, 0
    try:
        image = decode_image(data, source)
    except DataError as err:
        text = str(err)
        reason = "huge_image" if "limit" in text else "unsupported_mode" if "mode" in text else "bad_image"
        return reason, f"{text} (referenced at {ex.where})", b"", 0, 0
    if opts.image_size:
        data, width, height = preresize_bytes(image, opts.image_size, opts.image_format)
        return None, "", data, width, height
    return None, "", data, image.width, image.height


def collect_images(splits: dict[str, list[RawExample]]) -> dict[str, _ImageEntry]:
    """Distinct images in order of first use, with how many examples of each split use them."""
    entries: dict[str, _ImageEntry] = {}
    for split, examples in splits.items():
        for ex in examples:
            entry = entries.setdefault(ex.image_id, _ImageEntry(ex))
            entry.uses[split] += 1
    return entries


def store_images(
    folder: Path, splits: dict[str, list[RawExample]], opts: PrepareOptions, issues: Issues
) -> None:
    """Decode every referenced image once, write the good ones, drop examples of the bad ones."""
    from tqdm import tqdm

    entries = collect_images(splits)
    writer = ImageShardWriter(folder)
    bad: set[str] = set()
    try:
        for image_id, entry in tqdm(
            entries.items(), desc=f"{opts.dataset} images", unit="img", disable=len(entries) < 200
        ):
            reason, message, data, width, height = _load_image(entry, opts)
            if reason is not None:
                for split, count in entry.uses.items():
                    issues.bad(split, reason, message, count)
                bad.add(image_id)
                continue
            source = str(entry.example.image_path) if entry.example.image_path else entry.example.where
            writer.add(image_id, data, width, height, source)
    finally:
        writer.close()
    for split, examples in splits.items():
        splits[split] = [ex for ex in examples if ex.image_id not in bad]


def answer_vocabulary(splits: dict[str, list[RawExample]], protocol: str) -> list[str]:
    """Normalised answers in first-seen order: over train, val, test (paper) or train only (clean)."""
    order = SPLITS if protocol == "paper" else ("train",)
    seen: dict[str, None] = {}
    for split in order:
        for ex in splits.get(split, []):
            seen.setdefault(normalize_answer(ex.answer), None)
    return list(seen)


def label_vocabulary(splits: dict[str, list[RawExample]], protocol: str) -> list[str]:
    """Sorted class names: over all splits (paper, as upstream) or train only (clean)."""
    order = SPLITS if protocol == "paper" else ("train",)
    return sorted({ex.label_name for split in order for ex in splits.get(split, [])})


def _caption_row(ex: RawExample, index: dict[str, int] | None) -> tuple[dict[str, Any], int | None]:
    return {"image_id": ex.image_id, "text": ex.text}, None


def _vqa_row(ex: RawExample, index: dict[str, int] | None) -> tuple[dict[str, Any], int | None]:
    answer = normalize_answer(ex.answer) if ex.label is None else str(ex.answer)
    label = ex.label if ex.label is not None else index.get(answer, OUTSIDE_SET)
    row = {"question_id": int(ex.question_id), "image_id": ex.image_id, "question": ex.text, "answer": answer,
           "label": label, "answer_type": int(ex.answer_type)}
    return row, label


def _cls_row(ex: RawExample, index: dict[str, int] | None) -> tuple[dict[str, Any], int | None]:
    label = ex.label if ex.label is not None else index.get(ex.label_name, OUTSIDE_SET)
    return {"image_id": ex.image_id, "text": ex.text, "label": label, "label_name": ex.label_name}, label


ROWS = {"pretrain": _caption_row, "irtr": _caption_row, "vqa": _vqa_row, "cls": _cls_row}
"""Folder kind -> (example, answer/label index) -> (split-table row, its label or None)."""
VOCABULARIES = {"answers": answer_vocabulary, "labels": label_vocabulary}
VOCAB_FILES = {"answers": ANSWERS_FILE, "labels": LABELS_FILE}


def _rows(task: str, examples: list[RawExample], index: dict[str, int] | None) -> tuple[list[dict], int]:
    """Split-table rows; returns also how many examples fall outside the answer/label set."""
    rows, outside = [], 0
    for ex in examples:
        row, label = ROWS[task](ex, index)
        rows.append(row)
        outside += label == OUTSIDE_SET
    return rows, outside


def write_prepared(
    out: Path,
    splits: dict[str, list[RawExample]],
    opts: PrepareOptions,
    issues: Issues,
    overwrite: bool = False,
    vocabulary: list[str] | None = None,
    protected: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Validate, store and write a prepared folder atomically. Returns the summary.

    Args:
        out: the output folder (replaced only with ``overwrite``).
        splits: raw examples per split, as produced by a reader.
        opts: dataset name, task, protocol, image options.
        issues: the bad-input policy, shared with the reader so counts add up.
        overwrite: replace an existing ``out``.
        vocabulary: a fixed answer/label list (upstream arrows); computed by protocol when None.
        protected: paths ``overwrite`` must never remove, by option (``{"--src": src}``).
    """
    if opts.protocol not in PROTOCOLS:
        raise M3AEError(f"--protocol must be one of {PROTOCOLS} (got {opts.protocol!r})")
    kind = folder_kind(opts.task)
    with atomic_output(out, overwrite, protected) as tmp:
        validate_examples(splits, opts, issues)
        vocabulary = _store_images_and_vocabulary(tmp, splits, opts, issues, kind, vocabulary)
        summary = _summary(opts, issues, vocabulary)
        _write_splits(tmp, splits, opts, issues, kind, vocabulary, summary)
        summary["val_is_test"] = _same_examples(splits.get("val", []), splits.get("test", []))
        keys = {ex.question_id: ex.question_key for exs in splits.values() for ex in exs if ex.question_key}
        if keys:  # the user's string ids, so that predictions can be matched back to their records
            write_json(tmp / QUESTION_IDS_FILE, {str(k): v for k, v in sorted(keys.items())})
            summary["question_ids"] = QUESTION_IDS_FILE
        if kind.vocabulary is not None:
            write_json(tmp / VOCAB_FILES[kind.vocabulary], vocabulary)
        metadata = release_metadata(splits)
        if metadata["questions"] or metadata["images"]:
            write_json(tmp / METADATA_FILE, metadata)
            summary["metadata"] = METADATA_FILE
        write_json(tmp / SUMMARY_FILE, summary)
    return summary


def _store_images_and_vocabulary(tmp: Path, splits: dict[str, list[RawExample]], opts: PrepareOptions,
                                 issues: Issues, kind: FolderKind, vocabulary: list[str] | None) -> list[str] | None:
    """Store the images; returns the answer/label set (``vocabulary`` when given, else by protocol)."""
    needs_vocab = vocabulary is None and kind.vocabulary is not None
    vocab_fn = VOCABULARIES.get(kind.vocabulary, label_vocabulary)
    if needs_vocab and opts.protocol == "paper":
        # upstream builds the vocabulary before it drops examples whose image is missing
        vocabulary = vocab_fn(splits, "paper")
    store_images(tmp, splits, opts, issues)
    if needs_vocab and opts.protocol == "clean":
        vocabulary = vocab_fn(splits, "clean")  # from the train examples that survived every check
    return vocabulary


def _write_splits(tmp: Path, splits: dict[str, list[RawExample]], opts: PrepareOptions, issues: Issues,
                  kind: FolderKind, vocabulary: list[str] | None, summary: dict[str, Any]) -> None:
    """One table per split, and its counts into ``summary["splits"]``."""
    index = {name: i for i, name in enumerate(vocabulary)} if vocabulary is not None else None
    long_texts = count_long_texts(splits, opts.max_text_len)
    summary["max_text_len_checked"] = opts.max_text_len
    for split in SPLITS:
        examples = splits.get(split, [])
        rows, outside = _rows(opts.task, examples, index)
        write_examples(tmp / f"{split}.arrow", opts.task, rows)
        info = {
            "examples": len(rows),
            "images": len({ex.image_id for ex in examples}),
            "skipped": dict(issues.skipped.get(split, {})),
            "filtered": dict(issues.filtered.get(split, {})),
            "dropped": dict(issues.dropped.get(split, {})),
            "over_max_text_len": long_texts.get(split, 0),
        }
        if kind.vocabulary is not None:
            info["outside_set"] = outside
        summary["splits"][split] = info


def release_metadata(splits: dict[str, list[RawExample]]) -> dict[str, dict[str, Any]]:
    """The `METADATA_FILE` content: category and raw answer by question id, image fields by image id."""
    questions: dict[str, dict[str, str]] = {}
    images: dict[str, dict[str, str]] = {}
    for examples in splits.values():
        for ex in examples:
            if ex.category and ex.question_id is not None:  # the answer as released, before normalisation
                questions[str(ex.question_id)] = {"category": ex.category, "answer": clean_text(ex.answer)}
            if ex.image_meta:
                images.setdefault(ex.image_id, ex.image_meta)
    return {"questions": questions, "images": images}


def _same_examples(a: list[RawExample], b: list[RawExample]) -> bool:
    """True when two splits hold the same examples (VQA-RAD paper protocol: val is a copy of test)."""
    key = lambda ex: (ex.image_id, ex.question_id, ex.text, str(ex.answer))
    return bool(a) and [key(ex) for ex in a] == [key(ex) for ex in b]


def _summary(opts: PrepareOptions, issues: Issues, vocabulary: list[str] | None) -> dict[str, Any]:
    from m3ae._version import __version__

    summary: dict[str, Any] = {
        "dataset": opts.dataset,
        "protocol": opts.protocol,
        "task": opts.task,
        "splits": {},
        "image_size": opts.image_size,
        "image_format": opts.image_format if opts.image_size else "original",
        "seed": opts.seed,
        "on_error": issues.on_error,
        "dropped": issues.dropped_total(),
        "m3ae_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    count_key = folder_kind(opts.task).count_key
    if count_key is not None:
        summary[count_key] = len(vocabulary)
    summary.update(opts.extra_summary)
    return summary
