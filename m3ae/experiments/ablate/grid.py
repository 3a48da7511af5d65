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
import contextlib
import copy
import dataclasses
import json
import math
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3ae.errors import M3AEError

ABLATE_MARKER = ".m3ae-ablate"
"""Marks a folder `m3ae ablate` wrote (it never writes into or deletes anything else)."""
RESULT = "result.json"
"""A unit's finished marker and result."""
METRICS = ("open", "closed", "overall")


# ------------------------------------------------------------------------------------ grids
@dataclass(frozen=True)
class Cell:
    """One configuration of a grid.

    ``pretrain`` and ``finetune`` are nested overrides, deep-merged into the grid's recipes (e.g.
    ``{"task": {"mask_ratio": 0.5}}``; ``model.config`` takes the model's dotted keys, e.g.
    ``{"model": {"config": {"pixel_decoder.type": "mlp"}}}``). ``pretrain: None`` = no pre-training:
    fine-tune from the model before pre-training.
    """

    name: str
    label: str = ""
    """What differs from the default, in words."""
    pretrain: dict[str, Any] | None = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    expect: str = "worse"
    """The paper's direction for this cell against the default: "worse", "better" or "" (none)."""


@dataclass(frozen=True)
class Scale:
    """Where a grid's recipes come from and how long they train."""

    kind: str
    """"small": the demo's m3ae-small recipes on the bundled VQA-RAD; "paper": YAML recipes + user data."""
    pretrain_steps: int = 0
    finetune_epochs: float = 0.0
    finetune_max_steps: int | None = None
    subset_images: int | None = None
    """small: use only this many train images (the --quick grid)."""
    batch_size: int = 32
    pretrain_recipe: str = "configs/pretrain/m3ae.yaml"
    finetune_recipe: str = "configs/finetune/vqa_rad.yaml"


@dataclass(frozen=True)
class Grid:
    name: str
    description: str
    scale: Scale
    cells: tuple[Cell, ...]
    default: str = "default"
    """Name of the cell every other cell is compared with."""

    def __post_init__(self) -> None:
        names = [c.name for c in self.cells]
        if len(set(names)) != len(names):
            raise M3AEError(f"grid {self.name}: duplicate cell names {sorted({n for n in names if names.count(n) > 1})}")
        if self.default not in names:
            raise M3AEError(f"grid {self.name}: no cell named {self.default!r} to compare with (cells: {names})")


SMALL = Scale("small", pretrain_steps=50, finetune_epochs=4)
"""designs-small / steps-small: 50 pre-training steps (batch 32, 1,600 pairs) and 4 fine-tuning epochs
(344 steps) per unit: measured 53 s + 104 s on one core, so 14 cells x 3 seeds, two units at a time,
fit into an hour on a 2-core CPU (docs/ablation.md). The demo trains 6x / 2.5x longer."""
QUICK = Scale("small", pretrain_steps=2, finetune_epochs=1, finetune_max_steps=2, subset_images=16, batch_size=8)
PAPER = Scale("paper")


def design_cells(middle_layer: int) -> tuple[Cell, ...]:
    """The cells of the designs grids; ``middle_layer`` = the fusion layer MIM reads by default."""
    model = lambda **kw: {"model": {"config": kw}}  # noqa: E731
    return (
        Cell("default", "the M3AE recipe (image mask 0.75, text mask 0.15, MIM from the middle, "
                        "MLM from the last layer, transformer pixel decoder, MLP text decoder)", expect=""),
        *(Cell(f"image-mask-{r:g}", f"image mask ratio {r:g}", {"task": {"mask_ratio": r}}) for r in (0.15, 0.5, 0.9)),
        *(Cell(f"text-mask-{r:g}", f"text mask ratio {r:g}", {"data": {"mlm_probability": r}}) for r in (0.3, 0.5)),
        Cell("mim-last-layer", "MIM reads the last fusion layer", model(mim_layer=-1)),
        Cell("mlm-middle-layer", f"MLM reads fusion layer {middle_layer}", model(mlm_layer=middle_layer)),
        Cell("mlp-pixel-decoder", "an MLP pixel decoder instead of the transformer", model(**{"pixel_decoder.type": "mlp"})),
        Cell("transformer-text-decoder", "a transformer text decoder instead of the MLP",
             model(mlm_decoder="transformer")),
        Cell("no-mim", "without MIM", {"task": {"mim_weight": 0.0}}),
        Cell("no-mlm", "without MLM", {"task": {"mlm_weight": 0.0}}),
        Cell("no-itm", "without ITM", {"task": {"itm_weight": 0.0}}),
        Cell("no-pretraining", "no pre-training (the same fine-tune from the initial model)", None),
    )


