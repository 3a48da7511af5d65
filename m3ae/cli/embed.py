"""Embed a data set: per-example image, text and joint features, written to Parquet with pyarrow.

For each (image, text) example:

- ``image_embedding`` [D]: the vision tower alone (`M3AE.embed_images`: the pre-fusion CLS token,
  through ``heads.itc`` when the model has one), unit norm;
- ``text_embedding`` [D]: the text tower alone (`M3AE.embed_texts`), unit norm;
- ``joint_embedding`` [2D]: the fused ``cls_feats`` of the pair (what the task heads read).

Examples come from a split of a prepared folder (``--data``: the question of a VQA example, the
caption or text otherwise) or from a CSV with ``image`` (a path, relative to the CSV) and ``text``
columns, and optionally ``id``. The Parquet file is written batch by batch to a temporary name
and renamed when complete, so an interrupted run leaves no partial file behind.

Example: m3ae embed --model runs/roco_irtr/best --data prepared/roco_retrieval --split test --out roco.parquet
"""
from __future__ import annotations

import argparse

from m3ae.inference.embed import embed_to_parquet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the embedding options."""
    parser.add_argument("--model", required=True, metavar="DIR", help="model folder or cached Hub id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="PREPARED", help="a folder written by `m3ae prepare`")
    source.add_argument("--input", metavar="CSV", help="a CSV with image (path) and text columns, id optional")
    parser.add_argument("--split", default="test", help="split of --data to embed")
    parser.add_argument("--out", required=True, metavar="FILE.parquet", help="the Parquet file to write")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Writes the Parquet file and prints its row count."""
    n = embed_to_parquet(args.model, args.out, data=args.data, split=args.split, input_csv=args.input,
                         batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    print(f"{args.out}: {n} rows (id, image, text, image_embedding, text_embedding, joint_embedding)")
    return 0
