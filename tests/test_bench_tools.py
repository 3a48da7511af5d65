"""Benchmark tools: `m3ae bench --profile` and the cost-growth report (no timing is asserted).

Fast (a few seconds): the profile runs one inference step of m3ae-tiny at 32 px in this process;
the report test feeds fixed JSON lines to the table writer. Nothing here needs the original code.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from m3ae.experiments.bench import BenchSpec, check_spec, profile_markdown, profile_title, run_here
from m3ae.errors import M3AEError

ROOT = Path(__file__).resolve().parents[1]


def _cost_growth():
    spec = importlib.util.spec_from_file_location("cost_growth", ROOT / "benchmarks" / "cost_growth.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_lists_the_top_ops_by_self_cpu_time():
    spec = BenchSpec(job="infer", size="m3ae-tiny", image_size=32, text_len=8, steps=1, warmup=0,
                     precision="fp32", threads=1, profile=2)
    result = run_here(spec)
    rows = result["profile_ops"]
    assert 0 < len(rows) <= 20
    assert {"op", "self_cpu_ms_per_step", "share_pct", "calls_per_step"} <= rows[0].keys()
    assert [r["self_cpu_ms_per_step"] for r in rows] == sorted((r["self_cpu_ms_per_step"] for r in rows),
                                                               reverse=True)
    assert sum(r["share_pct"] for r in rows) <= 100.0 + 1e-6
    table = profile_markdown(rows, profile_title(result))
    assert "| # | op | self CPU ms / step | share % | calls / step |" in table
    assert "`aten::addmm`" in table or "`aten::mm`" in table  # the Linear layers
    assert "infer m3ae-tiny" in table and "2 profiled step(s)" in table
    assert len(table.splitlines()) == 2 + 2 + len(rows)  # title, blank, header, rule, rows
    json.dumps(result)  # the child sends it to the parent as JSON


def test_profile_rejects_a_negative_count():
    with pytest.raises(M3AEError, match="--profile"):
        check_spec(BenchSpec(job="infer", profile=-1))


def _row(side, job, image, text, sec, gib, **extra):
    return {"side": side, "job": job, "image_size": image, "text_len": text, "sec_per_step": sec,
            "cpu_sec_per_step": 2 * sec, "peak_rss_gib": gib, "threads": 2, "cpu_bf16": True, "load_avg": 0.4,
            "load_avg_end": 1.9, "precision": "fp32", "size": "m3ae-base", "torch": "2.13.0", "steps": 2,
            "warmup": 1, **extra}


def test_cost_growth_table_formats_the_json_lines(tmp_path):
    growth = _cost_growth()
    rows = [
        _row("ours", "vqa", 224, 32, 10.0, 6.0),
        _row("original", "vqa", 224, 32, 15.0, 8.0, size="original-base"),
        _row("ours", "vqa", 384, 32, 25.0, 7.5),
        _row("original", "vqa", 384, 32, 30.0, 10.0, size="original-base"),
        _row("ours", "infer", 224, 32, 1.0, 1.5),
        {"side": "original", "job": "infer", "image_size": 224, "text_len": 32, "error": "error: boom"},
    ]
    table = growth.growth_markdown(rows)
    lines = table.splitlines()
    assert lines[0].startswith("- ours: m3ae-base, precision fp32, threads [2], cpu_bf16 True, load avg 0.40-1.90")
    assert lines[1].startswith("- original: original-base")
    assert "| job | image px | tokens | ours s/step |" in table
    assert "| vqa | 224 | 32 | 10.000 | 20.00 | 6.00 | 1.00x | 15.000 | 8.00 | 1.00x | 1.50x | 0.75x |" in lines
    assert "| vqa | 384 | 32 | 25.000 | 50.00 | 7.50 | 2.50x | 30.000 | 10.00 | 2.00x | 1.20x | 0.75x |" in lines
    assert "| infer | 224 | 32 | 1.000 | 2.00 | 1.50 | 1.00x | - | - | - | - | - |" in lines
    assert "- original infer 224 px 32 tokens: error: boom" in lines
    # ours only: no original line in the header, "-" in its columns
    alone = growth.growth_markdown([r for r in rows if r["side"] == "ours"])
    assert "- original:" not in alone and "| vqa | 384 | 32 | 25.000 | 50.00 | 7.50 | 2.50x | - |" in alone
    # the report file: table + the raw JSON lines
    out = tmp_path / "growth.md"
    growth.write_report(out, rows, "python benchmarks/cost_growth.py --images 224 384")
    text = out.read_text()
    assert "`python benchmarks/cost_growth.py --images 224 384`" in text and table in text
    raw = text.split("```jsonl\n")[1].split("\n```")[0].splitlines()
    assert [json.loads(line) for line in raw] == rows


def test_cost_growth_commands_pass_the_grid_point():
    growth = _cost_growth()
    args = argparse.Namespace(
        size="m3ae-tiny", steps=1, warmup=0, precision="fp32", threads=2, orig_python="/venv/bin/python",
        orig_src="/src")
    ours = growth.bench_command("ours", "vqa", 64, 16, args)
    assert ours[1:3] == ["-m", "m3ae.experiments.bench"] and ours[ours.index("--image-size") + 1] == "64"
    assert ours[ours.index("--text-len") + 1] == "16" and "--json" in ours and "m3ae-tiny" in ours
    orig = growth.bench_command("original", "vqa", 64, 16, args)
    assert orig[0] == "/venv/bin/python" and orig[1].endswith("bench_original.py") and "--tiny" in orig
    assert orig[orig.index("--orig-src") + 1] == "/src" and orig[orig.index("--threads") + 1] == "2"
