"""Shared argparse set-up of `m3ae pretrain` and `m3ae finetune` (recipe + dotted overrides)."""
from __future__ import annotations

import argparse
import re
from dataclasses import fields

from m3ae.train.config import SECTIONS, RunConfig, add_override_help, overrides_from_args


def add_run_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """``--config``, ``--data``, ``--out``, ``--resume`` and one ``--section.key`` per recipe field."""
    parser.add_argument("--config", required=True, metavar="FILE", help=f"YAML recipe, e.g. {example}")
    parser.add_argument("--data", required=True, metavar="DIR", nargs="+",
                        help="a folder written by `m3ae prepare`; pre-training accepts several "
                             "(e.g. ROCO and MedICaT), whose examples are concatenated")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="run folder: config.yaml, log.jsonl, checkpoints/, best/, metrics.json")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run folder's latest checkpoint (if any)")
    parser.epilog = ("Any recipe field can be overridden with --section.key VALUE (YAML syntax), "
                     "e.g. --optim.lr 5e-6 --train.max_steps 10 --model.pretrained runs/pt/best. "
                     "Launch on several devices with torchrun --nproc_per_node N -m m3ae.cli ...")
    add_override_help(parser)
    _explain_unknown_overrides(parser)


def _explain_unknown_overrides(parser: argparse.ArgumentParser) -> None:
    """Makes argparse's "unrecognized arguments" name the valid keys of the section that was meant."""
    original = parser.error
    defaults = RunConfig()

    def error(message: str):  # argparse calls this and exits
        match = re.search(r"--([A-Za-z_]+)\.([A-Za-z_.]+)", message)
        if "unrecognized arguments" in message and match:
            section = match.group(1)
            if section in SECTIONS:
                keys = sorted(f.name for f in fields(getattr(defaults, section)))
                message += f" (unknown key {match.group(2)!r} in {section}; valid keys: {keys})"
            else:
                message += f" (unknown section {section!r}; valid sections: {list(SECTIONS)})"
        original(message)

    parser.error = error  # type: ignore[method-assign]


def overrides(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The ``--section.key`` values given on the command line (strings, parsed later as YAML)."""
    return [(k, str(v)) for k, v in overrides_from_args(args)]


def data_arg(args: argparse.Namespace):
    """``--data`` as the runner takes it: one folder, or a list of folders to concatenate."""
    return args.data[0] if len(args.data) == 1 else list(args.data)
