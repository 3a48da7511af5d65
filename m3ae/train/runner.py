"""The Python face of training: `pretrain`, `finetune` and `evaluate` (what the commands in m3ae.cli
and the demo call).

A run folder holds ``config.yaml`` (the resolved recipe), ``log.jsonl``, ``checkpoints/``,
``best/`` (the selected model in our format, with tokenizer and answers/labels) and
``metrics.json`` (the test split's metrics of the best model).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from m3ae.errors import M3AEError
from m3ae.hardware import resolve_precision
from m3ae.metrics import mean_sd
from m3ae.inference.quantize import autocast_name
from m3ae import distributed as D
from m3ae.train.checkpoint import atomic_write_text
from m3ae.train.config import RunConfig, apply_overrides, config_from_dict, load_config, save_config
from m3ae.train.loop import Loaders, fit, resolve_device
from m3ae.tasks import TASKS, BaseTask, get_task, make_task

HEADS = {name: list(task.heads) for name, task in TASKS.items()}
"""The heads training builds for each task (each task's ``heads``)."""
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")


# -- configuration --------------------------------------------------------------------------------

def resolve_config(config: RunConfig | str | Path | dict | None, overrides: list | None = None) -> RunConfig:
    """A RunConfig from a recipe path, a dict or a RunConfig, with dotted overrides applied."""
    if isinstance(config, RunConfig):
        return apply_overrides(config, overrides or []) if overrides else config
    if isinstance(config, dict):
        cfg = config_from_dict(config)
        return apply_overrides(cfg, overrides or []) if overrides else cfg
    return load_config(config, overrides or [])


def _say(msg: str) -> None:
    if D.dist_info().is_main:
        print(msg, file=sys.stderr, flush=True)


# -- model and tokenizer --------------------------------------------------------------------------

def _local_folder(source: str | Path) -> Path:
    """A shipped model's name or a ``package:`` path -> its folder; other paths unchanged."""
    from m3ae.guards import resolve_packaged
    from m3ae.weights.pretrained import shipped_or_given

    return resolve_packaged(shipped_or_given(source))


def _has_tokenizer(path: str | Path | None) -> bool:
    if path is None:
        return False
    path = _local_folder(path)
    return path.is_dir() and any((path / f).is_file() for f in TOKENIZER_FILES)


def tokenizer_path(cfg: RunConfig) -> str | None:
    """Explicit ``model.tokenizer``, else the pretrained folder's or the text tower's, else packaged."""
    for candidate in (cfg.model.tokenizer, cfg.model.pretrained, cfg.model.text_weights):
        if candidate is not None and (candidate == cfg.model.tokenizer or _has_tokenizer(candidate)):
            return str(_local_folder(candidate))
    return None


def _model_config(cfg: RunConfig) -> Any:
    """The preset with ``model.config`` overrides (dotted keys into the nested dict)."""
    from m3ae.models import ModelConfig

    base = ModelConfig.from_name(cfg.model.name)
    d = base.to_dict()
    if "mim" in get_task(cfg.task.name).heads:  # the saved config records how its MIM head was trained
        d.update(mask_ratio_image=cfg.task.mask_ratio, norm_pix_loss=cfg.task.norm_pix_loss)
    for key, value in (cfg.model.config or {}).items():
        node = d
        *parents, leaf = str(key).split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise M3AEError(f"model.config: unknown key {key!r}")
            node = node[p]
        if leaf not in node:
            raise M3AEError(f"model.config: unknown key {key!r}; valid at that level: {sorted(node)}")
        node[leaf] = value
    return ModelConfig.from_dict(d)


def build_model(cfg: RunConfig, summary: dict[str, Any]) -> nn.Module:
    """Builds the model for the recipe's task and loads its initial weights."""
    from m3ae.weights.factory import create_model

    task = get_task(cfg.task.name)
    sizes = task.head_sizes(summary)
    model = create_model(
        _model_config(cfg), pretrained=cfg.model.pretrained, vision_weights=cfg.model.vision_weights,
        text_weights=cfg.model.text_weights, heads=list(task.heads) + (["itc"] if cfg.task.itc_weight else []),
        num_answers=sizes.get("num_answers"), num_classes=sizes.get("num_classes"),
        image_size=cfg.data.image_size, fresh=tuple(cfg.model.fresh),
    )
    if model.config.vision.patch_size != cfg.data.patch_size:
        raise M3AEError(f"data.patch_size ({cfg.data.patch_size}) differs from the model's patch size "
                        f"({model.config.vision.patch_size})")
    if cfg.model.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.model.freeze:
        try:
            model.freeze(*cfg.model.freeze)
        except ValueError as err:
            raise M3AEError(f"model.freeze: {err}") from err
        if "text_encoder" in model.frozen and cfg.model.text_cache_mb > 0:
            model.cache_frozen_text(cfg.model.text_cache_mb)
    return model


# -- data -----------------------------------------------------------------------------------------

def _summary(data_dir: str | Path | list, task: str) -> dict[str, Any]:
    """The folder's summary.json, checked against the task; several folders (pre-training on
    ROCO + MedICaT) give one summary whose split sizes are the sums."""
    from m3ae.data import read_summary

    dirs = list(data_dir) if isinstance(data_dir, (list, tuple)) else [data_dir]
    if len(dirs) > 1 and not get_task(task).several_folders:
        raise M3AEError(f"several data folders are concatenated for pre-training only, not for {task!r}")
    summaries = [read_summary(d) for d in dirs]
    for d, summary in zip(dirs, summaries):
        data_task = summary.get("task")
        if data_task not in get_task(task).accepts:  # caption folders serve pretrain and irtr
            raise M3AEError(f"{d}: prepared for task {data_task!r}, but the recipe trains {task!r}")
    if len(summaries) == 1:
        return summaries[0]
    combined = {**summaries[0], "dataset": "+".join(str(s.get("dataset")) for s in summaries), "splits": {},
                "guards": [s["guard"] for s in summaries if s.get("guard")]}
    for split in {name for s in summaries for name in s.get("splits", {})}:
        combined["splits"][split] = {
            "examples": sum(int(s.get("splits", {}).get(split, {}).get("examples", 0)) for s in summaries)
        }
    return combined


def _split_size(summary: dict[str, Any], split: str | None) -> int:
    if split is None:
        return 0
    return int(summary.get("splits", {}).get(split, {}).get("examples", 0))


def val_is_test(summary: dict[str, Any]) -> bool:
    """True when the folder's val split is a copy of its test split (VQA-RAD, paper protocol)."""
    if "val_is_test" in summary:
        return bool(summary["val_is_test"])
    if summary.get("val_source") == "test" or summary.get("splits", {}).get("val", {}).get("source") == "test":
        return True
    return summary.get("dataset") == "vqa-rad" and summary.get("protocol") == "paper"


def make_train_loaders(cfg: RunConfig, data_dir: str | Path, tokenizer: Any, validate: Any) -> Loaders:
    """The training micro-batches of this rank, epoch by epoch, resumable mid-epoch."""
    from m3ae.data import make_dataset, make_loader

    info = D.dist_info()
    dataset = make_dataset(data_dir, "train", get_task(cfg.task.name).examples, cfg.data, tokenizer, train=True,
                           seed=cfg.train.seed)
    per_device = cfg.train.per_device_batch_size

    def epoch_batches(epoch: int, start: int):
        loader = make_loader(dataset, per_device, shuffle=True, seed=cfg.train.seed, rank=info.rank,
                             world_size=info.world_size, num_workers=cfg.data.num_workers,
                             start_index=start * per_device, drop_last=True)
        # one seeded permutation per epoch; per-example draws are re-seeded by (seed, epoch, index)
        loader.sampler.set_epoch(epoch, start * per_device)
        return iter(loader)

    n = math.ceil(len(dataset) / info.world_size) // per_device
    return Loaders(train=epoch_batches, micro_batches_per_epoch=n, validate=validate,
                   samples_per_micro_batch=per_device)


def _eval_dataset(cfg: RunConfig, data_dir: str | Path, split: str, tokenizer: Any) -> Any:
    """What the task evaluates on for one split (a dataset, or a retrieval pool)."""
    task = make_task(cfg.task.name, **task_options(cfg.task))
    return task.eval_data(data_dir, split, cfg.data, tokenizer, seed=cfg.train.seed)


def task_options(task: Any) -> dict[str, Any]:
    """The keyword options of ``make_task`` from a recipe's ``task`` section."""
    return get_task(task.name).options_from(task)


def evaluate_split(task: str, model: nn.Module, data: Any, cfg_eval: Any, precision: str,
                   task_obj: BaseTask | None = None, progress: bool = False) -> dict[str, float]:
    """Metrics of ``model`` on one prepared split (a dataset, or a retrieval pool): ``task_obj.evaluate``
    (the task's default object when None)."""
    task_obj = task_obj if task_obj is not None else make_task(task)
    return task_obj.evaluate(model, data, cfg_eval, precision, progress)


# -- runs -----------------------------------------------------------------------------------------

def _extra_metadata(cfg: RunConfig, data_dir: str | Path, summary: dict[str, Any]) -> dict[str, Any]:
    """What the saved model keeps: the task, the data pipeline, and the task's own (answers, labels)."""
    extra: dict[str, Any] = {"task": cfg.task.name, "data": cfg.data.to_dict(),
                             "preprocessing": cfg.data.preprocessing().to_dict(),
                             "dataset": summary.get("dataset"), "protocol": summary.get("protocol")}
    return extra | get_task(cfg.task.name).metadata(data_dir, cfg.task)


def train_run(cfg: RunConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """One training run of any task: fit with model selection, then the test split. Returns metrics.

    The run folder is locked for the life of the process (rank 0 holds the lock): a second
    process into the same ``out_dir`` stops with the holder's PID instead of interleaving logs.
    """
    import contextlib

    from m3ae.guards import LOCK_NAME, check_device, folder_lock

    check_device(cfg.train.device)
    out_dir = Path(out_dir)
    is_main = D.init_distributed(cfg.train.device).is_main  # under torchrun only rank 0 takes the lock
    lock = folder_lock(out_dir / LOCK_NAME, out_dir) if is_main else contextlib.nullcontext()
    with lock:
        return _train_locked(cfg, data_dir, out_dir, resume)


def _resume_or_finished(cfg: RunConfig, out_dir: Path, resume: bool) -> dict[str, Any] | None:
    """With ``--resume``: refuse a changed recipe; return the metrics of a run that already ended."""
    from m3ae.train.checkpoint import check_resume, run_is_finished

    if not resume:
        return None
    state = check_resume(out_dir, cfg.to_dict())
    metrics = out_dir / "metrics.json"
    if run_is_finished(state, cfg.to_dict()) and metrics.is_file():
        _say(f"{out_dir}: the run is complete (step {state['step']}); nothing to resume "
             "(raise train.max_steps or train.max_epochs to train further)")
        return json.loads(metrics.read_text())
    return None


def _train_locked(cfg: RunConfig, data_dir: str | Path, out_dir: Path, resume: bool) -> dict[str, Any]:
    """`train_run` once the run folder is locked."""
    from m3ae.data import load_tokenizer

    info = D.init_distributed(cfg.train.device)
    task_name = cfg.task.name
    summary = _summary(data_dir, task_name)
    if cfg.eval.val_split and not _split_size(summary, cfg.eval.val_split):
        raise M3AEError(f"{data_dir} has no '{cfg.eval.val_split}' examples for model selection "
                        f"(splits: {sorted(summary.get('splits', {}))}); fix --eval.val_split or pass "
                        "--eval.val_split null to keep the last model")
    if (finished := _resume_or_finished(cfg, out_dir, resume)) is not None:
        return finished
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    torch.manual_seed(cfg.train.seed)
    tokenizer = load_tokenizer(tokenizer_path(cfg))
    model = build_model(cfg, summary)
    model.to(resolve_device(cfg.train.device))
    task = make_task(task_name, **task_options(cfg.task))

    loaders = make_train_loaders(cfg, data_dir, tokenizer, _validation(cfg, data_dir, summary, tokenizer, task))
    extra = _extra_metadata(cfg, data_dir, summary)

    def save_best(m: nn.Module, path: Path) -> None:
        m.save_pretrained(path, tokenizer=tokenizer, extra=extra)

    monitor = task.monitor if cfg.eval.monitor == "auto" else cfg.eval.monitor
    started = time.perf_counter()
    result = fit(task, model, loaders, cfg.optim, cfg.train, cfg.eval, run_dir=out_dir, resume=resume,
                 monitor=monitor, save_best=save_best, extra_state={"config": cfg.to_dict()})
    report = _run_report(cfg, data_dir, out_dir, summary, tokenizer, task, result, monitor)
    report["train_minutes"] = round((time.perf_counter() - started) / 60, 1)  # this process's share (resumes add)
    if info.is_main:
        atomic_write_text(out_dir / "metrics.json", json.dumps(report, indent=2) + "\n")
        if (out_dir / "best").is_dir():
            _write_model_card(cfg, out_dir / "best", summary, report)
        split = report.get("split")  # None when the run had neither a validation nor a test split
        _say(format_table(report, title=f"{task_name} metrics ({split} split)" if split
                          else f"{task_name} run (no validation or test split to score)"))
    D.barrier()
    return report


def _validation(cfg: RunConfig, data_dir: str | Path, summary: dict[str, Any], tokenizer: Any,
                task: BaseTask) -> Any:
    """The model-selection callback ``model -> metrics`` on ``eval.val_split`` (None without one)."""
    val_split = cfg.eval.val_split  # checked by _train_locked: None or a split with examples
    if val_split is not None and val_is_test(summary):
        _say(f"warning: model selection uses split '{val_split}', which is a copy of the test split "
             f"under the '{summary.get('protocol')}' protocol of {summary.get('dataset')} "
             "(as the original); test metrics are therefore optimistic")
    if val_split is None:
        return None
    val_data = _eval_dataset(cfg, data_dir, val_split, tokenizer)

    def validate(m: nn.Module) -> dict[str, float]:
        return evaluate_split(cfg.task.name, m, val_data, cfg.eval, cfg.train.precision, task)

    return validate


def _run_report(cfg: RunConfig, data_dir: str | Path, out_dir: Path, summary: dict[str, Any], tokenizer: Any,
                task: BaseTask, result: Any, monitor: str) -> dict[str, Any]:
    """metrics.json of a run: where the model comes from, and the test split's metrics of the best
    model (its validation metrics when there is no test split)."""
    val_split = cfg.eval.val_split
    precision = resolve_precision(cfg.train.precision, resolve_device(cfg.train.device))
    report: dict[str, Any] = {
        "task": cfg.task.name, "dataset": summary.get("dataset"), "protocol": summary.get("protocol"),
        "precision": precision.name, "precision_reason": precision.reason, "selected_on": val_split,
        "monitor": monitor, "best_step": result.best_step, "steps": result.steps,
        "val_is_test": bool(val_split and val_is_test(summary)),
    }
    test_split = cfg.eval.test_split if _split_size(summary, cfg.eval.test_split) else None
    if test_split is not None:
        from m3ae.models import M3AE

        best = M3AE.from_pretrained(out_dir / "best").to(resolve_device(cfg.train.device))
        metrics = evaluate_split(cfg.task.name, best, _eval_dataset(cfg, data_dir, test_split, tokenizer),
                                 cfg.eval, cfg.train.precision, task, progress=cfg.train.progress)
        report.update(split=test_split, **metrics)
    else:  # the validation metrics of the model in best/ (the last model's when nothing was selected)
        report.update(split=val_split, **(result.best_metrics or result.last_metrics))
    return report


def _write_model_card(cfg: RunConfig, best_dir: Path, summary: dict[str, Any], report: dict[str, Any]) -> None:
    """README.md in ``best/``: data, protocol, metrics, the command, intended use."""
    from m3ae.reports.model_card import current_command, write_model_card

    splits = {k: v.get("examples") for k, v in summary.get("splits", {}).items()}
    write_model_card(best_dir, {
        "name": f"{cfg.model.name} {cfg.task.name} on {summary.get('dataset')}",
        "task": cfg.task.name,
        "data": {"dataset": summary.get("dataset"), "protocol": summary.get("protocol"), "splits": splits},
        "base_model": (cfg.model.pretrained or cfg.model.name) + (
            f"; kept at a fresh initialisation: {', '.join(cfg.model.fresh)}" if cfg.model.fresh else ""),
        "metrics": {k: v for k, v in report.items() if isinstance(v, float) and k != "train_minutes"},
        "metrics_split": report.get("split"),
        "training": {"lr": cfg.optim.lr, "lr_multipliers": cfg.optim.lr_multipliers,
                     "batch_size": cfg.train.batch_size, "steps": report.get("steps"),
                     "best_step": report.get("best_step"), "selected_on": report.get("selected_on"),
                     "val_is_test": report.get("val_is_test"), "seed": cfg.train.seed,
                     "precision": f"{report.get('precision')} ({report.get('precision_reason')})",
                     "minutes": report.get("train_minutes"),
                     # the task's options (pre-training: the objectives and their additions to the paper)
                     **{f"task.{k}": v for k, v in task_options(cfg.task).items()}},
        "command": current_command(),
        # what the leakage guard of each `m3ae corpus` folder left out, so the card says it
        "leakage_guard": summary.get("guards", [summary["guard"]] if summary.get("guard") else []),
    })


def _with_seed(cfg: RunConfig, seed: int) -> RunConfig:
    return replace(cfg, train=replace(cfg.train, seed=seed))


def run_seeds(cfg: RunConfig, data_dir: str | Path, out_dir: str | Path, seeds: list[int] | None,
              resume: bool = False) -> dict[str, Any]:
    """One run, or one per seed under ``out_dir/seed_<s>`` with mean ± sd in ``out_dir/metrics.json``."""
    if not seeds:
        return train_run(cfg, data_dir, out_dir, resume)
    runs = [train_run(_with_seed(cfg, s), data_dir, Path(out_dir) / f"seed_{s}", resume) for s in seeds]
    numeric = [k for k, v in runs[0].items() if isinstance(v, float)]
    agg: dict[str, Any] = {"seeds": list(seeds), "runs": runs, "mean": {}, "sd": {}}
    for k in numeric:
        agg["mean"][k], agg["sd"][k] = mean_sd([r[k] for r in runs])
    if D.dist_info().is_main:
        atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(agg, indent=2) + "\n")
        lines = [f"{k:>10}: {agg['mean'][k]:.2f} ± {agg['sd'][k]:.2f}" for k in numeric]
        _say(f"mean ± sd over seeds {list(seeds)}:\n" + "\n".join(lines))
    return agg


def finetune(config: RunConfig | str | Path | dict, data_dir: str | Path, out_dir: str | Path, *,
             overrides: list | None = None, resume: bool = False, seeds: list[int] | None = None) -> dict:
    """Fine-tunes on a prepared VQA, classification or retrieval folder.

    Args:
        config: a recipe (YAML path, dict or RunConfig), e.g. ``configs/finetune/vqa_rad.yaml``.
        data_dir: a folder written by ``m3ae prepare``.
        out_dir: the run folder.
        overrides: dotted overrides, e.g. ``["--optim.lr", "5e-6"]``.
        resume: continue from ``out_dir/checkpoints`` when it exists.
        seeds: run once per seed (``out_dir/seed_<s>``) and report mean ± sd.

    Returns:
        The test split's metrics (``open``/``closed``/``overall`` for VQA, in percent) and where
        they come from (``split``, ``selected_on``, ``best_step``), or the per-seed aggregate.
    """
    cfg = resolve_config(config, overrides)
    if get_task(cfg.task.name).pretraining:
        raise M3AEError("this recipe pre-trains (task.name: pretrain); use m3ae pretrain")
    return run_seeds(cfg, data_dir, out_dir, seeds, resume)


def pretrain(config: RunConfig | str | Path | dict, data_dir: str | Path, out_dir: str | Path, *,
             overrides: list | None = None, resume: bool = False) -> dict:
    """Pre-trains with MLM + MIM + ITM on a prepared caption folder (see `finetune` for arguments)."""
    cfg = resolve_config(config, overrides)
    if not get_task(cfg.task.name).pretraining:
        raise M3AEError(f"this recipe fine-tunes (task.name: {cfg.task.name}); use m3ae finetune")
    return train_run(cfg, data_dir, out_dir, resume)


def evaluate(model_dir: str | Path, data_dir: str | Path, split: str = "test", *, batch_size: int = 32,
             precision: str = "auto", device: str = "auto", out_dir: str | Path | None = None,
             progress: bool = True, retrieval: str = "full", top_k: int = 128) -> dict[str, Any]:
    """Evaluates a saved model folder on a split of a prepared folder; prints a summary table.

    Retrieval models are scored with the original's full protocol unless ``retrieval="two-stage"``
    (dual-encoder ranking, cross-encoder re-ranking of each query's ``top_k``).

    The task follows the model's heads (vqa, cls, irtr); the data pipeline settings are the ones
    stored with the model at fine-tuning time (``config.json`` "data"), else the defaults at the
    model's image size.
    """
    from m3ae.data import DataConfig, load_tokenizer, read_summary
    from m3ae.guards import check_device
    from m3ae.inference.quantize import load_for_inference
    from m3ae.weights.io import read_metadata

    check_device(device, "--device")
    D.init_distributed(device)
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise M3AEError(f"{model_dir}: not a model folder (no config.json); pass a run's best/ folder")
    meta = read_metadata(model_dir)
    model, resolved = load_for_inference(model_dir, precision, resolve_device(device))
    precision = autocast_name(resolved)  # int8: quantised kernels, no autocast
    task = _saved_task(model_dir, meta, model)
    data_cfg = DataConfig.from_dict(meta["data"]) if "data" in meta else DataConfig(
        image_size=model.config.vision.image_size, patch_size=model.config.vision.patch_size)
    summary = read_summary(data_dir)
    if summary.get("task") not in get_task(task).accepts:
        raise M3AEError(f"{data_dir}: prepared for task {summary.get('task')!r}, the model is a {task} model")
    get_task(task).check_saved(meta, data_dir, model_dir)
    if not _split_size(summary, split):
        raise M3AEError(f"{data_dir}: split {split!r} has no examples")
    tokenizer = load_tokenizer(str(model_dir) if _has_tokenizer(model_dir) else None)
    task_args = replace(RunConfig().task, name=task, image_input=meta.get("image_input", "pixels"))
    cfg = RunConfig(data=data_cfg, task=task_args)
    cfg.eval = replace(cfg.eval, batch_size=batch_size, retrieval=retrieval, top_k=top_k)
    data = _eval_dataset(cfg, data_dir, split, tokenizer)
    metrics = evaluate_split(task, model, data, cfg.eval, precision, make_task(task, **task_options(task_args)),
                             progress=progress)
    report = {"task": task, "dataset": summary.get("dataset"), "split": split, "model": str(model_dir),
              "precision": resolved.name, **metrics}
    if D.dist_info().is_main:
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(report, indent=2) + "\n")
        print(format_table(report, title=f"{task} on {summary.get('dataset')} ({split} split)"), flush=True)
    return report


def _saved_task(model_dir: Path, meta: dict[str, Any], model: nn.Module) -> str:
    """The task a saved model is evaluated as: the one it recorded, else the first whose heads it has."""
    evaluable = [name for name, t in TASKS.items() if t.evaluates_saved]
    task = meta.get("task") or next((n for n in evaluable if set(TASKS[n].heads) <= set(model.config.heads)), None)
    if task not in evaluable:
        raise M3AEError(f"{model_dir}: the model has no {', '.join(evaluable[:-1])} or {evaluable[-1]} head "
                        "to evaluate")
    return task


def format_table(report: dict[str, Any], title: str = "metrics") -> str:
    """A two-column text table of the numeric entries of a report."""
    rows = [(k, v) for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    width = max([len(k) for k, _ in rows] + [6])
    lines = [title, "-" * (width + 14)]
    lines += [f"{k:<{width}}  {v:>10.2f}" if isinstance(v, float) else f"{k:<{width}}  {v:>10d}" for k, v in rows]
    return "\n".join(lines)
