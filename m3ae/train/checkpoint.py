"""Resumable checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint is a folder ``checkpoints/step_0000100/`` holding ``model.safetensors``,
``optimizer.safetensors`` (AdamW moments), ``rng.safetensors`` (torch RNG states) and
``state.json`` (step, data position, optimizer hyper-parameters, scaler, numpy/python RNG, config).
It is written into a temporary folder, every file is fsync'ed, and the folder is renamed into
place; ``checkpoints/latest.json`` then points at it. A crash at any moment leaves either the old or
the new checkpoint complete, never a half-written one. Nothing is unpickled when loading.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from m3ae.errors import CheckpointError
from m3ae.guards import atomic_write_text, fsync_dir, save_safetensors

LATEST = "latest.json"
STATE = "state.json"


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _plain_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies with no shared storage (what safetensors requires)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


# -- optimizer ------------------------------------------------------------------------------------

def optimizer_to_flat(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Splits ``optimizer.state_dict()`` into tensors (``state.<param>.<key>``) and JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt_state["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": _jsonable(opt_state["param_groups"]), "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of `optimizer_to_flat`: a dict ``optimizer.load_state_dict`` accepts."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, st in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if torch.is_tensor(obj):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


# -- RNG ------------------------------------------------------------------------------------------

def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Torch (CPU and CUDA) RNG states as tensors, numpy and python ones as JSON."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _jsonable(random.getstate()),
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Restores what `rng_state` saved."""
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    if "numpy" in meta:
        kind, keys, pos, has_gauss, gauss = meta["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "python" in meta:
        version, internal, gauss = meta["python"]
        random.setstate((version, tuple(internal), gauss))


# -- save / load ----------------------------------------------------------------------------------

def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Writes ``ckpt_dir/step_{step:07d}`` atomically and points ``latest.json`` at it.

    Args:
        ckpt_dir: the run's ``checkpoints/`` folder.
        step: optimisation steps done.
        model: the (unwrapped) model.
        optimizer: its optimizer.
        state: JSON-serialisable extras: data position, scheduler, scaler, config, best metric.
        keep: number of step checkpoints to keep (older ones are deleted after the new one exists).

    Returns:
        The checkpoint folder.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:07d}"
    tmp = ckpt_dir / f".tmp_step_{step:07d}"
    for stale in ckpt_dir.glob(".tmp_step_*"):  # a killed run's half-written checkpoints; the run
        shutil.rmtree(stale, ignore_errors=True)  # folder is locked, so no live writer owns them
    tmp.mkdir()
    opt_tensors, opt_meta = optimizer_to_flat(optimizer.state_dict())
    rng_tensors, rng_meta = rng_state()
    save_safetensors(_plain_tensors(model.state_dict()), tmp / "model.safetensors")
    save_safetensors(_plain_tensors(opt_tensors), tmp / "optimizer.safetensors")
    save_safetensors(_plain_tensors(rng_tensors), tmp / "rng.safetensors")
    meta = {"step": step, "optimizer": opt_meta, "rng": rng_meta, **_jsonable(state)}
    (tmp / STATE).write_text(json.dumps(meta))
    for f in tmp.iterdir():
        _fsync_file(f)
    fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(ckpt_dir)
    atomic_write_text(ckpt_dir / LATEST, json.dumps({"step": step, "path": final.name}))
    _prune(ckpt_dir, keep, final)
    return final


def _prune(ckpt_dir: Path, keep: int, newest: Path) -> None:
    olds = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir() and p != newest)
    for p in olds[: max(0, len(olds) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The folder ``latest.json`` points at, or None when there is no checkpoint yet."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / LATEST
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["path"]
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{pointer}: unreadable checkpoint pointer ({err})") from None
    path = ckpt_dir / name
    if not (path / STATE).is_file():
        raise CheckpointError(f"{pointer} points at {path}, which is not a complete checkpoint")
    return path


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Loads a checkpoint folder into ``model`` (strict) and ``optimizer``; restores RNG states.

    Returns:
        The JSON state (step, data position, scheduler, scaler, config, ...).

    Raises:
        CheckpointError: missing files, unreadable files, or keys/shapes that do not match.
    """
    path = Path(path)
    try:
        meta = json.loads((path / STATE).read_text())
        weights = load_file(str(path / "model.safetensors"))
        opt_tensors = load_file(str(path / "optimizer.safetensors"))
        rng_tensors = load_file(str(path / "rng.safetensors"))
    except (OSError, ValueError, SafetensorError) as err:
        raise CheckpointError(f"{path}: cannot read checkpoint: {err}") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}/model.safetensors does not match the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    bad = [k for k in own if own[k].shape != weights[k].shape]
    if bad:
        raise CheckpointError(f"{path}/model.safetensors: shape mismatch for {bad[:5]}")
    model.load_state_dict(weights, strict=True)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(optimizer_from_flat(opt_tensors, meta["optimizer"]))
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"{path}: optimizer state does not match: {err}") from None
    set_rng_state(rng_tensors, meta.get("rng", {}))
    return meta


# -- resume: exact or refused ---------------------------------------------------------------------

RESUME_MAY_CHANGE = (
    "train.max_steps", "train.max_epochs",  # extending a run
    "train.log_every", "train.progress", "train.tensorboard",  # bookkeeping only
    "train.checkpoint_every", "train.keep_checkpoints", "train.device",
    "eval.batch_size", "eval.retrieval_text_batch",  # evaluation speed, not its result
)
"""Recipe fields a resumed run may change; any other difference would make the resumed run a
different run than its config.yaml claims (e.g. a new optim.lr applied from the middle on)."""


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted ``key: old -> new`` lines for every leaf that differs between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            lines += config_differences(old.get(key), new.get(key), name)
        return lines
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # YAML/JSON turn tuples into lists
    return [] if norm(old) == norm(new) else [f"{prefix}: {old!r} -> {new!r}"]


def checkpoint_state(ckpt_dir: str | Path) -> dict[str, Any] | None:
    """The JSON state of the latest checkpoint (step, scheduler, config, ...), or None."""
    path = latest_checkpoint(ckpt_dir)
    if path is None:
        return None
    try:
        return json.loads((path / STATE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path / STATE}: unreadable checkpoint state ({err})") from None


def check_resume(run_dir: str | Path, new_config: dict[str, Any]) -> dict[str, Any] | None:
    """Compare the recipe of ``--resume`` with the one the run's checkpoint was trained with.

    Returns:
        The latest checkpoint's state, or None when the run has no checkpoint yet.

    Raises:
        M3AEError: any difference outside `RESUME_MAY_CHANGE`, listed one by one.
    """
    state = checkpoint_state(Path(run_dir) / "checkpoints")
    if state is None or "config" not in state:
        return state
    diffs = [d for d in config_differences(state["config"], new_config)
             if not d.startswith(tuple(f"{k}:" for k in RESUME_MAY_CHANGE))]
    if diffs:
        raise CheckpointError(
            f"--resume {run_dir}: the recipe differs from the one the run was trained with: "
            + "; ".join(diffs) + f". Only {', '.join(RESUME_MAY_CHANGE)} may change on resume; "
            "start a new run (another --out) to train with other settings")
    return state


def run_is_finished(state: dict[str, Any] | None, new_config: dict[str, Any]) -> bool:
    """True when the checkpoint is the end of a run whose length the new recipe keeps."""
    if not state or "config" not in state:
        return False
    length = [d for d in config_differences(state["config"], new_config)
              if d.startswith(("train.max_steps:", "train.max_epochs:"))]
    return not length and state.get("step", 0) >= state.get("scheduler", {}).get("total", float("inf"))