def steps_cells(default_steps: int) -> tuple[Cell, ...]:
    """Pre-training length as a share of the default."""
    cells = []
    for share in (0.0, 0.25, 0.5, 1.0, 2.0):
        steps = round(default_steps * share)
        name = "default" if share == 1.0 else f"steps-{share:.0%}"
        expect = "" if share == 1.0 else ("better" if share > 1 else "worse")
        pretrain = None if steps == 0 else {"train": {"max_steps": steps}}
        cells.append(Cell(name, f"{share:.0%} of the pre-training steps ({steps})", pretrain, expect=expect))
    return tuple(cells)


def builtin_grids() -> dict[str, Grid]:
    return {
        "designs-small": Grid("designs-small", "the three designs and the objectives, m3ae-small on the bundled "
                                               "VQA-RAD (clean protocol)", SMALL, design_cells(1)),
        "steps-small": Grid("steps-small", "pre-training length, m3ae-small on the bundled VQA-RAD",
                            SMALL, steps_cells(SMALL.pretrain_steps)),
        "designs-paper": Grid("designs-paper", "the designs at paper scale: m3ae-base pre-trained on ROCO + MedICaT, "
                                               "fine-tuned on VQA-RAD (for a GPU cluster)", PAPER, design_cells(3)),
        "quick": Grid("quick", "two cells, a few steps on a data subset (CI)", QUICK,
                      (Cell("default", "the M3AE recipe", expect=""),
                       Cell("no-mim", "without MIM", {"task": {"mim_weight": 0.0}}))),
    }


