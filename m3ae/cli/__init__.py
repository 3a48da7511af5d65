"""The `m3ae` command line: one entry point, one subcommand per job.

Each subcommand is one module of this package (``m3ae/cli/<command>.py``) with two functions:
``add_arguments(parser)``, its argument table, and ``run(args) -> int``, a call into the library.
The module's docstring is the command's ``--help`` description. This file only dispatches, and
imports a subcommand's module lazily so that ``m3ae --help`` stays fast and the model package
never pulls in training extras. No module of the library imports ``m3ae.cli``: a new command is a
new module here plus its line in ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from m3ae.allocator import set_malloc_policy
from m3ae.errors import M3AEError

# name -> (module of m3ae.cli, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("prepare", "prepare a benchmark from its raw release into the m3ae format"),
    "corpus": ("corpus", "build a pre-training corpus from prepared VQA folders, evaluation images "
                         "left out (by id and pixels)"),
    "pretrain": ("pretrain", "pre-train M3AE (MLM + MIM + ITM) from a YAML recipe"),
    "finetune": ("finetune", "fine-tune on VQA, classification or retrieval from a YAML recipe"),
    "evaluate": ("evaluate", "evaluate a saved model on a prepared data folder"),
    "convert": ("convert", "convert an official M3AE Lightning checkpoint to the m3ae format"),
    "predict": ("predict", "answer a question about an image (PNG, JPEG, DICOM) with a VQA model"),
    "serve": ("serve", "a local web page and JSON API for a VQA model, with answer heat maps"),
    "demo": ("demo", "the whole pipeline on the bundled VQA-RAD data, on CPU, in minutes"),
    "ablate": ("ablate", "the paper's ablations as one grid: pre-train + fine-tune each cell and seed, then "
                         "tabulate and plot"),
    "push": ("push", "upload a model folder to the Hugging Face Hub (huggingface_hub)"),
    "export": ("export", "export a model folder to ONNX (VQA logits and encoder features)"),
    "embed": ("embed", "write image, text and joint embeddings of a data set to Parquet"),
    "bench": ("bench", "time a pre-training step, a VQA step or inference on this machine (fresh process)"),
    "gpu-check": ("gpu_check", "check and measure the library on one CUDA GPU in under 10 minutes (parity "
                               "with CPU, base-size steps and MFU, latency, NCCL): JSON + Markdown"),
}


INFERENCE_COMMANDS = ("evaluate", "predict", "serve", "embed")
"""Commands that run the model without training: the allocator keeps freed blocks (m3ae.allocator)."""


class _LazyHelpFormatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; subcommand options are added only for the command being run."""
    parser = argparse.ArgumentParser(
        prog="m3ae",
        description="M3AE: multi-modal masked autoencoders for medical vision-and-language pre-training.",
        formatter_class=_LazyHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _one_line(err: BaseException) -> str:
    """An error as one line: multi-line messages (key lists) joined, the type named when unclear."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, M3AEError) else f"{type(err).__name__}: {text}"


def _run_command(name: str, module, args: argparse.Namespace) -> int:
    """Run one subcommand; every failure is one line on stderr and exit code 2 (130 when
    interrupted), with the traceback only under ``--debug`` or ``M3AE_DEBUG=1``."""
    debug = args.debug or os.environ.get("M3AE_DEBUG", "") not in ("", "0")
    try:
        if name in INFERENCE_COMMANDS:  # training sets its policy from train.memory
            set_malloc_policy("keep")
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"m3ae {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place that turns any failure into a message
        if debug:
            traceback.print_exc()
        # M3AEError: bad user input; OSError: disk full, permission denied: the user can act on both
        if isinstance(err, (M3AEError, OSError)):
            print(f"m3ae {name}: error: {_one_line(err)}", file=sys.stderr)
        else:
            hint = "" if debug else " (rerun with --debug or M3AE_DEBUG=1 for the traceback)"
            print(f"m3ae {name}: error: unexpected {_one_line(err)}{hint}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Run the CLI. Callable from tests: returns the exit code instead of exiting."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        name = argv[0]
        module = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
        parser = argparse.ArgumentParser(
            prog=f"m3ae {name}",
            description=(module.__doc__ or COMMANDS[name][1]).strip(),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(parser)
        parser.add_argument("--debug", action="store_true",
                            help="show the traceback of an error (same as M3AE_DEBUG=1)")
        args = parser.parse_args(argv[1:])
        return _run_command(name, module, args)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from m3ae import __version__

        print(__version__)
        return 0
    parser.print_help()
    return 0 if not argv else 2

