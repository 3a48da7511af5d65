"""`m3ae demo`: the whole pipeline in --quick mode, and its small pure helpers."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m3ae.experiments import demo
from m3ae.cli import main
from m3ae.errors import M3AEError

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED = REPO_ROOT / "data" / "vqa_rad"

EXPECTED_FILES = (
    "results.json", "results.md", "reconstructions.png", "training_curves.png",
    "accuracy_by_question_type.png", "accuracy_by_question_type.json",
    "pretrain/log.jsonl", "pretrain/best/model.safetensors",
    "finetune/log.jsonl", "finetune/best/model.safetensors", "finetune/best/config.json",
    "finetune/best/README.md", "finetune_blank/best/model.safetensors",
    "finetune_scratch/best/model.safetensors", "finetune_question_only/best/model.safetensors",
    "finetune_demo_pretrain/best/model.safetensors",
    "data/vqa_rad/summary.json", "data/vqa_rad_blank/summary.json", "data/pretrain/summary.json",
)


def test_bundled_data_is_small_and_complete():
    """The shipped VQA-RAD copy: both split files, every referenced image, longest side <= 384, < 10 MB."""
    names = set()
    for split_file in ("trainset.json", "testset.json"):
        names |= {r["image_name"] for r in json.loads((BUNDLED / split_file).read_text())}
    files = {p.name: p for p in (BUNDLED / "images").glob("*.jpg")}
    assert names <= set(files) and len(files) == 315
    assert max(max(Image.open(p).size) for p in files.values()) <= 384
    assert sum(p.stat().st_size for p in BUNDLED.rglob("*") if p.is_file()) < 10_000_000
    assert "CC0" in (BUNDLED / "LICENSE").read_text() and "resized" in (BUNDLED / "SOURCE.md").read_text()


def test_scores_split_open_and_closed():
    # closed: one right, one wrong; open: one right, one whose answer is outside the set (label -1)
    records = [{"answer_type": 0, "pred": 3, "label": 3}, {"answer_type": 0, "pred": 1, "label": 2},
               {"answer_type": 1, "pred": 5, "label": 5}, {"answer_type": 1, "pred": -1, "label": -1}]
    assert demo.scores(records) == {"open": 50.0, "closed": 50.0, "overall": 50.0}
    with pytest.raises(M3AEError):
        demo.check_metrics({"x": {"overall": 101.0}})


def test_blank_and_subset_copies_keep_the_raw_layout(tmp_path):
    subset = demo.subset_raw(BUNDLED, tmp_path / "subset", train_images=4)
    train = json.loads((subset / "trainset.json").read_text())
    assert len({r["image_name"] for r in train}) == 4
    blank = demo.blank_raw(subset, tmp_path / "blank")
    for path in (subset / "images").glob("*.jpg"):
        copy = Image.open(blank / "images" / path.name)
        assert copy.size == Image.open(path).size and np.asarray(copy).max() == 0
    assert (blank / "testset.json").read_bytes() == (subset / "testset.json").read_bytes()


def test_find_src_error_names_the_folder(tmp_path):
    with pytest.raises(M3AEError, match=str(tmp_path)):
        demo.find_src(tmp_path)


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert "NOT real captions" in printed and "Protocol: clean" in printed
    assert printed.count("precision:") == 1 and "None" not in printed  # said once; no Python None for people
    for name in EXPECTED_FILES:
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["split"] == "test"
    # the demo's own short pre-training is the last row (QUICK runs it)
    assert list(results["metrics"]) == ["majority", "question_only", "blank_images", "scratch", "m3ae",
                                        "m3ae_demo_pretrain"]
    assert results["precision"] in ("fp32", "bf16")
    for method, metrics in results["metrics"].items():
        assert set(metrics) == {"open", "closed", "overall"}
        assert all(0.0 <= v <= 100.0 for v in metrics.values()), (method, metrics)
        # overall is the example-weighted mean of the two question types, so it lies between them
        low, high = sorted((metrics["open"], metrics["closed"]))
        assert low - 1e-6 <= metrics["overall"] <= high + 1e-6, (method, metrics)
    for png in ("reconstructions.png", "training_curves.png", "accuracy_by_question_type.png"):
        assert Image.open(out / png).size[0] > 300
    width, height = Image.open(out / "training_curves.png").size  # six runs: a 2 x 3 grid, not a strip
    assert width <= 1600 and height > width / 2.5
    card = (out / "finetune" / "best" / "README.md").read_text()
    assert "not** a medical device" in card and "vqa-rad" in card
    # the fine-tuned folder is what `m3ae predict` reads
    image = next((BUNDLED / "images").glob("*.jpg"))
    assert main(["predict", "--model", str(out / "finetune" / "best"), "--image", str(image),
                 "--question", "Is this a CT?", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answers"]


def test_demo_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(M3AEError, match="not written by"):
        demo.clear_out(tmp_path)
    assert (tmp_path / "precious.txt").is_file()
    demo.clear_out(tmp_path / "new")
    demo.clear_out(tmp_path / "new")  # a demo folder may be replaced
    assert (tmp_path / "new" / demo.DEMO_MARKER).is_file()


def test_choose_threads_uses_the_cores_and_ignores_the_load_average(monkeypatch):
    assert demo.choose_threads(3) == (3, "--threads")
    with pytest.raises(M3AEError):
        demo.choose_threads(0)
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))  # a job that has just finished
    assert demo.choose_threads(None)[0] == cores


COSTS = demo.StepCosts(pretrain_step=0.75, finetune_step=0.25, question_only_step=0.1, eval_example=0.002)
EVAL = {"val": 304, "test": 451}


def test_budget_plan_keeps_the_full_lengths_on_a_fast_machine():
    fast = demo.StepCosts(0.01, 0.01, 0.01, 0.0001)
    plan = demo.plan_to_budget(fast, demo.FULL, 900, 86, EVAL, 30)
    assert plan.scale == 1.0 and plan.fits
    assert plan.pretrain_steps == demo.FULL.pretrain_steps
    assert plan.finetune_steps == round(demo.FULL.finetune_epochs * 86)


def test_budget_plan_scales_down_when_steps_are_slow():
    """Measured step times that would overrun the budget shorten every row by the same share, after the
    optional row of the demo's own pre-training is left out."""
    plan = demo.plan_to_budget(COSTS, demo.FULL, 600, 86, EVAL, 30)
    assert demo.MIN_SCALE <= plan.scale < 1.0 and plan.fits
    assert plan.total_seconds <= 600
    slower = demo.plan_to_budget(dataclasses.replace(COSTS, finetune_step=0.4), demo.FULL, 600, 86, EVAL, 30)
    assert slower.scale < plan.scale and slower.finetune_steps < plan.finetune_steps
    # one number of fine-tuning steps for every row, so the table compares like with like
    assert set(plan.stage_seconds) == {"fixed", *demo.FINETUNE_ROWS} and plan.pretrain_steps == 0
    kept = demo.plan_to_budget(COSTS, demo.FULL, 600, 86, EVAL, 30, keep_short_row=True)  # --pretrain-steps
    assert set(kept.stage_seconds) == {"fixed", "pretrain", *demo.FINETUNE_ROWS, demo.SHORT_ROW}
    assert kept.pretrain_steps > 0 and kept.scale < plan.scale and kept.total_seconds <= 600


