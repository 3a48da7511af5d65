"""Datasets are data: one ``DatasetSpec`` per benchmark in the ``DATASETS`` registry.

A spec says which task a benchmark serves, how its raw release is read, where upstream's .arrow
files are named, and the recipe defaults the original used. The generic dataset class and
``prepare_dataset`` (what ``m3ae prepare`` calls) are driven entirely by these entries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3ae.data import sources
from m3ae.data.kinds import folder_kind
from m3ae.data.prepare import Issues, PrepareOptions, check_duplicates, write_prepared
from m3ae.errors import M3AEError


@dataclass(frozen=True)
class DatasetSpec:
    """A benchmark as the library sees it."""

    name: str
    task: str
    """pretrain | vqa | cls | irtr."""
    reader: Callable | None
    """``reader(src, protocol, seed, issues, **options)`` -> splits; None for ``custom``."""
    layout: str
    """The raw layout ``--src`` must point at (shown in ``m3ae prepare --help`` and errors)."""
    max_text_len: int
    """Text length the original recipe used; ``m3ae prepare`` counts the texts longer than it."""
    paper_num_answers: int | None = None
    """Answer/class count the original config expects under the paper protocol."""
    options: dict[str, str] = field(default_factory=dict)
    """Reader keyword -> the ``prepare_dataset`` argument that fills it (e.g. MELINDA's
    ``label_column``; ``pool_size`` of ROCO retrieval comes from ``eval_size``)."""


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "roco",
            "pretrain",
            sources.read_roco,
            "{train,val,test}/radiology/{images/,captions.txt,dlinks.txt} [+ references/roco_*_references.jsonl]",
            64,
            options={"references": "references"},
        ),
        DatasetSpec(
            "medicat",
            "pretrain",
            sources.read_medicat,
            "release/s2_full_figures_oa_nonroco_combined_medical_top4_public.jsonl + release/figures/",
            64,
            options={"eval_size": "eval_size"},
        ),
        DatasetSpec(
            "vqa-rad",
            "vqa",
            sources.read_vqa_rad,
            "trainset.json, testset.json [, valset.json], images/",
            32,
            498,
        ),
        DatasetSpec(
            "slake", "vqa", sources.read_slake, "train.json, validate.json, test.json, imgs/", 32, 222
        ),
        DatasetSpec(
            "vqa-med-2019",
            "vqa",
            sources.read_medvqa_2019,
            "{train,val,test}/QA/{Modality,Organ,Plane}.csv + {train,val,test}/images/ (the original code's), "
            "or <Split>/QAPairsByCategory/C*_<split>.txt + <Split>/<Split>_images/ [+ VQAMed2019Test/] "
            "(the organisers')",
            32,
            79,
            options={"categories": "categories"},
        ),
        DatasetSpec(
            "melinda",
            "cls",
            sources.read_melinda,
            "train.csv, dev.csv, test.csv, melinda_images/",
            128,
            7,
            options={"label_column": "label_column"},
        ),
        DatasetSpec(
            "roco-retrieval",
            "irtr",
            sources.read_roco_retrieval,
            "{train,val,test}/radiology/{images/,captions.txt}",
            40,
            options={"pool_size": "eval_size"},
        ),
        DatasetSpec(
            "custom",
            "custom",
            None,
            "a .csv/.jsonl (with a split column) or a folder of {train,val,test}.{csv,jsonl}; columns image + "
            "caption | question + answer [+ answer_type] | text + label",
            32,
        ),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """The spec registered under ``name``; unknown names list the known ones."""
    try:
        return DATASETS[name]
    except KeyError as err:
        raise M3AEError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from err


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
