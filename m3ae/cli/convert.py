"""Convert an official M3AE Lightning checkpoint (.ckpt) into an m3ae model folder.

The checkpoint is read without executing code from it; every key is renamed through an explicit
table and every shape is checked. The report lists what was dropped and the inferred sizes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from m3ae.errors import CheckpointError, DataError, M3AEError


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


def _load_tokenizer(path: str | None):
    if path is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    from importlib import resources

    from transformers import RobertaTokenizerFast

    assets = resources.files("m3ae") / "assets" / "roberta-base"
    return RobertaTokenizerFast(vocab_file=str(assets / "vocab.json"), merges_file=str(assets / "merges.txt"))


def read_answer_list(path: str | Path) -> list[str]:
    """Answers by VQA output index from a JSON list, or from a JSON object answer -> index.

    Raises:
        DataError: a missing or malformed file, or indices that are not exactly 0..N-1.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as err:
        raise DataError(f"--answers {path}: cannot read ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if isinstance(data, list) and all(isinstance(a, str) for a in data):
        return data
    if isinstance(data, dict) and all(isinstance(i, int) and not isinstance(i, bool) for i in data.values()):
        if sorted(data.values()) != list(range(len(data))):
            raise DataError(f"{path}: the answer -> index map must use each index 0..{len(data) - 1} once")
        return [a for a, _ in sorted(data.items(), key=lambda item: item[1])]
    raise DataError(f"{path}: expected a JSON list of answers or an object answer -> index")


def _metadata(args: argparse.Namespace, model) -> dict:
    """config.json extras: the source, its preprocessing, and the answer list checked against the VQA head."""
    from m3ae.preprocessing import Preprocessing
    from m3ae.weights.pretrained import find_by_file

    entry = find_by_file(args.src)  # a released file: its recorded text length and normalisation
    size = model.config.vision.image_size
    pre = entry.preprocessing(size) if entry is not None else Preprocessing(image_size=size)
    extra: dict = {"source": str(args.src), "preprocessing": pre.to_dict()}
    if args.answers is None:
        if "vqa" in model.config.heads:
            print("note: no --answers given; `m3ae predict` needs the answer list of this VQA checkpoint "
                  "(convert again with --answers FILE)")
        return extra
    if "vqa" not in model.config.heads:
        raise M3AEError(f"--answers: {args.src} has no VQA head (heads {list(model.config.heads)})")
    answers = read_answer_list(args.answers)
    if len(answers) != model.config.num_answers:
        raise M3AEError(f"--answers {args.answers} lists {len(answers)} answers but the VQA head of "
                        f"{args.src} has {model.config.num_answers} outputs")
    extra["answers"] = answers
    return extra


def run(args: argparse.Namespace) -> int:
    """Convert, print the report, save. Returns the exit code."""
    from m3ae.guards import nonfinite_keys
    from m3ae.weights.upstream import convert_checkpoint

    model, report = convert_checkpoint(args.src, image_size=args.image_size)
    bad = nonfinite_keys(model.state_dict())
    if bad:
        raise CheckpointError(f"{args.src}: NaN/Inf in {len(bad)} tensor(s), e.g. {bad[:3]}; not converted")
    extra = _metadata(args, model)
    for line in report.lines():
        print(line)
    try:
        tokenizer = _load_tokenizer(args.tokenizer)
    except (OSError, ValueError) as err:
        raise M3AEError(f"cannot read tokenizer from {args.tokenizer}: {err}") from err
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(args.out_dir, tokenizer=tokenizer, extra=extra)
    print(f"wrote {args.out_dir} ({n_params / 1e6:.1f} M parameters, heads {list(model.config.heads)})")
    return 0