def test_budget_plan_leaves_out_the_short_pretraining_row_before_shortening_any_row():
    full_without = demo.plan_stages(COSTS, demo.FULL, 1.0, 86, EVAL, 30, short_row=False).total_seconds
    full_with = demo.plan_stages(COSTS, demo.FULL, 1.0, 86, EVAL, 30).total_seconds
    assert full_without < full_with
    plan = demo.plan_to_budget(COSTS, demo.FULL, (full_without + full_with) / 2, 86, EVAL, 30)
    assert plan.scale == 1.0 and plan.pretrain_steps == 0 and demo.SHORT_ROW not in plan.stage_seconds
    plan = demo.plan_to_budget(COSTS, demo.FULL, full_with, 86, EVAL, 30)
    assert plan.scale == 1.0 and plan.pretrain_steps == demo.FULL.pretrain_steps
    no_row = dataclasses.replace(demo.FULL, pretrain_steps=0)  # --pretrain-steps 0
    assert demo.plan_to_budget(COSTS, no_row, 10_000, 86, EVAL, 30).pretrain_steps == 0


def test_budget_plan_says_when_even_the_minimum_does_not_fit():
    plan = demo.plan_to_budget(dataclasses.replace(COSTS, finetune_step=60.0), demo.FULL, 800, 86, EVAL, 30)
    assert not plan.fits and plan.scale == demo.MIN_SCALE and plan.total_seconds > 800


def test_demo_precision_says_what_it_measured_and_what_it_chose():
    measured = demo.demo_precision("auto", "fp32", {"bf16": 0.16, "fp32": 0.12})
    assert measured.name == "fp32" and "bf16 0.16 s, fp32 0.12 s" in measured.reason
    assert "fp32 is faster" in measured.reason and "native bf16" in measured.reason
    assert demo.demo_precision("fp32", "fp32", None).name == "fp32"  # nothing timed: as resolved


def test_every_command_help_renders(capsys):
    from m3ae.cli import COMMANDS

    for name in COMMANDS:  # argparse %-formats help strings: a bare "25% of" broke `m3ae demo --help`
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0, name
    assert "25% of the default lengths" in " ".join(capsys.readouterr().out.split())
