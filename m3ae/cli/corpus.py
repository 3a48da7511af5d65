"""Build a pre-training corpus of image-text pairs from prepared VQA folders (VQA-Med 2019, SLAKE,
VQA-RAD, ...): one text per image composed from its own QA pairs and metadata, with every image of
the --exclude folders' evaluation splits left out by id, exact pixels and near-duplicate pixels.

Example (docs/data.md, `make corpus`):
  m3ae corpus --from prepared/vqa_med_2019 prepared/slake prepared/vqa_rad:train \\
              --exclude prepared/vqa_rad prepared/slake --out prepared/corpus
"""
from __future__ import annotations

import argparse

from m3ae.data.corpus import (
    DEFAULT_EXCLUDE_SPLITS,
    MAX_TEXT_LEN,
    TEXTS_PER,
    VAL_FRACTION,
    build_corpus,
    format_corpus,
)
from m3ae.data.guard import NEAR_THRESHOLD


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``m3ae corpus``."""
    parser.add_argument("--from", dest="sources", nargs="+", required=True, metavar="DIR[:SPLITS]",
                        help="prepared VQA folders; DIR uses train and val, DIR:train,val names the splits")
    parser.add_argument("--out", required=True, help="output folder (a prepared pretrain folder, written atomically)")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="DIR",
                        help="prepared evaluation folders: their --exclude-splits images are left out "
                        "by id, exact pixels and near-duplicate pixels")
    parser.add_argument("--exclude-splits", default=",".join(DEFAULT_EXCLUDE_SPLITS),
                        help="comma-separated splits of the --exclude folders that are evaluation images")
    parser.add_argument("--texts", choices=TEXTS_PER, default="image",
                        help="image: one text per image; category: one per image and question category")
    parser.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                        help="share of the kept images held out as the val split (by image, seeded)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the val hold-out")
    parser.add_argument("--near-threshold", type=int, default=NEAR_THRESHOLD,
                        help="largest Hamming distance (of 256 pHash bits) called a near duplicate")
    parser.add_argument("--image-size", type=int, default=None,
                        help="pre-resize the shorter side to N (default keeps the source folders' bytes)")
    parser.add_argument("--max-text-len", type=int, default=MAX_TEXT_LEN,
                        help="count texts longer than N tokens in summary.json")
    parser.add_argument("--check-overlap", nargs="+", default=None, metavar="DIR",
                        help="afterwards, report images the corpus shares with these prepared folders")
    parser.add_argument("--tokenizer", default=None, metavar="DIR",
                        help="tokenizer folder for the token count (default: the packaged RoBERTa files; "
                        "m3ae-small reads MiniLM's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    """Build the corpus and print its counts and the guard's."""
    summary = build_corpus(
        args.sources, args.out, exclude=args.exclude,
        exclude_splits=tuple(s.strip() for s in args.exclude_splits.split(",") if s.strip()),
        texts_per=args.texts, val_fraction=args.val_fraction, seed=args.seed, threshold=args.near_threshold,
        image_size=args.image_size, max_text_len=args.max_text_len, overwrite=args.overwrite,
        check_overlap=args.check_overlap, tokenizer=args.tokenizer,
    )
    print(format_corpus(summary, args.out))
    return 0