def grid_from_file(path: Path) -> Grid:
    """A user's grid: YAML with ``cells`` (name, label, pretrain, finetune, expect) and optionally
    ``base`` (a built-in grid whose scale and recipes it uses; default designs-small), ``name`` and
    ``default`` (the cell to compare with)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise M3AEError(f"{path}: cannot read the grid ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cells"), list) or not doc["cells"]:
        raise M3AEError(f"{path}: a grid file needs a non-empty list `cells`")
    grids = builtin_grids()
    base = doc.get("base", "designs-small")
    if base not in grids:
        raise M3AEError(f"{path}: base {base!r} is not a built-in grid ({sorted(grids)})")
    cells = []
    for i, item in enumerate(doc["cells"], start=1):
        if not isinstance(item, dict) or "name" not in item:
            raise M3AEError(f"{path}: cell {i} needs a `name`")
        unknown = set(item) - {f.name for f in dataclasses.fields(Cell)}
        if unknown:
            raise M3AEError(f"{path}: cell {item['name']!r} has unknown keys {sorted(unknown)}")
        for key in ("pretrain", "finetune"):
            if item.get(key) is not None and not isinstance(item[key], dict):
                raise M3AEError(f"{path}: cell {item['name']!r}: `{key}` must be a mapping of overrides")
        item = {"pretrain": {}, "finetune": {}, **item}
        cells.append(Cell(**{**item, "name": str(item["name"]), "finetune": item["finetune"] or {}}))
    return Grid(str(doc.get("name", path.stem)), str(doc.get("description", f"grid from {path}")),
                grids[base].scale, tuple(cells), str(doc.get("default", cells[0].name)))


def find_grid(name: str) -> Grid:
    grids = builtin_grids()
    if name in grids:
        return grids[name]
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise M3AEError(f"{path}: grid file not found")
        return grid_from_file(path)
    raise M3AEError(f"unknown grid {name!r}; built-in: {', '.join(grids)}; or give a YAML file")


# ---------------------------------------------------------------------------------- recipes
def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``overrides`` merged in (nested mappings merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Inputs:
    """Prepared data and recipe sources of a run."""

    pretrain_data: list[str]
    finetune_data: str
    text_dir: str | None = None
    """small: the frozen MiniLM text tower folder."""


def base_recipes(scale: Scale, inputs: Inputs, seed: int, pretrained: str | None) -> tuple[dict, dict]:
    """The grid's pre-training and fine-tuning recipes (as dicts) for one seed, before cell overrides.

    ``pretrained``: the pre-trained folder the fine-tune starts from, or None (no pre-training).
    """
    if scale.kind == "small":
        from m3ae import demo

        sizes = dataclasses.replace(demo.FULL, pretrain_steps=scale.pretrain_steps,
                                    finetune_epochs=scale.finetune_epochs, finetune_max_steps=scale.finetune_max_steps,
                                    batch_size=scale.batch_size, finetune_batch_size=scale.batch_size,
                                    subset_images=scale.subset_images)
        text = Path(inputs.text_dir)
        pre = demo.pretrain_config(sizes, seed, text)
        fine = demo.finetune_config(sizes, seed, text, Path(pretrained) if pretrained else None)
        for recipe in (pre, fine):
            recipe["train"]["progress"] = False
        return pre, fine
    import yaml

    recipes = []
    for path in (scale.pretrain_recipe, scale.finetune_recipe):
        if not Path(path).is_file():
            raise M3AEError(f"{path}: recipe not found (run from the repository root, where configs/ is)")
        recipes.append(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
    pre, fine = recipes
    pre = deep_merge(pre, {"train": {"seed": seed}})
    fine = deep_merge(fine, {"train": {"seed": seed}})
    if pretrained:
        fine["model"]["pretrained"] = pretrained
    else:  # the same towers as pre-training starts from, no fusion weights
        fine["model"].update(pretrained=None, vision_weights=pre["model"].get("vision_weights"),
                             text_weights=pre["model"].get("text_weights"))
    return pre, fine


def unit_recipes(grid: Grid, cell: Cell, inputs: Inputs, seed: int, folder: Path) -> dict[str, dict | None]:
    """Both recipes of one unit with the cell's overrides applied; "pretrain" is None without pre-training."""
    pretrained = None if cell.pretrain is None else str(folder / "pretrain" / "best")
    pre, fine = base_recipes(grid.scale, inputs, seed, pretrained)
    return {"pretrain": None if cell.pretrain is None else deep_merge(pre, cell.pretrain),
            "finetune": deep_merge(fine, cell.finetune)}


def check_recipes(grid: Grid, inputs: Inputs) -> None:
    """Every cell's recipes parse (a typo in a grid fails before hours of training, naming the cell)."""
    from m3ae.train.config import config_from_dict

    for cell in grid.cells:
        for stage, recipe in unit_recipes(grid, cell, inputs, 0, Path("unit")).items():
            if recipe is not None:
                config_from_dict(recipe, where=f"grid {grid.name}, cell {cell.name!r}, {stage} recipe")


