"""Data parallelism: 2 CPU processes (gloo) give the losses of 1 process with the same global batch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from m3ae.train.runlog import read_log

from helpers.synthetic import REPO, prepare

# dropout off: the two layouts draw different dropout masks, everything else must agree
ARGS = ["--train.max_steps", "3", "--train.max_epochs", "null", "--train.batch_size", "4",
        "--train.progress", "false", "--train.tensorboard", "false", "--train.log_every", "1",
        "--model.config", "{fusion.dropout: 0.0, text.dropout: 0.0}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(data: Path, out: Path, world: int, per_device: int) -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "m3ae.cli", "finetune", "--config", str(REPO / "configs/finetune/vqa_rad_tiny.yaml"),
           "--data", str(data), "--out", str(out), "--train.per_device_batch_size", str(per_device), *ARGS]
    procs = []
    for rank in range(world):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "WORLD_SIZE": str(world),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        if world == 1:
            for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
                env.pop(key)
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = [p.communicate(timeout=150)[0].decode() for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    data = prepare(tmp_path, "vqa")
    _launch(data, tmp_path / "one", world=1, per_device=4)
    _launch(data, tmp_path / "two", world=2, per_device=2)
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4, abs=1e-6)
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["n"] == m1["n"] == 4  # every test question scored exactly once across the ranks
    assert m2["overall"] == pytest.approx(m1["overall"])
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-4)
