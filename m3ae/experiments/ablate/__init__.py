"""`m3ae ablate`: the paper's analysis as one grid of (cell, seed) units, each pre-trained, fine-tuned
on VQA and scored on the test split in its own run folders.

* ``grid``: cells, scales, the built-in grids, YAML grid files and each unit's recipes;
* ``runner``: units in worker processes, resume by unit, ``run_grid`` (what the command calls);
* ``report``: mean ± sd per cell, intervals and verdicts (results.json/md) and ablation.png.
"""
from __future__ import annotations

from m3ae.experiments.ablate.grid import (  # noqa: F401 - the names other code reaches as ablate.<name>
    ABLATE_MARKER,
    METRICS,
    PAPER,
    QUICK,
    RESULT,
    SMALL,
    Cell,
    Grid,
    Inputs,
    Scale,
    base_recipes,
    builtin_grids,
    check_recipes,
    deep_merge,
    design_cells,
    find_grid,
    grid_from_file,
    list_grids,
    steps_cells,
    unit_dir,
    unit_recipes,
)
from m3ae.experiments.ablate.report import read_results, results_markdown, summarise, verdict, write_outputs  # noqa: F401
from m3ae.experiments.ablate.runner import Runner, claim_out, run_grid, run_unit  # noqa: F401