# ------------------------------------------------------------------------------------ units
def stage_done(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file() and (run_dir / "best").is_dir()


def pretrain_losses(run_dir: Path, tail: float = 0.2) -> dict[str, float]:
    """Mean of each pre-training loss over the last ``tail`` share of the logged steps."""
    from m3ae.viz import read_log

    log = run_dir / "log.jsonl"
    records = [r for r in read_log(log) if "loss" in r and "step" in r] if log.is_file() else []
    if not records:
        return {}
    last = records[-max(1, math.ceil(len(records) * tail)):]
    keys = [k for k in ("loss", "mlm_loss", "mim_loss", "itm_loss") if all(k in r for r in last)]
    return {k: round(sum(r[k] for r in last) / len(last), 4) for k in keys}


def run_stage(kind: str, recipe: dict, data: list[str] | str, run_dir: Path) -> dict[str, Any]:
    """One training stage (the demo's `train_stage`: "pretrain" or "finetune") into a fresh run folder;
    a finished one is kept, an unfinished one from a killed run is replaced."""
    from m3ae import demo

    if stage_done(run_dir):
        return json.loads((run_dir / "metrics.json").read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    return demo.train_stage(kind, recipe, data, run_dir, where=f"{run_dir} recipe")


def run_unit(unit: dict[str, Any]) -> dict[str, Any]:
    """Worker: pre-train (unless the cell has none), fine-tune, write ``result.json``; returns it.

    Output of the training code goes to the unit's ``log.txt``.
    """
    import torch

    from m3ae.train.checkpoint import atomic_write_text

    folder = Path(unit["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(unit["threads"])
    start = time.perf_counter()
    with open(folder / "log.txt", "a", encoding="utf-8") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        losses: dict[str, float] = {}
        if unit["recipes"]["pretrain"] is not None:
            run_stage("pretrain", unit["recipes"]["pretrain"], unit["pretrain_data"], folder / "pretrain")
            losses = pretrain_losses(folder / "pretrain")
        metrics = run_stage("finetune", unit["recipes"]["finetune"], unit["finetune_data"], folder / "finetune")
    result = {"cell": unit["cell"], "seed": unit["seed"],
              **{k: float(metrics[k]) for k in METRICS},
              "best_step": metrics.get("best_step"), "pretrain_losses": losses,
              "seconds": round(time.perf_counter() - start, 1), "threads": unit["threads"]}
    atomic_write_text(folder / RESULT, json.dumps(result, indent=2) + "\n")
    return result


def unit_dir(out: Path, cell: str, seed: int) -> Path:
    return out / "cells" / cell / f"seed_{seed}"


def read_results(out: Path, grid: Grid, seeds: list[int]) -> list[dict[str, Any]]:
    """The finished units of this grid and seeds, in grid order."""
    found = []
    for seed in seeds:
        for cell in grid.cells:
            path = unit_dir(out, cell.name, seed) / RESULT
            if path.is_file():
                try:
                    found.append(json.loads(path.read_text()))
                except json.JSONDecodeError as err:
                    raise M3AEError(f"{path}: not valid JSON ({err.msg}); delete it to rerun that unit") from None
    return found


# ---------------------------------------------------------------------------------- results
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
"""Two-sided 95% quantiles of Student's t by degrees of freedom (1.96 beyond 30)."""


def t_quantile(df: int) -> float:
    if df > 30:
        return 1.96
    return T_975[min(k for k in T_975 if k >= df)]  # conservative between table rows


def summarise(grid: Grid, results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per cell: mean and sd of each metric over seeds, and the seed-paired difference of ``overall``
    to the default cell with a 95% t interval (None with fewer than two paired seeds)."""
    from m3ae.metrics import mean_sd

    by_cell: dict[str, dict[int, dict]] = {}
    for r in results:
        by_cell.setdefault(r["cell"], {})[r["seed"]] = r
    default = by_cell.get(grid.default, {})
    summary = {}
    for cell in grid.cells:
        runs = by_cell.get(cell.name)
        if not runs:
            continue
        row: dict[str, Any] = {"seeds": sorted(runs), "label": cell.label, "expect": cell.expect}
        for key in METRICS:
            row[key], row[f"{key}_sd"] = mean_sd([r[key] for r in runs.values()])
        paired = [runs[s]["overall"] - default[s]["overall"] for s in sorted(runs) if s in default]
        if cell.name != grid.default and paired:
            diff, sd = mean_sd(paired)
            half = t_quantile(len(paired) - 1) * sd / math.sqrt(len(paired)) if len(paired) > 1 else None
            row.update(diff=diff, ci=None if half is None else (diff - half, diff + half))
            row["verdict"] = verdict(cell.expect, row["ci"])
        summary[cell.name] = row
    return summary


def verdict(expect: str, ci: tuple[float, float] | None) -> str:
    """Whether a cell's difference to the default goes the paper's way, beyond the 95% interval."""
    if ci is None:
        return "one seed: no interval"
    side = "worse" if ci[1] < 0 else "better" if ci[0] > 0 else ""
    if not side:
        return "within noise"
    if not expect:
        return side
    return f"{side}: reproduces the paper" if side == expect else f"{side}: opposite of the paper"


def results_markdown(grid: Grid, summary: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results table: mean ± sd per cell, the difference to the default and its interval."""
    lines = [f"# Ablation `{grid.name}`", "", grid.description + ".", "",
             f"Seeds {meta['seeds']}; {meta['units_done']} of {meta['units']} units finished; "
             f"wall time {meta['wall_minutes']:.1f} min; {meta['machine']}.", "",
             "VQA-RAD test accuracy (%) of the model chosen on the val split; mean ± sd over seeds. "
             f"Δ = overall minus the `{grid.default}` cell's, paired by seed, with a 95% t interval.", "",
             "| cell | what changes | open | closed | overall | Δ overall [95% CI] | reading |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, row in summary.items():
        cells = [f"{row[k]:.1f} ± {row[k + '_sd']:.1f}" for k in METRICS]
        if name == grid.default:
            diff, reading, name_md = "", "reference", f"**{name}**"
        else:
            ci = row.get("ci")
            diff = "" if "diff" not in row else f"{row['diff']:+.1f}" + (
                f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "")
            reading, name_md = row.get("verdict", "no default run to compare"), name
        lines.append(f"| {name_md} | {row['label']} | {' | '.join(cells)} | {diff} | {reading} |")
    return "\n".join(lines) + "\n"


def plot_ablation(grid: Grid, summary: dict[str, dict[str, Any]], path: Path) -> Path:
    """Horizontal bars of mean overall accuracy with sd error bars; the default cell highlighted."""
    from m3ae.viz import _pyplot, _save

    plt = _pyplot()
    names = list(summary)
    means = [summary[n]["overall"] for n in names]
    sds = [summary[n]["overall_sd"] for n in names]
    colours = ["#d62728" if n == grid.default else "#1f77b4" for n in names]
    fig, ax = plt.subplots(figsize=(7.5, 0.38 * len(names) + 1.4))
    ax.barh(range(len(names)), means, xerr=sds, color=colours, capsize=3)
    if grid.default in summary:
        ax.axvline(summary[grid.default]["overall"], color="#d62728", linestyle="--", linewidth=1)
    for i, (m, s) in enumerate(zip(means, sds)):
        ax.text(m + s + 0.5, i, f"{m:.1f}", va="center", fontsize=7)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    low = min(m - s for m, s in zip(means, sds))
    ax.set_xlim(max(0.0, low - 5), max(m + s for m, s in zip(means, sds)) + 6)
    seeds = sorted({s for row in summary.values() for s in row["seeds"]})
    ax.set_xlabel(f"VQA-RAD test overall accuracy (%), mean ± sd over seeds {seeds}")
    ax.set_title(f"m3ae ablate: {grid.name} (red: the default recipe)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def write_outputs(out: Path, grid: Grid, seeds: list[int], units: int, workers: str = "") -> dict[str, Any]:
    """results.json, results.md and ablation.png from the finished units on disk."""
    from m3ae.hardware import describe
    from m3ae.train.checkpoint import atomic_write_text

    results = read_results(out, grid, seeds)
    wall_file = out / "wall_seconds.json"
    wall = json.loads(wall_file.read_text())["seconds"] if wall_file.is_file() else 0.0
    summary = summarise(grid, results)
    meta = {"grid": grid.name, "seeds": seeds, "units": units, "units_done": len(results),
            "wall_minutes": round(wall / 60, 2),
            "machine": describe() + (f"; units ran as {workers}" if workers else ""),
            "scale": dataclasses.asdict(grid.scale), "default": grid.default}
    doc = {**meta, "cells": [dataclasses.asdict(c) for c in grid.cells], "runs": results, "summary": summary}
    atomic_write_text(out / "results.json", json.dumps(doc, indent=2) + "\n")
    atomic_write_text(out / "results.md", results_markdown(grid, summary, meta))
    if summary:
        plot_ablation(grid, summary, out / "ablation.png")
    return doc


# -------------------------------------------------------------------------------- data + CLI
def small_inputs(out: Path) -> Inputs:
    """Where the small grids' prepared data lives in a grid folder, and the frozen MiniLM tower."""
    from m3ae import demo

    return Inputs([str(out / "data" / "pretrain")], str(out / "data" / "vqa_rad"), str(demo.minilm_folder()))


def prepare_small(out: Path, src: Path, scale: Scale, seed: int) -> Inputs:
    """The bundled VQA-RAD (clean protocol) and its train-split caption pairs, prepared once per grid
    folder (a rerun reuses them: a prepared folder's summary.json is written last, atomically)."""
    from m3ae import demo
    from m3ae.data.storage import SUMMARY_FILE

    inputs = small_inputs(out)
    if all((Path(d) / SUMMARY_FILE).is_file() for d in (*inputs.pretrain_data, inputs.finetune_data)):
        return inputs
    raw = demo.subset_raw(src, out / "raw" / "vqa_rad", scale.subset_images) if scale.subset_images else src
    demo.prepare_vqa_and_pairs(raw, out, demo.DEMO_IMAGE_SIZE, seed)
    return inputs


def claim_out(out: Path, grid: Grid) -> None:
    """Create ``out`` or reuse one this command wrote for the same grid; never touch another folder."""
    marker = out / ABLATE_MARKER
    if out.exists() and any(out.iterdir()):
        if not marker.is_file():
            raise M3AEError(f"{out} exists and was not written by `m3ae ablate` (no {ABLATE_MARKER}); "
                            "choose another --out")
        previous = marker.read_text().strip()
        if previous and previous != grid.name:
            raise M3AEError(f"{out} holds the grid {previous!r}, not {grid.name!r}; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(grid.name + "\n")


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


def list_grids() -> str:
    lines = []
    for grid in builtin_grids().values():
        scale = grid.scale
        length = (f"{scale.pretrain_steps} pre-training steps, {scale.finetune_epochs:g} fine-tuning epochs"
                  if scale.kind == "small" else f"recipes {scale.pretrain_recipe} + {scale.finetune_recipe}")
        lines.append(f"{grid.name}: {grid.description} ({length})")
        lines += [f"  {c.name:<26} {c.label}" for c in grid.cells]
    return "\n".join(lines)


def grid_inputs(args: argparse.Namespace, grid: Grid, out: Path) -> Inputs:
    if grid.scale.kind == "paper":
        if not args.pretrain_data or not args.finetune_data:
            raise M3AEError(f"grid {grid.name} runs at paper scale: give --pretrain-data (prepared ROCO / MedICaT "
                            "folders) and --finetune-data (prepared VQA-RAD); see docs/ablation.md")
        return Inputs(list(args.pretrain_data), args.finetune_data)
    from m3ae import demo

    if args.dry_run:
        return small_inputs(out)
    return prepare_small(out, demo.find_src(args.src), grid.scale, seed=0)


def default_jobs(cores: int) -> int:
    return 2 if cores >= 2 else 1


def run(args: argparse.Namespace) -> int:
    """Entry point of `m3ae ablate`."""
    from m3ae.hardware import describe, usable_cores

    if args.list:
        print(list_grids())
        return 0
    grid = find_grid("quick" if args.quick else args.grid)
    seeds = list(dict.fromkeys(args.seeds))
    if len(seeds) != len(args.seeds):
        raise M3AEError(f"--seeds has duplicates: {args.seeds}")
    cores = usable_cores()
    jobs = args.jobs or default_jobs(cores)
    if jobs < 1:
        raise M3AEError(f"--jobs must be at least 1, got {jobs}")
    if args.max_minutes < 0:
        raise M3AEError(f"--max-minutes must be >= 0, got {args.max_minutes:g}")
    threads = max(1, cores // jobs)
    out = args.out
    if not args.dry_run:
        claim_out(out, grid)
    inputs = grid_inputs(args, grid, out)
    check_recipes(grid, inputs)
    units = [(seed, cell) for seed in seeds for cell in grid.cells]  # every cell of seed 0 first
    print(f"m3ae ablate: grid {grid.name} ({len(grid.cells)} cells x {len(seeds)} seeds = {len(units)} units) "
          f"into {out}/; {jobs} job(s) x {threads} thread(s); {describe()}", flush=True)
    if args.dry_run:
        for seed, cell in units:
            pre = "no pre-training" if cell.pretrain is None else f"pretrain {json.dumps(cell.pretrain)}"
            print(f"  seed {seed} {cell.name:<26} {pre}; finetune {json.dumps(cell.finetune)}")
        return 0
    start = time.perf_counter()
    try:
        Runner(grid, units, inputs, out, jobs, threads, args.max_minutes).run()
    finally:
        add_wall_time(out, time.perf_counter() - start)
    doc = write_outputs(out, grid, seeds, len(units), workers=f"{jobs} job(s) x {threads} torch thread(s)")
    print(results_markdown(grid, doc["summary"], doc))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}" + (f", {out / 'ablation.png'}" if doc["summary"] else ""))
    left = len(units) - doc["units_done"]
    if left:
        print(f"{left} unit(s) not run yet; rerun the same command to continue", flush=True)
    return 0


def add_wall_time(out: Path, seconds: float) -> float:
    """Add one invocation's training wall time to the grid folder's total (a resumed grid counts all runs)."""
    path = out / "wall_seconds.json"
    total = (json.loads(path.read_text()).get("seconds", 0.0) if path.is_file() else 0.0) + seconds
    path.write_text(json.dumps({"seconds": round(total, 1)}) + "\n")
    return total


class Runner:
    """Runs the units that have no result yet, ``jobs`` at a time, with progress and a time limit."""

    def __init__(self, grid: Grid, units: list[tuple[int, Cell]], inputs: Inputs, out: Path, jobs: int,
                 threads: int, max_minutes: float) -> None:
        self.grid, self.inputs, self.out, self.jobs, self.threads = grid, inputs, out, jobs, threads
        self.deadline = time.perf_counter() + max_minutes * 60 if max_minutes else math.inf
        self.todo = [(s, c) for s, c in units if not (unit_dir(out, c.name, s) / RESULT).is_file()]
        self.total, self.done, self.seconds = len(units), len(units) - len(self.todo), []
        if self.done:
            print(f"{self.done} unit(s) already finished in {out}/: not recomputed", flush=True)

    def spec(self, seed: int, cell: Cell) -> dict[str, Any]:
        folder = unit_dir(self.out, cell.name, seed)
        return {"cell": cell.name, "seed": seed, "dir": str(folder), "threads": self.threads,
                "recipes": unit_recipes(self.grid, cell, self.inputs, seed, folder),
                "pretrain_data": self.inputs.pretrain_data, "finetune_data": self.inputs.finetune_data}

    def may_start(self) -> bool:
        now = time.perf_counter()
        expected = sum(self.seconds) / len(self.seconds) if self.seconds else 0.0
        return now + expected <= self.deadline

    def eta(self) -> str:
        if not self.seconds:
            return "time left: measuring"
        left = (self.total - self.done) * (sum(self.seconds) / len(self.seconds)) / self.jobs
        return f"about {left / 60:.0f} min left"

    def run(self) -> None:
        import multiprocessing

        if not self.todo:
            return
        pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=multiprocessing.get_context("spawn"))
        running: dict[Future, tuple[int, Cell, float]] = {}
        queue = list(self.todo)
        try:
            while queue or running:
                while queue and len(running) < self.jobs and self.may_start():
                    seed, cell = queue.pop(0)
                    print(f"[{self.done + len(running) + 1}/{self.total}] start cell {cell.name}, seed {seed} "
                          f"({self.eta()}; log: {unit_dir(self.out, cell.name, seed) / 'log.txt'})", flush=True)
                    running[pool.submit(run_unit, self.spec(seed, cell))] = (seed, cell, time.perf_counter())
                if not running:
                    print(f"--max-minutes reached: {len(queue)} unit(s) left for the next run", flush=True)
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    seed, cell, started = running.pop(future)
                    self.finish(future, seed, cell, started)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def finish(self, future: Future, seed: int, cell: Cell, started: float) -> None:
        try:
            result = future.result()
        except Exception as err:  # noqa: BLE001 - one failed unit must not lose the others
            log = unit_dir(self.out, cell.name, seed) / "log.txt"
            raise M3AEError(f"cell {cell.name}, seed {seed} failed: {err} (see {log}); finished units are kept, "
                            "rerun to continue") from None
        self.done += 1
        self.seconds.append(time.perf_counter() - started)
        print(f"[{self.done}/{self.total}] done  cell {cell.name}, seed {seed}: overall {result['overall']:.1f} "
              f"(open {result['open']:.1f}, closed {result['closed']:.1f}) in {result['seconds']:.0f} s; {self.eta()}",
              flush=True)
