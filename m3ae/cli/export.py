"""Export a model folder to ONNX: vqa.onnx (image, ids, mask -> logits) and encoder.onnx (-> cls_feats).

Both graphs take a dynamic batch and a dynamic text length, up to the position table's limit
(512 tokens for RoBERTa-base; in OUT/export.json and each graph's metadata as max_text_len). Each
graph is run with ONNX Runtime on fresh inputs (batch 1 and 3; text lengths 3, the training length,
twice it, the limit) and compared with torch; the largest difference is printed and written to
OUT/export.json. Feeding a graph from the saved tokenizer: docs/serve.md. Needs the onnx extra
(pip install 'm3ae[onnx]': onnx, onnxscript, onnxruntime).

Example: m3ae export --model runs/vqa_rad/best --format onnx exported/vqa_rad
"""
from __future__ import annotations

import argparse

from m3ae.errors import M3AEError

PARITY_TOLERANCE = 1e-4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the export options."""
    parser.add_argument("out", metavar="OUT", help="folder for the graphs and export.json")
    parser.add_argument("--model", required=True, metavar="DIR", help="model folder or cached Hub id")
    parser.add_argument("--format", default="onnx", choices=("onnx",), help="export format")
    parser.add_argument("--graphs", nargs="+", choices=("vqa", "encoder"), default=None,
                        help="graphs to export (default: vqa when the model has a VQA head, and encoder)")
    parser.add_argument("--text-len", type=int, default=None, metavar="L",
                        help="training text length, around which parity is checked (default: the model's "
                             "max_text_len); the graphs take any length up to the position table's")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-torch comparison")


def run(args: argparse.Namespace) -> int:
    """Exports, checks parity, prints one line per graph; exit 1 when a graph misses the tolerance."""
    from m3ae.inference.export import export_onnx

    if args.text_len is not None and args.text_len < 1:
        raise M3AEError(f"--text-len must be at least 1 (got {args.text_len})")
    report = export_onnx(args.model, args.out, tuple(args.graphs) if args.graphs else None,
                         args.text_len, check=not args.no_check)
    worst = 0.0
    for graph, name in report.graphs.items():
        diff = report.max_abs_diff.get(graph)
        worst = max(worst, diff or 0.0)
        print(f"{args.out}/{name}" + (f"  max |onnxruntime - torch| = {diff:.2e}" if diff is not None else ""))
    if worst > PARITY_TOLERANCE:
        print(f"m3ae export: warning: ONNX output differs from torch by {worst:.2e} (> {PARITY_TOLERANCE})")
        return 1
    return 0
