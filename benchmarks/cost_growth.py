"""How step time and peak memory grow with the image size and the text length, ours vs the original.

For each point of the grid (jobs x image sizes x text lengths) this runs ``m3ae bench --json`` (our
library, this checkout) and, when ``--orig-python`` and ``--orig-src`` are given,
``benchmarks/bench_original.py --json`` (the original code, in its own venv). Every run is a fresh
process. The output file gets a Markdown table (s/step, peak RSS, growth against the grid's
smallest point, original/ours ratios) and the raw JSON lines; it is rewritten after every run, so
an interrupted grid keeps what it measured.

Usage (our venv; the original's venv only as --orig-python):
    python benchmarks/cost_growth.py --out cost_growth.md                 # ours only, full grid
    python benchmarks/cost_growth.py --orig-python /work/orig-venv/bin/python --orig-src /tmp/m3ae-orig \\
        --jobs vqa infer --images 224 384 --texts 32 128 --precision fp32 --threads 2 --out cost_growth.md
    python benchmarks/cost_growth.py --size m3ae-tiny --images 32 64 --texts 8 16 --steps 1 --warmup 0 \\
        --orig-python /work/orig-venv/bin/python --orig-src /tmp/m3ae-orig --out /tmp/g.md   # seconds

With ``--size m3ae-tiny`` the original runs with ``--tiny`` (comparable widths, not identical models).
This is a benchmark, not a test: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOBS = ("pretrain", "vqa", "infer")


def bench_command(side: str, job: str, image: int, text: int, args: argparse.Namespace) -> list[str]:
    """The command line of one run: ours (``m3ae.experiments.bench``) or the original's harness."""
    common = ["--job", job, "--image-size", str(image), "--text-len", str(text), "--steps", str(args.steps),
              "--warmup", str(args.warmup), "--precision", args.precision, "--threads", str(args.threads), "--json"]
    if side == "ours":
        return [sys.executable, "-m", "m3ae.experiments.bench", "--size", args.size, *common]
    tiny = ["--tiny"] if args.size == "m3ae-tiny" else []
    return [args.orig_python, str(ROOT / "benchmarks" / "bench_original.py"), "--orig-src", args.orig_src,
            *tiny, *common]


