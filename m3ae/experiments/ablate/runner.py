"""Running a grid: each (cell, seed) unit pre-trains, fine-tunes on VQA and scores the test split in its
own run folders, in worker processes, ``jobs`` at a time; a finished unit (its result.json) is never
recomputed, so a rerun continues a grid."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from m3ae.errors import M3AEError
from m3ae.experiments.ablate.grid import (
    ABLATE_MARKER,
    METRICS,
    RESULT,
    Cell,
    Grid,
    Inputs,
    Scale,
    check_recipes,
    find_grid,
    unit_dir,
    unit_recipes,
)
from m3ae.experiments.ablate.report import results_markdown, write_outputs


def stage_done(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file() and (run_dir / "best").is_dir()


def pretrain_losses(run_dir: Path, tail: float = 0.2) -> dict[str, float]:
    """Mean of each pre-training loss over the last ``tail`` share of the logged steps."""
    from m3ae.reports.viz import read_log

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
    from m3ae.experiments import demo

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


def small_inputs(out: Path) -> Inputs:
    """Where the small grids' prepared data lives in a grid folder, and the frozen MiniLM tower."""
    from m3ae.experiments import demo

    return Inputs([str(out / "data" / "pretrain")], str(out / "data" / "vqa_rad"), str(demo.minilm_folder()))


def prepare_small(out: Path, src: Path, scale: Scale, seed: int) -> Inputs:
    """The bundled VQA-RAD (clean protocol) and its train-split caption pairs, prepared once per grid
    folder (a rerun reuses them: a prepared folder's summary.json is written last, atomically)."""
    from m3ae.data.storage import SUMMARY_FILE
    from m3ae.experiments import demo

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


def grid_inputs(grid: Grid, out: Path, src: Path | None, pretrain_data: list[str] | None,
                finetune_data: str | None, dry_run: bool) -> Inputs:
    """The data of a grid: given prepared folders at paper scale, else the bundled VQA-RAD prepared
    under ``out`` (not prepared for a dry run)."""
    if grid.scale.kind == "paper":
        if not pretrain_data or not finetune_data:
            raise M3AEError(f"grid {grid.name} runs at paper scale: give --pretrain-data (prepared ROCO / MedICaT "
                            "folders) and --finetune-data (prepared VQA-RAD); see docs/ablation.md")
        return Inputs(list(pretrain_data), finetune_data)
    from m3ae.experiments import demo

    if dry_run:
        return small_inputs(out)
    return prepare_small(out, demo.find_src(src), grid.scale, seed=0)


def default_jobs(cores: int) -> int:
    return 2 if cores >= 2 else 1


def run_grid(grid_name: str = "designs-small", out: Path = Path("runs/ablate"), seeds: list[int] = (0, 1, 2),
             jobs: int | None = None, max_minutes: float = 0.0, src: Path | None = None,
             pretrain_data: list[str] | None = None, finetune_data: str | None = None, quick: bool = False,
             dry_run: bool = False) -> int:
    """Run (or continue) a grid into ``out``: every unit without a result, ``jobs`` at a time, then
    results.json/md and ablation.png. Returns the exit code (`m3ae ablate`; see its --help)."""
    from m3ae.hardware import describe, usable_cores

    grid = find_grid("quick" if quick else grid_name)
    unique = list(dict.fromkeys(seeds))
    if len(unique) != len(seeds):
        raise M3AEError(f"--seeds has duplicates: {list(seeds)}")
    seeds = unique
    cores = usable_cores()
    jobs = jobs or default_jobs(cores)
    if jobs < 1:
        raise M3AEError(f"--jobs must be at least 1, got {jobs}")
    if max_minutes < 0:
        raise M3AEError(f"--max-minutes must be >= 0, got {max_minutes:g}")
    threads = max(1, cores // jobs)
    if not dry_run:
        claim_out(out, grid)
    inputs = grid_inputs(grid, out, src, pretrain_data, finetune_data, dry_run)
    check_recipes(grid, inputs)
    units = [(seed, cell) for seed in seeds for cell in grid.cells]  # every cell of seed 0 first
    print(f"m3ae ablate: grid {grid.name} ({len(grid.cells)} cells x {len(seeds)} seeds = {len(units)} units) "
          f"into {out}/; {jobs} job(s) x {threads} thread(s); {describe()}", flush=True)
    if dry_run:
        for seed, cell in units:
            pre = "no pre-training" if cell.pretrain is None else f"pretrain {json.dumps(cell.pretrain)}"
            print(f"  seed {seed} {cell.name:<26} {pre}; finetune {json.dumps(cell.finetune)}")
        return 0
    start = time.perf_counter()
    try:
        Runner(grid, units, inputs, out, jobs, threads, max_minutes).run()
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
