"""`m3ae ablate`: the grids, the statistics of the table, and a --quick grid killed and resumed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from m3ae.experiments import ablate
from m3ae.errors import M3AEError
from m3ae.train.config import config_from_dict

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_designs_small_has_the_issue_cells_and_every_recipe_parses():
    grid = ablate.builtin_grids()["designs-small"]
    names = [c.name for c in grid.cells]
    assert names == ["default", "image-mask-0.15", "image-mask-0.5", "image-mask-0.9", "text-mask-0.3",
                     "text-mask-0.5", "mim-last-layer", "mlm-middle-layer", "mlp-pixel-decoder",
                     "transformer-text-decoder", "no-mim", "no-mlm", "no-itm", "no-pretraining"]
    inputs = ablate.Inputs(["pre"], "vqa", "minilm")
    ablate.check_recipes(grid, inputs)
    cells = {c.name: c for c in grid.cells}
    recipes = ablate.unit_recipes(grid, cells["image-mask-0.9"], inputs, 2, Path("u"))
    pre = config_from_dict(recipes["pretrain"])
    assert pre.task.mask_ratio == 0.9 and pre.train.seed == 2
    fine = config_from_dict(recipes["finetune"])
    assert fine.model.pretrained == str(Path("u") / "pretrain" / "best") and fine.train.seed == 2
    decoder = config_from_dict(ablate.unit_recipes(grid, cells["mlp-pixel-decoder"], inputs, 0, Path("u"))["pretrain"])
    assert decoder.model.config["pixel_decoder.type"] == "mlp"
    none = ablate.unit_recipes(grid, cells["no-pretraining"], inputs, 0, Path("u"))
    assert none["pretrain"] is None and config_from_dict(none["finetune"]).model.pretrained is None


def test_paper_grid_uses_the_repository_recipes(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    grid = ablate.builtin_grids()["designs-paper"]
    inputs = ablate.Inputs(["roco", "medicat"], "vqa_rad")
    ablate.check_recipes(grid, inputs)
    cells = {c.name: c for c in grid.cells}
    pre = config_from_dict(ablate.unit_recipes(grid, cells["mlm-middle-layer"], inputs, 1, Path("u"))["pretrain"])
    assert pre.model.name == "m3ae-base" and pre.model.config["mlm_layer"] == 3 and pre.train.seed == 1
    scratch = config_from_dict(ablate.unit_recipes(grid, cells["no-pretraining"], inputs, 0, Path("u"))["finetune"])
    assert scratch.model.pretrained is None and scratch.model.vision_weights == pre.model.vision_weights


def test_steps_grid_scales_the_default_length():
    cells = ablate.steps_cells(50)
    assert [c.pretrain and c.pretrain["train"]["max_steps"] for c in cells] == [None, 12, 25, 50, 100]
    assert [c.name for c in cells][3] == "default"


def test_deep_merge_keeps_the_base_and_merges_nested_keys():
    base = {"model": {"config": {"pooling": "mean"}, "name": "m"}, "task": {"mask_ratio": 0.75}}
    merged = ablate.deep_merge(base, {"model": {"config": {"mim_layer": -1}}, "task": {"mask_ratio": 0.5}})
    assert merged == {"model": {"config": {"pooling": "mean", "mim_layer": -1}, "name": "m"},
                      "task": {"mask_ratio": 0.5}}
    assert base["task"]["mask_ratio"] == 0.75 and "mim_layer" not in base["model"]["config"]


def test_grid_file_errors_name_the_file_and_cell(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("cells:\n  - name: a\n    pretrian: {}\n")
    with pytest.raises(M3AEError, match=r"g\.yaml: cell 'a' has unknown keys \['pretrian'\]"):
        ablate.grid_from_file(path)
    path.write_text("default: b\ncells:\n  - name: a\n")
    with pytest.raises(M3AEError, match="no cell named 'b'"):
        ablate.grid_from_file(path)
    path.write_text("cells:\n  - name: base\n  - name: short\n    pretrain: {train: {max_steps: 5}}\n"
                    "  - name: none\n    pretrain: null\n")
    grid = ablate.grid_from_file(path)
    assert grid.default == "base" and grid.cells[1].pretrain == {"train": {"max_steps": 5}}
    assert grid.cells[2].pretrain is None and grid.scale == ablate.SMALL
    with pytest.raises(M3AEError, match="unknown grid"):
        ablate.find_grid("no-such-grid")


def _result(cell, seed, overall):
    return {"cell": cell, "seed": seed, "open": overall - 10, "closed": overall + 10, "overall": overall}


def test_summary_pairs_seeds_and_gives_a_t_interval():
    grid = ablate.Grid("g", "", ablate.SMALL, (ablate.Cell("default", expect=""), ablate.Cell("a"), ablate.Cell("b")))
    results = [_result("default", s, v) for s, v in enumerate((50.0, 52.0, 54.0))]
    results += [_result("a", s, v) for s, v in enumerate((45.0, 48.0, 48.0))]  # diffs -5, -4, -6
    results += [_result("b", s, v) for s, v in enumerate((55.0, 50.0, 54.0))]  # diffs +5, -2, 0
    summary = ablate.summarise(grid, results)
    assert summary["default"]["overall"] == pytest.approx(52.0) and "diff" not in summary["default"]
    a = summary["a"]
    assert a["diff"] == pytest.approx(-5.0)
    half = 4.303 * 1.0 / 3 ** 0.5  # t(0.975, 2) * sd / sqrt(n)
    assert a["ci"] == pytest.approx((-5.0 - half, -5.0 + half))
    assert a["verdict"] == "worse: reproduces the paper"
    assert summary["b"]["verdict"] == "within noise"
    assert ablate.verdict("worse", (1.0, 3.0)) == "better: opposite of the paper"
    md = ablate.results_markdown(grid, summary, {"seeds": [0, 1, 2], "units_done": 9, "units": 9,
                                                 "wall_minutes": 1.0, "machine": "m"})
    assert "| a |" in md and "-5.0 [" in md and "**default**" in md


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not path.is_file():
        if proc.poll() is not None:
            raise AssertionError(f"ablate exited ({proc.returncode}) before {path} appeared:\n{proc.stdout.read()}")
        if time.monotonic() > end:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.5)


@pytest.mark.slow
def test_quick_grid_is_killed_resumes_and_writes_its_outputs(tmp_path):
    out = tmp_path / "grid"
    cmd = [sys.executable, "-m", "m3ae.cli", "ablate", "--quick", "--seeds", "0", "--jobs", "1", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    first = out / "cells" / "default" / "seed_0" / "result.json"
    try:
        _wait_for(first, proc, timeout=240)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the grid and its worker, mid-way through the second unit
        proc.wait()
    assert not (out / "cells" / "no-mim" / "seed_0" / "result.json").is_file()
    stamp = first.stat().st_mtime_ns
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 unit(s) already finished" in done.stdout
    assert first.stat().st_mtime_ns == stamp  # not recomputed
    doc = json.loads((out / "results.json").read_text())
    assert [r["cell"] for r in doc["runs"]] == ["default", "no-mim"] and doc["units_done"] == 2
    assert all(0.0 <= r["overall"] <= 100.0 and r["seconds"] > 0 for r in doc["runs"])
    assert set(doc["runs"][0]["pretrain_losses"]) == {"loss", "mlm_loss", "mim_loss", "itm_loss"}
    assert "mim_loss" not in doc["runs"][1]["pretrain_losses"]  # the no-MIM cell never ran that pass
    assert "| no-mim |" in (out / "results.md").read_text()
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "2 unit(s) already finished" in again.stdout


def test_out_folder_not_written_by_ablate_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(M3AEError, match="was not written by `m3ae ablate`"):
        ablate.claim_out(tmp_path, ablate.builtin_grids()["quick"])
    assert (tmp_path / "keep.txt").read_text() == "mine"
