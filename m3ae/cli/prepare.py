"""Prepare a benchmark from its raw release (or from the original code's .arrow files) into the
m3ae format: memory-mapped Arrow tables, images stored once, summary.json and answers/labels.json.

Datasets: roco, medicat, vqa-rad, slake, vqa-med-2019, melinda, roco-retrieval, custom.
Protocols: "paper" reproduces the original preprocessing (answer sets over all splits, VQA-RAD
val = test); "clean" uses official or held-out validation splits and train-only answer sets.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from m3ae.data import sources
from m3ae.data.kinds import folder_kind
from m3ae.data.prepare import ON_ERROR, PROTOCOLS, Issues, PrepareOptions, check_duplicates, write_prepared
from m3ae.data.specs import DATASETS, get_spec
from m3ae.errors import M3AEError


def prepare_dataset(
    dataset: str,
    src: str | Path,
    out: str | Path,
    protocol: str = "paper",
    on_error: str = "fail",
    image_size: int | None = None,
    image_format: str = "jpeg",
    seed: int = 42,
    overwrite: bool = False,
    from_arrow: bool = False,
    label_column: str = "p_meth_label",
    references: str | Path | None = None,
    eval_size: int | None = None,
    task: str | None = None,
    allow_outside_src: bool = False,
    max_text_len: int | None = None,
    categories: str | None = None,
    check_overlap: list[str | Path] | None = None,
) -> dict[str, Any]:
    """Prepare one dataset; the Python face of ``m3ae prepare``. Returns the summary dict.

    Args:
        dataset: a ``DATASETS`` name.
        src: the raw release folder (or file, for ``custom``), or the folder of upstream .arrow files.
        out: output folder, written atomically.
        protocol: "paper" or "clean".
        on_error: "fail" (stop at the first bad record) or "skip" (drop and count it).
        image_size: pre-resize the shorter side to this many pixels (None keeps the original bytes).
        image_format: "jpeg" (quality 95) or "png" for pre-resized images.
        seed: seed for every shuffle (42 reproduces upstream).
        overwrite: replace an existing ``out``.
        from_arrow: read the original code's ``<name>_{train,val,test}.arrow`` files from ``src``.
        label_column: MELINDA label column.
        references: ROCO: folder with MedICaT's roco_*_references.jsonl.
        eval_size: MedICaT val/test size (1000) or ROCO retrieval pool size (2000).
        task: custom caption files: "pretrain" (default) or "irtr".
        allow_outside_src: custom data may reference images outside the source folder.
        max_text_len: count texts longer than this many tokens in summary.json (they get cut);
            default: the text length of the dataset's original recipe (``DatasetSpec.max_text_len``).
        categories: VQA-Med 2019 question categories, "all" or comma-separated (default: upstream's
            Modality, Organ, Plane).
        check_overlap: prepared folders to compare with the new one (and its splits with each
            other) by image id and pixels; the report is printed and returned in ``summary["overlap"]``.

    Raises:
        FolderBusy: another process is preparing into ``out`` (one run per folder, locked for its life).
    """
    from m3ae.data.storage import check_output
    from m3ae.guards import folder_lock, sibling_lock_file

    src, out = Path(src), Path(out)
    with folder_lock(sibling_lock_file(out), out):  # next to out: the lock survives out's rename
        spec = get_spec(dataset)
        if src.is_file() and src.suffix == ".arrow":  # e.g. --src arrows/vqa_vqa_rad_train.arrow
            src, from_arrow = src.parent, True
        if not src.exists():
            raise M3AEError(f"--src {src} does not exist (expected: {spec.layout})")
        protected = {"--src": src} | ({"--references": Path(references)} if references else {})
        check_output(out, overwrite, protected)  # before the (long) read, so a refusal comes at once
        max_text_len = spec.max_text_len if max_text_len is None else max_text_len
        if categories and "categories" not in spec.options.values():
            raise M3AEError(f"--categories applies to vqa-med-2019 only, not to {dataset}")
        _check_options(image_size, max_text_len, image_format)
        issues = Issues(on_error)
        values = {"label_column": label_column, "references": references, "eval_size": eval_size,
                  "task": task, "allow_outside_src": allow_outside_src, "categories": categories}
        task_name, splits, vocabulary, extra = _read_splits(spec, src, protocol, seed, issues, from_arrow, values)
        unique = folder_kind(task_name).unique
        if unique is not None and not from_arrow:
            check_duplicates(splits, unique, issues)
        opts = PrepareOptions(dataset, task_name, protocol, on_error, image_size, image_format, seed, extra,
                              max_text_len)
        summary = write_prepared(out, splits, opts, issues, overwrite, vocabulary, protected)
        if protocol == "paper" and not from_arrow:
            _note_answer_count(spec, summary)
    if check_overlap:
        from m3ae.data.guard import format_overlaps, overlap_report

        summary["overlap"] = overlap_report([out, *map(Path, check_overlap)])
        print(format_overlaps(summary["overlap"]))
    return summary


def _note_answer_count(spec: Any, summary: dict[str, Any]) -> None:
    """Say when a paper-protocol folder has another answer (or class) count than the original config."""
    got = summary.get("num_answers", summary.get("num_classes"))
    if spec.paper_num_answers and got != spec.paper_num_answers:
        print(f"m3ae prepare: note: {got} answers/classes; the original config expects {spec.paper_num_answers}")


def _read_splits(spec: Any, src: Path, protocol: str, seed: int, issues: Issues, from_arrow: bool,
                 values: dict[str, Any]) -> tuple[str, dict, list[str] | None, dict[str, Any]]:
    """The raw examples of every split from the dataset's reader (or the upstream arrows, or custom
    files). Returns (folder kind, splits, fixed vocabulary or None, what summary.json records)."""
    if from_arrow:
        if spec.name == "custom" or protocol != "paper":
            raise M3AEError(
                "--from-arrow reads the original (paper protocol) arrows of a named dataset; "
                "use --protocol paper and a dataset other than custom"
            )
        splits, vocabulary = sources.read_upstream_arrows(src, spec.name, spec.task, issues, values["label_column"])
        return spec.task, splits, vocabulary, {"from_arrow": True}
    if spec.reader is None:  # custom files: the columns say which task
        task_name, splits = sources.read_custom(src, protocol, seed, issues, values["task"],
                                                values["allow_outside_src"])
        return task_name, splits, None, {}
    options, extra = _reader_options(spec, src, values)
    return spec.task, spec.reader(src, protocol, seed, issues, **options), None, extra


def _check_options(image_size: int | None, max_text_len: int, image_format: str) -> None:
    if image_size is not None and image_size < 1:
        raise M3AEError(f"--image-size must be at least 1 (got {image_size})")
    if max_text_len < 3:
        raise M3AEError(f"--max-text-len must be at least 3 (got {max_text_len})")
    if image_format not in ("jpeg", "png"):
        raise M3AEError(f"--image-format must be jpeg or png (got {image_format!r})")


def _reader_options(spec: Any, src: Path, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reader's keyword options from ``spec.options`` (reader keyword -> prepare argument), and
    what summary.json records about them."""
    options: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for keyword, argument in spec.options.items():
        value = values[argument]
        if argument == "references":  # ROCO: MedICaT's inline references, default <src>/references
            value = Path(value) if value else src / "references"
            extra["references"] = value.is_dir()
            if not value.is_dir():
                print(f"m3ae prepare: note: no MedICaT references at {value}; ROCO texts are captions only")
        elif not value:
            continue  # not given: the reader's default
        elif argument == "label_column":
            extra["label_column"] = value
        elif argument == "categories":
            extra["categories"] = list(sources.medvqa_categories(value))
        options[keyword] = value
    return options, extra


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``m3ae prepare``."""
    parser.add_argument("dataset", choices=list(DATASETS), help="benchmark to prepare")
    parser.add_argument(
        "--src",
        required=True,
        help="raw release folder (custom: a .csv/.jsonl or folder; "
        "with --from-arrow: the folder holding the original <name>_{train,val,test}.arrow)",
    )
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="paper",
        help="paper: the original splits and answer sets; clean: held-out val, train-only answers",
    )
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="fail",
        help="fail: stop at the first bad record; skip: drop it and count it in summary.json",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="pre-resize the shorter side to N (bicubic, never upscaling); default keeps originals",
    )
    parser.add_argument(
        "--image-format",
        choices=("jpeg", "png"),
        default="jpeg",
        help="encoding of pre-resized images (JPEG quality 95, or lossless PNG)",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of every shuffle (42 = the original)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--from-arrow",
        action="store_true",
        help="read the .arrow files written by the original M3AE preprocessing (implied when --src is "
        "one of those .arrow files)",
    )
    parser.add_argument(
        "--label-column",
        default="p_meth_label",
        choices=sources.MELINDA_LABEL_COLUMNS,
        help="MELINDA label column",
    )
    parser.add_argument(
        "--references",
        default=None,
        help="roco: folder with MedICaT's roco_{train,val,test}_references.jsonl",
    )
    parser.add_argument(
        "--eval-size",
        type=int,
        default=None,
        help="medicat: val and test size (1000); roco-retrieval: pool size (2000)",
    )
    parser.add_argument(
        "--allow-outside-src",
        action="store_true",
        help="custom data: allow image paths outside the source folder (absolute or ../ paths)",
    )
    parser.add_argument(
        "--max-text-len",
        type=int,
        default=None,
        help="count texts longer than N tokens in summary.json (training keeps only the first N; "
        "default: the original recipe's length for the dataset, e.g. 32 for VQA, 128 for MELINDA)",
    )
    parser.add_argument(
        "--categories",
        default=None,
        help="vqa-med-2019: question categories, 'all' or comma-separated from Modality, Plane, Organ, "
        "Abnormality (default: the original's Modality, Organ, Plane)",
    )
    parser.add_argument(
        "--check-overlap",
        nargs="+",
        default=None,
        metavar="DIR",
        help="after writing, report images shared with these prepared folders (and between the new "
        "folder's splits), by id, exact pixels and near-duplicate pixels",
    )
    parser.add_argument(
        "--task",
        choices=("pretrain", "irtr"),
        default=None,
        help="custom caption data: pre-training (default) or retrieval",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``m3ae prepare`` and print the split counts."""
    summary = prepare_dataset(
        args.dataset,
        args.src,
        args.out,
        protocol=args.protocol,
        on_error=args.on_error,
        image_size=args.image_size,
        image_format=args.image_format,
        seed=args.seed,
        overwrite=args.overwrite,
        from_arrow=args.from_arrow,
        label_column=args.label_column,
        references=args.references,
        eval_size=args.eval_size,
        task=args.task,
        allow_outside_src=args.allow_outside_src,
        max_text_len=args.max_text_len,
        categories=args.categories,
        check_overlap=args.check_overlap,
    )
    print(format_summary(summary, args.out))
    return 0


def format_summary(summary: dict[str, Any], out: str | Path) -> str:
    """A few human-readable lines: examples and images per split, skips, the vocabulary size."""
    lines = [f"{summary['dataset']} ({summary['task']}, protocol {summary['protocol']}) -> {out}"]
    for split, info in summary["splits"].items():
        extra = ""
        if info.get("skipped"):
            extra += f", skipped {info['skipped']}"
        for what in ("filtered", "dropped"):  # protocol rules and known release quirks
            if info.get(what):
                extra += f", {what} {info[what]}"
        if info.get("outside_set"):
            extra += f", {info['outside_set']} outside the answer set"
        if info.get("over_max_text_len"):
            extra += f", {info['over_max_text_len']} texts over {summary.get('max_text_len_checked')} tokens"
        lines.append(f"  {split}: {info['examples']} examples, {info['images']} images{extra}")
    if "num_answers" in summary:
        lines.append(f"  answers: {summary['num_answers']}")
    if "num_classes" in summary:
        lines.append(f"  classes: {summary['num_classes']}")
    return "\n".join(lines)
