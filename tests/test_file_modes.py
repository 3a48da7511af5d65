"""Every file m3ae writes honours the umask: prepared data, weights, checkpoints, JSON, PNG.

safetensors writes a private temp file (mode 0600) and renames it; on a shared cluster folder that
made the weights unreadable to everyone else while the JSON next to them was 0644.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from m3ae.cli import main
from m3ae.guards import current_umask, save_safetensors
from m3ae.reports.viz import plot_training_curves

from helpers.synthetic import REPO, TINY, prepare


@pytest.fixture
def umask(request):
    """Run the test under ``request.param`` as the umask, restoring the old one after."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _modes(folder: Path) -> dict[str, int]:
    """Permission bits of every regular file below ``folder``, by relative path."""
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode)
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("umask", [0o022, 0o027], indirect=True)
def test_every_file_of_a_tiny_run_has_the_umask_mode(umask, tmp_path):
    data = prepare(tmp_path, "pretrain")
    out = tmp_path / "run"
    assert main(["pretrain", "--config", str(REPO / "configs/pretrain/tiny.yaml"), "--data", str(data),
                 "--out", str(out), "--train.max_steps", "2", "--train.checkpoint_every", "1", *TINY]) == 0
    plot_training_curves({"pretrain": out / "log.jsonl"}, out / "training_curves.png")
    modes = _modes(tmp_path)
    for must in ("best/model.safetensors", "checkpoints/step_0000002/optimizer.safetensors",
                 "checkpoints/latest.json", "metrics.json", "training_curves.png"):
        assert f"run/{must}" in modes, must
    wrong = {name: oct(mode) for name, mode in modes.items() if mode != 0o666 & ~umask}
    assert not wrong, f"umask {umask:#o}: {wrong}"


@pytest.mark.parametrize("umask", [0o002], indirect=True)
def test_save_safetensors_reads_the_umask_without_changing_it(umask, tmp_path):
    import torch

    save_safetensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o664
    assert current_umask() == 0o002
