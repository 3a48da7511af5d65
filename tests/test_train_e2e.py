"""End to end on tiny prepared folders (built here through `m3ae prepare`'s custom format).

Pre-training drives all three losses down on a fixed batch; VQA, classification and retrieval
fine-tunes run through the CLI and write the promised run folder; evaluate reproduces metrics.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from m3ae.cli import main
from m3ae.errors import M3AEError
from m3ae.train.config import load_config
from m3ae.train.runner import evaluate, finetune

from helpers.synthetic import REPO, TINY, WORDS, prepare  # noqa: F401

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("prepared")
    return {task: prepare(tmp, task) for task in ("vqa", "cls", "irtr", "pretrain")}


def test_tiny_pretraining_drives_all_three_losses_down(data, tmp_path):
    from m3ae.data import load_tokenizer, make_dataset
    from m3ae.train.loop import Loaders, fit
    from m3ae.train.runner import build_model
    from m3ae.train.runlog import read_log
    from m3ae.train.tasks import PretrainTask

    cfg = load_config(REPO / "configs/pretrain/tiny.yaml", TINY)
    ds = make_dataset(data["pretrain"], "train", "pretrain", cfg.data, load_tokenizer(), train=True, seed=0)
    fixed = ds.collate_fn([ds[i] for i in range(4)])  # one fixed batch, many steps
    assert int((fixed["mlm_labels"] != -100).sum()) > 0
    model = build_model(cfg, {"task": "pretrain"})
    loaders = Loaders(train=lambda epoch, start: [fixed] * (60 - start), micro_batches_per_epoch=60)
    train = cfg.train.__class__(batch_size=4, per_device_batch_size=4, max_steps=60, log_every=1,
                                progress=False, tensorboard=False, checkpoint_every=1000)
    optim = cfg.optim.__class__(lr=1e-3, warmup_steps=0, warmup_ratio=None)
    fit(PretrainTask(), model, loaders, optim, train, cfg.eval, run_dir=tmp_path, monitor="-loss")
    log = read_log(tmp_path)
    for key in ("mlm_loss", "mim_loss", "itm_loss"):
        first, last = np.mean([r[key] for r in log[:3]]), np.mean([r[key] for r in log[-3:]])
        assert last < 0.9 * first, (key, first, last)


def test_pretrain_cli_runs_and_writes_the_run_folder(data, tmp_path):
    out = tmp_path / "pt"
    rc = main(["pretrain", "--config", str(REPO / "configs/pretrain/tiny.yaml"), "--data", str(data["pretrain"]),
               "--out", str(out), "--train.max_steps", "2", "--train.batch_size", "4",
               "--train.per_device_batch_size", "2", *TINY])
    assert rc == 0
    for name in ("config.yaml", "log.jsonl", "metrics.json", "best/model.safetensors", "best/README.md"):
        assert (out / name).exists(), name
    assert (out / "checkpoints" / "latest.json").is_file()
    card = (out / "best/README.md").read_text()
    assert "This model is **not** a medical device" in card and "clinical decision" in card
    import json
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"]
    # validated before the first step (the feature-health reference) and at the end
    assert val and val[0]["step"] == 0 and val[-1]["step"] == 2, records
    assert all({"feature_rank", "itm_acc"} <= set(r) for r in val), val[0]


def test_pretrain_on_two_folders_concatenates_their_examples(data, tmp_path):
    from m3ae.data import load_tokenizer, make_dataset
    from m3ae.train.runner import _summary

    cfg = load_config(REPO / "configs/pretrain/tiny.yaml", TINY)
    one = make_dataset(data["pretrain"], "train", "pretrain", cfg.data, load_tokenizer(), train=True, seed=0)
    both = make_dataset([data["pretrain"], data["irtr"]], "train", "pretrain", cfg.data, load_tokenizer(),
                        train=True, seed=0)
    assert len(both) == 2 * len(one)
    assert _summary([data["pretrain"], data["irtr"]], "pretrain")["splits"]["train"]["examples"] == len(both)
    # the second folder's examples use their own seed stream, not the first folder's draws
    assert not torch.equal(both[0]["image_noise"], both[len(one)]["image_noise"])
    out = tmp_path / "pt2"
    rc = main(["pretrain", "--config", str(REPO / "configs/pretrain/tiny.yaml"),
               "--data", str(data["pretrain"]), str(data["irtr"]), "--out", str(out),
               "--train.max_steps", "2", "--train.batch_size", "4", "--train.per_device_batch_size", "2", *TINY])
    assert rc == 0 and (out / "best/model.safetensors").exists()
    with pytest.raises(M3AEError, match="pre-training only"):
        _summary([data["vqa"], data["vqa"]], "vqa")


def test_vqa_finetune_cli_end_to_end_then_evaluate(data, tmp_path, capsys):
    out = tmp_path / "vqa"
    rc = main(["finetune", "--config", str(REPO / "configs/finetune/vqa_rad_tiny.yaml"), "--data", str(data["vqa"]),
               "--out", str(out), "--train.max_steps", "4", "--train.max_epochs", "null", "--eval.every_steps", "2",
               *TINY])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["selected_on"] == "val"
    assert {"open", "closed", "overall"} <= set(metrics)
    # 4 test examples, 2 closed (even ids) and 2 open: each accuracy counts whole questions, and
    # overall is their example-weighted mean
    for k, n in (("open", 2), ("closed", 2), ("overall", 4)):
        assert (metrics[k] * n / 100) == pytest.approx(round(metrics[k] * n / 100)), (k, metrics[k])
    assert metrics["overall"] == pytest.approx((metrics["open"] + metrics["closed"]) / 2)
    meta = json.loads((out / "best" / "config.json").read_text())
    assert meta["answers"] == json.loads((data["vqa"] / "answers.json").read_text())
    again = evaluate(out / "best", data["vqa"], "test", progress=False)
    assert again["overall"] == pytest.approx(metrics["overall"])
    assert "overall" in capsys.readouterr().out  # the summary table


def test_cls_finetune_end_to_end(data, tmp_path):
    cfg = load_config(REPO / "configs/finetune/vqa_rad_tiny.yaml",
                      ["--task.name", "cls", "--train.max_steps", "2", "--train.max_epochs", "null", *TINY])
    agg = finetune(cfg, data["cls"], tmp_path / "cls", seeds=[0, 1])
    assert [r["split"] for r in agg["runs"]] == ["test", "test"]
    assert {"accuracy", "macro_f1"} <= set(agg["mean"]) and set(agg["mean"]) == set(agg["sd"])
    assert json.loads((tmp_path / "cls" / "metrics.json").read_text())["seeds"] == [0, 1]
    meta = json.loads((tmp_path / "cls" / "seed_1" / "best" / "config.json").read_text())
    assert meta["labels"] == ["ct", "mri", "xray"]


def test_retrieval_finetune_end_to_end(data, tmp_path):
    cfg = load_config(REPO / "configs/finetune/vqa_rad_tiny.yaml",
                      ["--task.name", "irtr", "--data.draw_false_text", "3", "--train.max_steps", "2",
                       "--train.max_epochs", "null", *TINY])
    metrics = finetune(cfg, data["irtr"], tmp_path / "irtr")
    assert {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"} <= set(metrics)
    assert metrics["n_images"] == 4 and metrics["n_texts"] == 4
    for way in ("i2t", "t2i"):  # recall grows with k and counts whole queries out of 4
        assert metrics[f"{way}_r1"] <= metrics[f"{way}_r5"] <= metrics[f"{way}_r10"]
        assert metrics[f"{way}_r1"] / 25 == pytest.approx(round(metrics[f"{way}_r1"] / 25))
    again = evaluate(tmp_path / "irtr" / "best", data["irtr"], "test", progress=False)
    assert {k: again[k] for k in ("i2t_r1", "t2i_r1", "r_mean")} == pytest.approx(
        {k: metrics[k] for k in ("i2t_r1", "t2i_r1", "r_mean")})


def test_wrong_task_for_the_data_is_a_clear_error(data, tmp_path):
    with pytest.raises(M3AEError, match="prepared for task 'cls'"):
        finetune(REPO / "configs/finetune/vqa_rad_tiny.yaml", data["cls"], tmp_path / "x", overrides=TINY)


def test_unknown_override_lists_valid_keys():
    with pytest.raises(M3AEError, match="valid keys"):
        load_config(REPO / "configs/finetune/vqa_rad_tiny.yaml", ["--optim.learning_rate", "1"])
    with pytest.raises(M3AEError, match="expected an integer"):
        load_config(REPO / "configs/finetune/vqa_rad_tiny.yaml", ["--train.max_steps", "ten"])


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")))
def test_every_recipe_parses(recipe):
    cfg = load_config(REPO / recipe)
    assert cfg.task.name in ("pretrain", "vqa", "cls", "irtr")
    if "tiny" not in recipe and "small" not in recipe:  # the paper's recipes
        assert cfg.model.name == "m3ae-base"


def test_paper_recipes_hold_the_paper_hyperparameters():
    pt = load_config(REPO / "configs/pretrain/m3ae.yaml")
    assert (pt.data.image_size, pt.data.max_text_len, pt.train.max_steps, pt.train.batch_size) == (288, 64, 100000, 256)
    assert pt.optim.lr == 1e-5 and pt.optim.warmup_ratio == 0.1
    assert pt.optim.lr_multipliers == {"fusion": 5.0, "heads": 5.0}
    rad = load_config(REPO / "configs/finetune/vqa_rad.yaml")
    assert (rad.optim.lr, rad.optim.lr_multipliers["heads"], rad.train.batch_size, rad.train.max_epochs) == (
        5e-6, 50.0, 64, 50)


def test_resume_mid_epoch_on_real_data_reproduces_the_losses(data, tmp_path):
    import shutil

    from m3ae.train.runlog import read_log

    args = ["--train.max_steps", "4", "--train.batch_size", "4", "--train.per_device_batch_size", "2",
            "--train.checkpoint_every", "1", "--train.keep_checkpoints", "10", "--eval.val_split", "null", *TINY]
    recipe = REPO / "configs/pretrain/tiny.yaml"
    from m3ae.train.runner import pretrain

    pretrain(recipe, data["pretrain"], tmp_path / "full", overrides=args)
    pretrain(recipe, data["pretrain"], tmp_path / "cut", overrides=args)
    ckpts = tmp_path / "cut" / "checkpoints"
    for step in (2, 3, 4):  # back to step 1: mid-epoch (2 of 4 micro-batches consumed)
        shutil.rmtree(ckpts / f"step_{step:07d}")
    (ckpts / "latest.json").write_text(json.dumps({"step": 1, "path": "step_0000001"}))
    pretrain(recipe, data["pretrain"], tmp_path / "cut", overrides=args, resume=True)
    full, cut = read_log(tmp_path / "full"), read_log(tmp_path / "cut")
    assert [r["step"] for r in cut] == [1, 2, 3, 4]
    for key in ("loss", "mlm_loss", "mim_loss", "itm_loss"):
        assert [r[key] for r in cut] == pytest.approx([r[key] for r in full], rel=1e-5), key


def test_warmup_steps_in_a_recipe_replaces_the_default_ratio_but_both_is_an_error(tmp_path):
    from m3ae.train.config import config_from_dict

    cfg = config_from_dict({"optim": {"warmup_steps": 100}})
    assert (cfg.optim.warmup_steps, cfg.optim.warmup_ratio) == (100, None)
    with pytest.raises(M3AEError, match="not both"):
        config_from_dict({"optim": {"warmup_steps": 100, "warmup_ratio": 0.1}})


def test_cli_unknown_override_names_valid_keys_and_help_shows_field_docs(capsys):
    with pytest.raises(SystemExit) as info:
        main(["finetune", "--config", "x.yaml", "--data", "d", "--out", "o", "--optim.lr_rate", "3"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown key 'lr_rate' in optim" in err and "'warmup_ratio'" in err
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    assert "--optim.warmup_ratio" in out and "Warm-up length as a fraction" in out