def run_point(side: str, job: str, image: int, text: int, args: argparse.Namespace) -> dict:
    """One run in a fresh process; its JSON line, or a row with ``error``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if side == "ours":  # this checkout's library, whatever the venv has installed
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    else:  # the original's package is also called m3ae: keep ours off its path
        env.pop("PYTHONPATH", None)
    proc = subprocess.run(bench_command(side, job, image, text, args), capture_output=True, text=True, env=env)
    row = {"side": side, "job": job, "image_size": image, "text_len": text}
    if proc.returncode != 0:
        from m3ae.experiments.bench import child_failure

        return {**row, "error": child_failure(proc)[:300]}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "side": side}


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _conditions(rows: list[dict]) -> str:
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return "no successful run"
    loads = [x for r in ok for x in (r.get("load_avg"), r.get("load_avg_end")) if x is not None]
    load = f"{min(loads):.2f}-{max(loads):.2f}" if loads else "?"
    first = ok[0]
    return (f"{first.get('size', '?')}, precision {first.get('precision', '?')}, threads "
            f"{sorted({r.get('threads') for r in ok})}, cpu_bf16 {first.get('cpu_bf16')}, "
            f"load avg {load} (start/end of the runs), torch {first.get('torch', '?')}, "
            f"median of {first.get('steps', '?')} step(s) after {first.get('warmup', '?')} warm-up")


def growth_markdown(rows: list[dict]) -> str:
    """The Markdown table of a grid: rows are the JSON lines (``side`` = ours or original).

    Per (job, image size, text length): s/step, CPU s/step and peak RSS of each side, each side's
    step time against its own smallest grid point of the job ("x smallest"), and the ratios
    original / ours (s/step: > 1 means ours is faster) and ours / original (memory: < 1 means
    ours uses less). A side that was not run or failed leaves its cells "-" (the error is listed).
    """
    by_key: dict[tuple, dict] = {}
    order: list[tuple] = []
    for r in rows:
        key = (r["job"], r["image_size"], r["text_len"])
        if key not in by_key:
            by_key[key] = {}
            order.append(key)
        by_key[key][r["side"]] = r
    sides = {r["side"] for r in rows}
    lines = [f"- ours: {_conditions([r for r in rows if r['side'] == 'ours'])}"]
    if "original" in sides:
        lines.append(f"- original: {_conditions([r for r in rows if r['side'] == 'original'])}")
    lines += ["", "| job | image px | tokens | ours s/step | ours CPU s/step | ours peak GiB | ours x smallest "
              "| original s/step | original peak GiB | original x smallest | original/ours s/step "
              "| ours/original memory |", "|---|---:|---:|" + "---:|" * 9]
    base: dict[tuple, float] = {}  # (side, job) -> s/step at the job's smallest point
    for side in ("ours", "original"):
        for job in dict.fromkeys(k[0] for k in order):
            points = sorted((k[1], k[2], by_key[k][side]["sec_per_step"]) for k in order
                            if k[0] == job and side in by_key[k] and "error" not in by_key[k][side])
            if points:
                base[(side, job)] = points[0][2]
    errors = []
    for key in order:
        job, image, text = key
        cells = {}
        for side in ("ours", "original"):
            r = by_key[key].get(side)
            if r is not None and "error" in r:
                errors.append(f"- {side} {job} {image} px {text} tokens: {r['error']}")
                r = None
            cells[side] = r
        o, g = cells["ours"], cells["original"]

        def growth(side, r):
            return f"{r['sec_per_step'] / base[(side, job)]:.2f}x" if r else "-"
        speed = f"{g['sec_per_step'] / o['sec_per_step']:.2f}x" if o and g else "-"
        memory = f"{o['peak_rss_gib'] / g['peak_rss_gib']:.2f}x" if o and g else "-"
        lines.append(
            f"| {job} | {image} | {text} | {_fmt(o and o['sec_per_step'], '.3f')} | "
            f"{_fmt(o and o['cpu_sec_per_step'], '.2f')} | {_fmt(o and o['peak_rss_gib'], '.2f')} | {growth('ours', o)} | "
            f"{_fmt(g and g['sec_per_step'], '.3f')} | {_fmt(g and g['peak_rss_gib'], '.2f')} | "
            f"{growth('original', g)} | {speed} | {memory} |")
    if errors:
        lines += ["", "Failed runs:", *errors]
    return "\n".join(lines)


def write_report(path: Path, rows: list[dict], command: str) -> None:
    """The table, the command that made it and the raw JSON lines, in one Markdown file."""
    raw = "\n".join(json.dumps(r) for r in rows)
    path.write_text(f"# Cost growth\n\nCommand: `{command}`\n\n{growth_markdown(rows)}\n\n"
                    f"Raw JSON lines (one per run):\n\n```jsonl\n{raw}\n```\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", nargs="+", default=["vqa", "infer"], choices=JOBS)
    p.add_argument("--images", nargs="+", type=int, default=[224, 288, 384, 512], help="image sides (multiples of 16)")
    p.add_argument("--texts", nargs="+", type=int, default=[32, 64, 128], help="text lengths in tokens")
    p.add_argument("--size", default="m3ae-base", help="our preset (m3ae-tiny runs the original with --tiny)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per point (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"))
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads, both sides (0 = torch's default)")
    p.add_argument("--orig-python", help="the Python of the original's venv (with --orig-src: also time the original)")
    p.add_argument("--orig-src", help="root of a checkout of the original M3AE repository")
    p.add_argument("--out", default="cost_growth.md", help="the Markdown report (rewritten after every run)")
    args = p.parse_args(argv)
    if bool(args.orig_python) != bool(args.orig_src):
        p.error("--orig-python and --orig-src go together")
    sides = ["ours", "original"] if args.orig_python else ["ours"]
    out, rows = Path(args.out), []
    command = " ".join(["python benchmarks/cost_growth.py", *(argv if argv is not None else sys.argv[1:])])
    for job in args.jobs:
        for image in args.images:
            for text in args.texts:
                for side in sides:
                    rows.append(run_point(side, job, image, text, args))
                    r = rows[-1]
                    status = r.get("error") or (f"{r['sec_per_step']:.3f} s/step, {r['peak_rss_gib']:.2f} GiB, "
                                                f"load avg {r['load_avg']}")
                    print(f"{side:8s} {job} {image} px {text} tokens: {status}", flush=True)
                    write_report(out, rows, command)
    print(growth_markdown(rows))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
