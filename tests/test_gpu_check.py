"""The CPU-safe parts of `m3ae gpu-check`: options, reports, MFU, the budget, the no-CUDA exit, and
the parity comparison itself (CPU against CPU on m3ae-tiny). The GPU checks run on a GPU only."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m3ae.cli import gpu_check as command
from m3ae.cli import main as cli_main
from m3ae.errors import M3AEError
from m3ae.experiments import gpu_check as G

ROOT = Path(__file__).resolve().parents[1]
ENV = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.13.0", "cuda": "12.8", "date": "2026-12-06 14:00 UTC"}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def test_options_parse_and_default_to_all_checks_in_nine_minutes(monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    args = _parse([])
    assert args.only is None and args.budget_minutes == 9.0 and args.out is None
    assert G.default_out() == "runs/gpu_check"
    monkeypatch.setenv("OUT", "/tmp/out")
    assert G.default_out() == "/tmp/out"  # the folder a GPU machine sends back
    args = _parse(["--only", "parity", "ddp", "--budget-minutes", "2.5", "--out", "x"])
    assert args.only == ["parity", "ddp"] and args.budget_minutes == 2.5 and args.out == "x"
    with pytest.raises(SystemExit):
        _parse(["--only", "nope"])


def test_help_names_every_check(capsys):
    with pytest.raises(SystemExit) as done:
        cli_main(["gpu-check", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in G.CHECKS) and "--budget-minutes" in text


def test_peak_table_and_mfu_arithmetic():
    assert G.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert G.peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0  # the variant before the plain name
    assert G.peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5
    assert G.peak_tflops("Tesla T4", "bf16") is None  # unknown: no MFU rather than a guess
    # 494.5 TFLOP in 1 s on a 989 TFLOP/s device: half of the peak
    assert G.mfu(494.5e12, 1.0, 989.0) == pytest.approx(0.5)
    assert G.mfu(1e12, 0.5, 10.0) == pytest.approx(0.2)
    assert G.mfu(1e12, 1.0, None) is None


def test_a_check_that_would_overrun_the_budget_is_skipped_and_says_so():
    assert G.budget_skip("parity", 0.0, 540.0) is None
    reason = G.budget_skip("pretrain", 500.0, 540.0)
    assert reason.startswith("skipped: would exceed the 9-minute budget") and "500 s spent" in reason

    ticks = iter([0.0, 0.0, 100.0, 530.0])  # start, then the clock before each check
    ran = []

    def runner(name, timeout_s):
        ran.append((name, timeout_s))
        return G.CheckResult(name, name != "parity", 1.0, {"x": 1.0}, None if name != "parity" else "boom")

    results = G.run_checks(["parity", "latency", "ddp"], 540.0, runner=runner, clock=lambda: next(ticks))
    assert ran == [("parity", 540.0), ("latency", 440.0)]  # a failed check does not stop the next one
    assert [r.ok for r in results] == [False, True, None]
    assert "budget" in results[2].error


def test_reports_hold_one_record_per_check_and_a_table(tmp_path):
    results = [G.CheckResult("parity", True, 12.34, {"vqa_fp32_loss_rel_diff": 1.5e-7}),
               G.CheckResult("pretrain", False, 3.0, {}, "OutOfMemoryError: a | b"),
               G.CheckResult("ddp", None, 0.0, error="skipped: would exceed the budget")]
    json_path, md_path = G.write_reports(results, tmp_path / "out", ENV)
    data = json.loads(json_path.read_text())
    assert data["device"] == ENV["device"] and [c["name"] for c in data["checks"]] == ["parity", "pretrain", "ddp"]
    assert set(data["checks"][0]) == {"name", "ok", "seconds", "numbers", "error"}
    assert [c["ok"] for c in data["checks"]] == [True, False, None]
    lines = md_path.read_text().splitlines()
    assert lines[0].startswith("GPU check on NVIDIA H100 80GB HBM3 (torch 2.13.0, CUDA 12.8")
    assert lines[2] == "| check | result | seconds | numbers | error |"
    assert lines[4] == "| parity | ok | 12.3 | vqa_fp32_loss_rel_diff 1.5e-07 |  |"
    assert lines[5] == "| pretrain | **failed** | 3.0 |  | OutOfMemoryError: a \\| b |"  # a pipe stays in its cell
    assert lines[6].startswith("| ddp | skipped |")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA exit needs a machine without CUDA")
def test_without_cuda_it_says_so_in_one_line_and_exits_zero(tmp_path, capsys):
    assert cli_main(["gpu-check", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"no CUDA device: nothing to check (torch {torch.__version__}, cuda available False)"]
    record = json.loads((tmp_path / "gpu_check.json").read_text())["checks"]
    assert record == [{"name": "cuda", "ok": None, "seconds": 0.0, "numbers": {}, "error": out[0]}]
    assert "nothing to check" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA exit needs a machine without CUDA")
def test_the_script_runs_the_module_with_the_python_it_is_given(tmp_path):
    env = {**os.environ, "M3AE_PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"using {sys.executable}" in done.stderr and "no CUDA device: nothing to check" in done.stdout
    assert json.loads((tmp_path / "gpu_check.json").read_text())["checks"][0]["name"] == "cuda"


def test_parity_of_a_device_with_itself_is_zero_and_a_changed_weight_fails_loudly():
    same = G.parity_diff("vqa", "fp32", "cpu", "cpu")
    assert same["loss_rel_diff"] == pytest.approx(0.0, abs=1e-6)
    assert same["grad_rel_diff"] == pytest.approx(0.0, abs=1e-6) and same["grads"] > 100
    G.check_parity_numbers(same, "fp32")
    changed = G.parity_diff("vqa", "fp32", "cpu", "cpu", perturb="heads.vqa.fc2.weight")
    assert changed["grad_rel_diff"] > G.PARITY_TOLERANCE["fp32"]
    with pytest.raises(M3AEError, match="fp32: loss differs by .* tolerance 0.001"):
        G.check_parity_numbers(changed, "fp32")
    with pytest.raises(M3AEError, match="tolerance"):  # a NaN never passes
        G.check_parity_numbers({**same, "loss_rel_diff": float("nan")}, "bf16")


def test_the_ddp_worker_trains_and_all_reduces_on_cpu_with_gloo(monkeypatch):
    # the same rank code as the NCCL smoke run, in this process, as a group of one over gloo
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    out = G.ddp_worker(backend="gloo", device="cpu")
    assert out["backend"] == "gloo" and out["world_size"] == 1 and out["gathered_ranks"] == [0]
    assert len(out["losses"]) == G.DDP_STEPS and out["allreduce_numel"] > 0
    assert not torch.distributed.is_initialized()  # the group is left behind by no one


def test_a_failing_check_becomes_a_record_with_its_error():
    result = G.run_check("no-such-check", timeout_s=120)
    assert result.ok is False and result.name == "no-such-check"
    assert "unknown check 'no-such-check'" in result.error


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
