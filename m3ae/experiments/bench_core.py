"""What `m3ae bench` and `benchmarks/bench_original.py` share: the paper's shapes, CPU time and load,
and the torch.profiler top-ops table.

Standard library and (lazily) torch only, never another `m3ae` module: the original's harness runs
in its own venv next to the original's package, which is also called `m3ae`, and loads this file
by path (`importlib.util.spec_from_file_location`).
"""

from __future__ import annotations

import os
import resource

JOBS = ("pretrain", "vqa", "infer")
JOB_TASKS = {"pretrain": "pretrain", "vqa": "vqa", "infer": "vqa"}  # job -> the task (m3ae.tasks) it times
PAPER_SHAPES = {  # job -> (batch, image size, text length) of the paper's recipes
    "pretrain": (4, 288, 64),
    "vqa": (4, 384, 32),
    "infer": (1, 384, 32),
}
NUM_ANSWERS = 498  # VQA-RAD's answer list
MASK_TOKEN_ID, BOS_ID, EOS_ID = 50264, 0, 2  # RoBERTa's <mask>, <s>, </s>


def cpu_seconds() -> float:
    """User + system CPU time of this process (less sensitive than wall time to other jobs)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_avg() -> float | None:
    """The 1-minute load average, printed with every figure."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


PROFILE_TOP = 20


def profile_steps(step, n: int, sync=lambda: None, top: int = PROFILE_TOP) -> list[dict]:
    """Run ``step`` ``n`` times under torch.profiler (CPU activity) and return the ``top`` ops by
    self CPU time: name, self CPU ms per step, share of all ops' self CPU time (%), calls per step.

    Self time is an op's own time without the ops it calls, so the shares add up to at most 100%
    and the table says where the CPU actually went (``aten::addmm`` = Linear layers, ...).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
        sync()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total_us = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / n,
             "share_pct": 100.0 * e.self_cpu_time_total / total_us, "calls_per_step": e.count / n}
            for e in events[:top]]


def profile_markdown(rows: list[dict], title: str = "") -> str:
    """The rows of `profile_steps` as a Markdown table (``title`` as a heading line, when given)."""
    lines = [f"**{title}**", ""] if title else []
    lines += ["| # | op | self CPU ms / step | share % | calls / step |", "|---:|---|---:|---:|---:|"]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | `{r['op']}` | {r['self_cpu_ms_per_step']:.2f} | {r['share_pct']:.1f} | "
                     f"{r['calls_per_step']:g} |")
    return "\n".join(lines)
