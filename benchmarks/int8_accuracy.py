"""Does int8 inference give the fp32 model's answers? VQA accuracy of one fine-tuned model, twice.

Runs the model over a split of a prepared VQA folder in fp32, quantises its Linear layers to int8
(`m3ae.inference.quantize.quantize_int8`, what `--precision int8` does) and runs it again. Reports the share
of questions whose answer is unchanged, both accuracies (open / closed / overall, percent) and the
seconds each pass took. The goal (issue 12): the same answer on >= 98% of the VQA-RAD test
questions and overall accuracy within 1 point of fp32.

``--bf16-weights`` compares bf16 inference with bf16 weights (what ``--precision bf16``/``auto`` runs)
against bf16 autocast over the fp32 weights (what it ran before); goal: the same answer on >= 99%.

Usage:
    python benchmarks/int8_accuracy.py --model runs/vqa_rad/best --data prepared/vqa_rad --bf16-weights
    python benchmarks/int8_accuracy.py --model runs/vqa_rad/best --data prepared/vqa_rad [--split test]
        [--batch-size 32] [--threads N] [--parts vision_encoder text_encoder ...] [--sensitivity] [--json]

``--parts`` quantises only the named submodules (top-level or dotted, e.g. ``fusion.image_layers``);
``--sensitivity`` also quantises each part with Linear layers alone and reports its agreement, to find the
layers whose int8 error changes answers.

This is a benchmark, not a test: it asserts nothing, it prints.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GOAL_AGREEMENT = 98.0  # percent of questions with the fp32 answer
GOAL_ACCURACY_GAP = 1.0  # points of overall accuracy
GOAL_BF16_AGREEMENT = 99.0  # percent of questions where bf16 weights give bf16 autocast's answer (issue 26)


def load_split(model_dir: Path, data_dir: Path, split: str):
    """The fp32 model, its VQA task and the split's dataset, prepared as `m3ae evaluate` does."""
    from m3ae.data import DataConfig, load_tokenizer, make_dataset, read_answers
    from m3ae.errors import M3AEError
    from m3ae.models import M3AE
    from m3ae.train.runner import _has_tokenizer
    from m3ae.train.tasks import VQATask
    from m3ae.weights.io import read_metadata

    meta = read_metadata(model_dir)
    model = M3AE.from_pretrained(model_dir)
    if "vqa" not in model.heads:
        raise M3AEError(f"{model_dir} has no VQA head")
    if "answers" in meta and read_answers(data_dir) != meta["answers"]:
        raise M3AEError(f"{data_dir}: its answer list differs from the one {model_dir} was trained with")
    data_cfg = DataConfig.from_dict(meta["data"]) if "data" in meta else DataConfig(
        image_size=model.config.vision.image_size, patch_size=model.config.vision.patch_size)
    tokenizer = load_tokenizer(str(model_dir) if _has_tokenizer(model_dir) else None)
    dataset = make_dataset(data_dir, split, "vqa", data_cfg, tokenizer, train=False, seed=0)
    return model, VQATask(image_input=meta.get("image_input", "pixels")), dataset


KEYS = ("open", "closed", "overall")


def compare(model_dir: Path, data_dir: Path, split: str = "test", batch_size: int = 32,
            parts: tuple[str, ...] | None = None, sensitivity: bool = False) -> dict:
    """fp32 and int8 accuracy of one model on one split, and their answer agreement.

    With ``sensitivity``, ``report["sensitivity"]`` holds, for each part with Linear layers alone,
    its agreement with fp32 and its overall accuracy (the weights are re-read for each; the data
    and the fp32 answers are the same throughout).
    """
    from m3ae.models import M3AE
    from m3ae.inference.quantize import ALL_LINEAR_PARTS, QUANTIZED_PARTS, quantize_int8
    from m3ae.train.evaluation import evaluate_vqa

    parts = tuple(parts or QUANTIZED_PARTS)
    model, task, dataset = load_split(model_dir, data_dir, split)
    t0 = time.perf_counter()
    fp32, fp32_out = evaluate_vqa(model, dataset, batch_size, "fp32", task=task)
    fp32_s = time.perf_counter() - t0

    def int8_pass(model, quantised: tuple[str, ...]) -> tuple[dict, float, float]:
        quantize_int8(model, quantised)
        t0 = time.perf_counter()
        scores, out = evaluate_vqa(model, dataset, batch_size, "fp32", task=task)  # int8 runs outside autocast
        same = 100.0 * float((fp32_out["pred"] == out["pred"]).float().mean())
        return scores, same, time.perf_counter() - t0

    per_part = {}
    if sensitivity:
        for part in ALL_LINEAR_PARTS + ("fusion.text_layers", "fusion.image_layers"):
            scores, same, _ = int8_pass(M3AE.from_pretrained(model_dir), (part,))
            per_part[part] = {"same_answer_pct": same, "overall": scores["overall"]}
    int8, agreement, int8_s = int8_pass(model, parts)
    report = {
        "model": str(model_dir), "data": str(data_dir), "split": split, "n": fp32["n"], "parts": list(parts),
        "same_answer_pct": agreement,
        "fp32": {k: fp32[k] for k in KEYS if k in fp32}, "int8": {k: int8[k] for k in KEYS if k in int8},
        "overall_gap_points": int8["overall"] - fp32["overall"],
        "fp32_seconds": fp32_s, "int8_seconds": int8_s,
    }
    if per_part:
        report["sensitivity"] = per_part
    report["meets_goal"] = (agreement >= GOAL_AGREEMENT and abs(report["overall_gap_points"]) <= GOAL_ACCURACY_GAP)
    return report


