"""The results of a grid: mean ± sd per cell, the difference to the default cell with a 95% interval
over seeds and whether it goes the paper's way (results.json, results.md), and ablation.png."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from m3ae.errors import M3AEError
from m3ae.experiments.ablate.grid import METRICS, RESULT, Grid, unit_dir


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
    from m3ae.reports.viz import _pyplot, _save

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
