"""Convert an official M3AE Lightning checkpoint (.ckpt) into an m3ae model folder.

The checkpoint is read without executing code from it; every key is renamed through an explicit
table and every shape is checked. The report lists what was dropped and the inferred sizes.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `m3ae convert`."""
    parser.add_argument("src", help="official M3AE checkpoint, e.g. m3ae.ckpt")
    parser.add_argument("out_dir", help="folder to write (model.safetensors, config.json, tokenizer files)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize the vision position table to this input size (default: the checkpoint's)",
    )
    parser.add_argument(
        "--answers",
        default=None,
        metavar="FILE",
        help="answer list of a fine-tuned VQA checkpoint, stored so that `m3ae predict` can name its "
        "outputs: the answers.json of a prepared folder (a JSON list), or the original's label map "
        "(a JSON object answer -> index)",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer folder to copy into OUT_DIR (default: the packaged RoBERTa files)",
    )


def run(args: argparse.Namespace) -> int:
    """Convert, print the report, save. Returns the exit code."""
    from m3ae.data import load_tokenizer
    from m3ae.weights.convert import convert_to_folder

    tokenizer = load_tokenizer(args.tokenizer)  # before the conversion: a bad folder fails at once
    return convert_to_folder(args.src, args.out_dir, tokenizer, image_size=args.image_size, answers=args.answers)
