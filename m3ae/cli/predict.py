"""Answer questions about images with a fine-tuned M3AE VQA model.

One question: --image PATH --question TEXT prints the top answers with their probabilities (--json
for JSON). Many questions: --input FILE.csv with columns image and question (relative image paths
are read from the CSV's folder) and --output FILE.csv, which repeats every input column and adds
answer and probability. Images may be PNG (8 or 16 bit), JPEG or DICOM. Research use only: not
for clinical decisions.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from m3ae.errors import M3AEError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `m3ae predict`."""
    parser.add_argument("--model", required=True, type=Path,
                        help="a fine-tuned VQA model folder (written by save_pretrained, e.g. .../best)")
    one = parser.add_argument_group("one question")
    one.add_argument("--image", type=Path, help="image file: PNG, JPEG or DICOM")
    one.add_argument("--question", help="the question, in English")
    one.add_argument("--top-k", type=int, default=5, help="how many answers to print")
    parser.add_argument("--frame", type=int, default=None,
                        help="frame of a multi-frame DICOM (default: the middle frame)")
    one.add_argument("--json", action="store_true", help="print the answers as JSON")
    one.add_argument("--explain", type=Path, metavar="OUT.png",
                     help="also write the top answer's heat map over the image, with a colour bar "
                          "(gradient-weighted attention; see m3ae.explain)")
    many = parser.add_argument_group("many questions")
    many.add_argument("--input", type=Path, help="CSV with columns image, question")
    many.add_argument("--output", type=Path, help="CSV to write (input columns + answer, probability)")
    parser.add_argument("--batch-size", type=int, default=16, help="questions per forward pass (batch mode)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    add_precision_argument(parser)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision`` of the inference commands (predict, serve): autocast choices plus int8."""
    from m3ae.hardware import INFERENCE_PRECISIONS

    parser.add_argument("--precision", default="auto", choices=INFERENCE_PRECISIONS,
                        help="auto (default): on a CPU, the fastest of fp32, bf16 (where native) and int8 that gives "
                             "fp32's answers on a bundled probe, timed once per machine and model and cached in "
                             "~/.cache/m3ae ($M3AE_CACHE_DIR); on CUDA bf16 (fp16 without it). bf16/fp16 hold the "
                             "weights in that dtype (half of fp32's memory); int8: dynamic int8 Linear layers in the "
                             "vision tower and the fusion (the text tower stays fp32), CPU only (no --explain)")


def check_arguments(args: argparse.Namespace) -> str:
    """Validate the option combination; returns the mode, "single" or "batch".

    Raises:
        M3AEError: on a missing or contradictory option.
    """
    from m3ae.guards import check_device

    check_device(args.device, "--device")
    if getattr(args, "explain", None) is not None and args.precision == "int8":
        raise M3AEError("--explain needs gradients, which int8 layers do not have: use --precision fp32 or auto")
    if args.frame is not None and args.frame < 0:
        raise M3AEError(f"--frame must be >= 0 (got {args.frame})")
    single = args.image is not None or args.question is not None
    batch = args.input is not None or args.output is not None
    if single and batch:
        raise M3AEError("use either --image/--question or --input/--output, not both")
    if batch:
        if args.input is None or args.output is None:
            raise M3AEError("batch mode needs both --input FILE.csv and --output FILE.csv")
        if getattr(args, "explain", None) is not None:
            raise M3AEError("--explain works with one question (--image/--question), not with --input")
        if args.batch_size < 1:
            raise M3AEError(f"--batch-size must be at least 1, got {args.batch_size}")
        return "batch"
    if args.image is None or args.question is None:
        raise M3AEError("give --image PATH and --question TEXT (or --input/--output for a CSV)")
    if args.top_k < 1:
        raise M3AEError(f"--top-k must be at least 1, got {args.top_k}")
    return "single"


def run_single(pipe, args: argparse.Namespace) -> int:
    """Answer one question and print the top-k answers."""
    from m3ae.inference.pipeline import to_rgb_image

    image = to_rgb_image(args.image, args.frame)
    answers = pipe(image, args.question, top_k=args.top_k)
    if args.explain is not None:
        from m3ae.inference.explain import explain_answer, save_explanation

        save_explanation(explain_answer(pipe, image, args.question), args.question, args.explain)
        print(f"heat map written to {args.explain}", file=sys.stderr)
    if args.json:  # allow_nan=False: the output is always valid JSON (the pipeline refuses NaN)
        print(json.dumps({"image": str(args.image), "question": args.question, "answers": answers},
                         indent=2, allow_nan=False))
        return 0
    print(f"Q: {args.question}")
    width = max(len(a["answer"]) for a in answers)
    for rank, a in enumerate(answers, start=1):
        print(f"{rank:>2}. {a['answer']:<{width}}  {a['probability']:.3f}")
    return 0


def run_batch(pipe, args: argparse.Namespace) -> int:
    """Answer every question of a CSV and write the answers CSV."""
    from m3ae.inference.batch import answer_csv

    n = answer_csv(pipe, args.input, args.output, batch_size=args.batch_size, frame=args.frame)
    print(f"wrote {n} answers to {args.output}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of `m3ae predict`."""
    from m3ae.inference.pipeline import VQAPipeline

    mode = check_arguments(args)
    pipe = VQAPipeline.from_pretrained(args.model, device=args.device, precision=args.precision)
    return run_single(pipe, args) if mode == "single" else run_batch(pipe, args)
