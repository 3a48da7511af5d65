"""`m3ae ablate`: the paper's analysis as one command.

A grid is a list of cells; a cell is a set of overrides of the pre-training and the fine-tuning
recipes (or "no pre-training"). Each (cell, seed) unit pre-trains, fine-tunes on VQA (model chosen
on the val split) and scores the test split once, in its own run folders under
``OUT/cells/<cell>/seed_<s>/``, with the same training code as ``m3ae pretrain`` / ``m3ae finetune``
(each stage folder keeps its ``config.yaml``, so any unit can be rerun by hand).

Built-in grids (``--list`` prints them):

* ``designs-small`` (default): the three key designs and the objectives at laptop scale, on the
  bundled VQA-RAD (clean protocol) with the demo's m3ae-small recipes;
* ``steps-small``: pre-training length 0 / 25 / 50 / 100 / 200 % of the default;
* ``designs-paper``: the designs-small cells at paper scale (m3ae-base, ROCO + MedICaT, the
  recipes in ``configs/``), for a GPU cluster: give ``--pretrain-data`` and ``--finetune-data``.

A finished unit (its ``result.json``) is never recomputed: rerunning the same command after a
crash, a kill or ``--max-minutes`` continues where it stopped. ``--jobs N`` runs N units at a time
in worker processes, with the cores split between them. Output: ``results.json`` (every unit),
``results.md`` (mean ± sd per cell, the difference to the default cell with a 95% interval over
seeds, and whether it goes the paper's way) and ``ablation.png``.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `m3ae ablate`."""
    parser.add_argument("--grid", default="designs-small",
                        help="a built-in grid (designs-small, steps-small, designs-paper, quick) or a YAML grid "
                             "file; default designs-small")
    parser.add_argument("--out", type=Path, default=Path("runs/ablate"),
                        help="output folder; rerunning into it continues an unfinished grid (default runs/ablate)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds of every cell (default 0 1 2; the data split stays seed 0's)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="units run at a time, each in its own process with cores/jobs threads "
                             "(default: 2 on a machine with at least 2 cores, else 1)")
    parser.add_argument("--max-minutes", type=float, default=0.0,
                        help="start no new unit once this many minutes have passed, or when the next one is not "
                             "expected to finish in time (0 = no limit); rerun the command to continue")
    parser.add_argument("--src", type=Path, default=None,
                        help="raw VQA-RAD folder for the small grids (default: the bundled copy)")
    parser.add_argument("--pretrain-data", nargs="+", default=None,
                        help="paper grids: prepared pre-training folders (e.g. prepared/roco prepared/medicat)")
    parser.add_argument("--finetune-data", default=None, help="paper grids: the prepared VQA-RAD folder")
    parser.add_argument("--quick", action="store_true", help="the `quick` grid (two cells, a few steps; CI)")
    parser.add_argument("--list", action="store_true", help="print the built-in grids and their cells, then exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="check every cell's recipes and print the units without training")



def run(args: argparse.Namespace) -> int:
    """Entry point of `m3ae ablate`."""
    from m3ae.experiments.ablate import list_grids, run_grid

    if args.list:
        print(list_grids())
        return 0
    return run_grid(args.grid, args.out, args.seeds, jobs=args.jobs, max_minutes=args.max_minutes, src=args.src,
                    pretrain_data=args.pretrain_data, finetune_data=args.finetune_data, quick=args.quick,
                    dry_run=args.dry_run)
