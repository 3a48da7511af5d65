"""Crash safety: SIGKILL a training process mid-run, resume, and get the uninterrupted loss sequence."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from m3ae.train.checkpoint import latest_checkpoint
from m3ae.train.runlog import read_log

from helpers.toy import losses, run_toy

STEPS = 12



def test_sigkill_then_resume_reproduces_the_uninterrupted_losses(tmp_path):
    reference = tmp_path / "reference"
    run_toy(reference, max_steps=STEPS, checkpoint_every=2)

    run = tmp_path / "killed"
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from helpers.toy import run_toy;"
        f"run_toy(Path(sys.argv[2]), max_steps={STEPS}, checkpoint_every=2, delay=0.1)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent), str(run)], env=env)
    try:
        deadline = time.time() + 240  # generous: importing torch alone took 35 s on a loaded machine
        while len(read_log(run)) < 5:  # the checkpoint of step 4 is on disk once step 5 is logged
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"training subprocess ended early or hung (rc={proc.returncode})")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    done = len(read_log(run))
    assert done < STEPS, "the run finished before it could be killed"
    ckpt = latest_checkpoint(run / "checkpoints")
    assert ckpt is not None and 4 <= int(ckpt.name.split("_")[1]) < STEPS

    run_toy(run, max_steps=STEPS, checkpoint_every=2, resume=True)
    assert [r["step"] for r in read_log(run)] == list(range(1, STEPS + 1))
    assert losses(run) == pytest.approx(losses(reference), rel=1e-6)
