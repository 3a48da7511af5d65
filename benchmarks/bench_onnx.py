"""ONNX export benchmark: onnxruntime-vs-torch parity and CPU latency of the VQA graph.

For each preset: a model with random weights and a VQA head (speed and parity do not depend on the
weights) is saved, exported with `m3ae.inference.export.export_onnx` (vqa + encoder graphs), checked against
torch on fresh inputs, then timed: median wall time of a forward at batch 1 and 8, torch (no_grad,
eval) vs ONNX Runtime (CPU provider), both with the same number of intra-op threads.

Usage:
    python benchmarks/bench_onnx.py                                  # tiny and small, batch 1 and 8
    python benchmarks/bench_onnx.py --sizes m3ae-tiny --repeat 3 --warmup 1   # smoke run

Prints a Markdown table for docs/benchmarks.md. A benchmark, not a test: it asserts no speed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NUM_ANSWERS = 498  # VQA-RAD's answer list (paper protocol)


def _median_ms(fn, repeat: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_size(name: str, batches: list[int], repeat: int, warmup: int, threads: int, text_len: int) -> list[dict]:
    """Export one preset and time torch vs onnxruntime at each batch size."""
    import torch

    from m3ae.inference.export import INPUT_NAMES, example_inputs, export_onnx, graph_module, onnx_session
    from m3ae.models import M3AE, ModelConfig

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = M3AE(ModelConfig.from_name(name).with_heads(["vqa"], num_answers=NUM_ANSWERS)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "model", extra={"answers": [str(i) for i in range(NUM_ANSWERS)],
                                                          "preprocessing": {"max_text_len": text_len}})
        start = time.perf_counter()
        report = export_onnx(Path(tmp) / "model", Path(tmp) / "onnx")
        export_s = time.perf_counter() - start
        session = onnx_session(Path(tmp) / "onnx" / "vqa.onnx", threads=threads)
        module = graph_module(model, "vqa")
        rows = []
        for batch in batches:
            inputs = example_inputs(model, batch, text_len, seed=batch)
            feed = {n: t.numpy() for n, t in zip(INPUT_NAMES, inputs)}
            with torch.no_grad():
                torch_ms = _median_ms(lambda: module(*inputs), repeat, warmup)
            ort_ms = _median_ms(lambda: session.run(None, feed), repeat, warmup)
            rows.append({"model": name, "batch": batch, "torch_ms": torch_ms, "ort_ms": ort_ms,
                         "vqa_diff": report.max_abs_diff["vqa"], "encoder_diff": report.max_abs_diff["encoder"],
                         "export_s": export_s})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["m3ae-tiny", "m3ae-small"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeat", type=int, default=20, help="timed forwards per cell (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads, both runtimes")
    parser.add_argument("--text-len", type=int, default=32)
    args = parser.parse_args()
    rows = [r for name in args.sizes
            for r in bench_size(name, args.batches, args.repeat, args.warmup, args.threads, args.text_len)]
    print(f"threads {args.threads}, text length {args.text_len}, {NUM_ANSWERS} answers, median of {args.repeat}\n")
    print("| model | batch | torch ms | onnxruntime ms | speed-up | max diff vqa | max diff encoder | export s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['torch_ms']:.1f} | {r['ort_ms']:.1f} | "
              f"{r['torch_ms'] / r['ort_ms']:.2f}x | {r['vqa_diff']:.1e} | {r['encoder_diff']:.1e} | "
              f"{r['export_s']:.0f} |")


if __name__ == "__main__":
    main()
