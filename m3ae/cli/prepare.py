"""Prepare a benchmark from its raw release (or from the original code's .arrow files) into the
m3ae format: memory-mapped Arrow tables, images stored once, summary.json and answers/labels.json.

Datasets: roco, medicat, vqa-rad, slake, vqa-med-2019, melinda, roco-retrieval, custom.
Protocols: "paper" reproduces the original preprocessing (answer sets over all splits, VQA-RAD
val = test); "clean" uses official or held-out validation splits and train-only answer sets.
"""

from __future__ import annotations

import argparse

from m3ae.data import sources
from m3ae.data.prepare import ON_ERROR, PROTOCOLS
from m3ae.data.specs import DATASETS, format_summary, prepare_dataset


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
