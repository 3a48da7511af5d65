"""Convert an official M3AE Lightning checkpoint (.ckpt) into an m3ae model folder.

The checkpoint is read without executing code from it; every key is renamed through an explicit
table and every shape is checked. The report lists what was dropped and the inferred sizes.
"""

from __future__ import annotations

import argparse

from m3ae.errors import M3AEError


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
        "--tokenizer",
        default=None,
        help="tokenizer folder to copy into OUT_DIR (default: the packaged RoBERTa files)",
    )


def _load_tokenizer(path: str | None):
    if path is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    from importlib import resources

    from transformers import RobertaTokenizerFast

    assets = resources.files("m3ae") / "assets" / "roberta-base"
    return RobertaTokenizerFast(vocab_file=str(assets / "vocab.json"), merges_file=str(assets / "merges.txt"))


def run(args: argparse.Namespace) -> int:
    """Convert, print the report, save. Returns the exit code."""
    from m3ae.weights.upstream import convert_checkpoint

    model, report = convert_checkpoint(args.src, image_size=args.image_size)
    for line in report.lines():
        print(line)
    try:
        tokenizer = _load_tokenizer(args.tokenizer)
    except (OSError, ValueError) as err:
        raise M3AEError(f"cannot read tokenizer from {args.tokenizer}: {err}") from err
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(args.out_dir, tokenizer=tokenizer, extra={"source": str(args.src)})
    print(f"wrote {args.out_dir} ({n_params / 1e6:.1f} M parameters, heads {list(model.config.heads)})")
    return 0