def compare_bf16_weights(model_dir: Path, data_dir: Path, split: str = "test", batch_size: int = 32) -> dict:
    """bf16 inference as it runs now (bf16 weights) against autocast over the fp32 weights (before).

    Both passes run under bf16 autocast; the only difference is where the weights live. Reports the
    share of questions with the same answer, both accuracies and the fp32 accuracy for reference.
    """
    import torch

    from m3ae.models import M3AE
    from m3ae.train.evaluation import evaluate_vqa

    model, task, dataset = load_split(model_dir, data_dir, split)
    fp32, fp32_out = evaluate_vqa(model, dataset, batch_size, "fp32", task=task)
    t0 = time.perf_counter()
    auto, auto_out = evaluate_vqa(model, dataset, batch_size, "bf16", task=task)
    auto_s = time.perf_counter() - t0
    lean = M3AE.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    t0 = time.perf_counter()
    weights, weights_out = evaluate_vqa(lean, dataset, batch_size, "bf16", task=task)
    weights_s = time.perf_counter() - t0
    same = 100.0 * float((auto_out["pred"] == weights_out["pred"]).float().mean())
    return {
        "model": str(model_dir), "data": str(data_dir), "split": split, "n": fp32["n"], "mode": "bf16-weights",
        "same_answer_pct": same,
        "same_answer_as_fp32_pct": 100.0 * float((fp32_out["pred"] == weights_out["pred"]).float().mean()),
        "fp32": {k: fp32[k] for k in KEYS if k in fp32},
        "bf16_autocast": {k: auto[k] for k in KEYS if k in auto},
        "bf16_weights": {k: weights[k] for k in KEYS if k in weights},
        "bf16_autocast_seconds": auto_s, "bf16_weights_seconds": weights_s,
        "meets_goal": same >= GOAL_BF16_AGREEMENT,
    }


def format_bf16_report(r: dict) -> str:
    """A few readable lines for `compare_bf16_weights`."""
    def acc(scores: dict) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in scores.items())

    return "\n".join([
        f"{r['model']} on {r['data']} ({r['split']}, {r['n']} questions): bf16 weights vs bf16 autocast",
        f"same answer as autocast: {r['same_answer_pct']:.2f}% (goal >= {GOAL_BF16_AGREEMENT:g}%); "
        f"as fp32: {r['same_answer_as_fp32_pct']:.2f}%",
        f"fp32 accuracy:          {acc(r['fp32'])}",
        f"bf16 autocast accuracy: {acc(r['bf16_autocast'])}  [{r['bf16_autocast_seconds']:.1f} s]",
        f"bf16 weights accuracy:  {acc(r['bf16_weights'])}  [{r['bf16_weights_seconds']:.1f} s]",
        f"goal {'met' if r['meets_goal'] else 'NOT met'}",
    ])


def format_report(r: dict) -> str:
    """A few readable lines."""
    def acc(scores: dict) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in scores.items())

    lines = [f"  {part} alone: same answer {v['same_answer_pct']:.2f}%, overall {v['overall']:.2f}"
             for part, v in r.get("sensitivity", {}).items()]
    return "\n".join([
        f"{r['model']} on {r['data']} ({r['split']}, {r['n']} questions); int8: {', '.join(r['parts'])}",
        *(["int8 one part at a time:", *lines] if lines else []),
        f"same answer as fp32: {r['same_answer_pct']:.2f}% (goal >= {GOAL_AGREEMENT:g}%)",
        f"fp32 accuracy: {acc(r['fp32'])}  [{r['fp32_seconds']:.1f} s]",
        f"int8 accuracy: {acc(r['int8'])}  [{r['int8_seconds']:.1f} s]",
        f"overall gap: {r['overall_gap_points']:+.2f} points (goal within ±{GOAL_ACCURACY_GAP:g}); "
        f"goal {'met' if r['meets_goal'] else 'NOT met'}",
    ])


def main(argv: list[str] | None = None) -> int:
    """Parse the options, compare, print."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="a fine-tuned VQA model folder (a run's best/)")
    p.add_argument("--data", required=True, type=Path, help="the prepared VQA folder it was fine-tuned on")
    p.add_argument("--split", default="test", help="split to score (default test)")
    p.add_argument("--batch-size", type=int, default=32, help="questions per forward pass")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--parts", nargs="+", default=None,
                   help="submodules to quantise (default: those --precision int8 quantises)")
    p.add_argument("--sensitivity", action="store_true",
                   help="also quantise each part alone and report its agreement")
    p.add_argument("--bf16-weights", action="store_true",
                   help="instead of int8: compare bf16 inference with bf16 weights (what --precision bf16/auto "
                        "runs now) against bf16 autocast over the fp32 weights")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bf16_weights:
        report = compare_bf16_weights(args.model, args.data, args.split, args.batch_size)
        print(json.dumps(report) if args.json else format_bf16_report(report), flush=True)
        return 0
    report = compare(args.model, args.data, args.split, args.batch_size, args.parts, args.sensitivity)
    print(json.dumps(report) if args.json else format_report(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
