"""Stages 5-6 of the demo: the pictures (MAE reconstructions by the pre-trained start, training curves,
accuracy by question type), the results table, results.json, results.md and the model card."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from m3ae.errors import M3AEError
from m3ae.experiments.demo.planner import Plan
from m3ae.experiments.demo.sizes import DEMO_IMAGE_SIZE, DemoSizes
from m3ae.experiments.demo.stages import ROW_TITLES, RUN_FOLDERS, StageClock, question_types

RECONSTRUCTION_IMAGES = 4
RECONSTRUCTION_SEED = 1234


# ---------------------------------------------------------------------------- stage 5: pictures
def pick_test_images(src: Path, data_dir: Path, count: int) -> list[tuple[str, str]]:
    """`count` test images, one per organ first (head, chest, abdomen), each with one of its questions."""
    from m3ae.data.storage import read_table

    organ = {r["image_name"]: str(r.get("image_organ", "?")).strip().upper()
             for r in json.loads((src / "testset.json").read_text())}
    first_question: dict[str, str] = {}
    for row in read_table(data_dir / "test.arrow").to_pylist():
        first_question.setdefault(row["image_id"], row["question"])
    ids = list(first_question)
    by_organ = list({organ.get(i, "?"): i for i in reversed(ids)}.values())[::-1]  # first image of each organ
    chosen = (by_organ + [i for i in ids if i not in by_organ])[:count]
    return [(i, first_question[i]) for i in chosen]


def load_pixels(data_dir: Path, image_ids: list[str], size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """Prepared images through the evaluation transform: -> [B, 3, size, size], normalised."""
    from m3ae.data import images as image_ops
    from m3ae.data.storage import ImageStore

    store = ImageStore(data_dir)
    tensors = []
    for image_id in image_ids:
        image = image_ops.decode_image(store.get_bytes(image_id), image_id)
        square = image_ops.center_crop(image_ops.resize_shorter(image, size), size)
        tensors.append(image_ops.to_normalized_tensor(square, mean, std))
    return torch.stack(tensors)


@torch.no_grad()
def reconstruction_figure(model_dir: Path, src: Path, data_dir: Path, path: Path,
                          count: int = RECONSTRUCTION_IMAGES) -> Path:
    """MAE-style reconstructions of a few test images by the pre-trained model (text = a question)."""
    from m3ae.data import load_tokenizer
    from m3ae.inference.pipeline import preprocessing_from_config, read_folder_config
    from m3ae.reports import viz
    from m3ae.weights.factory import create_model

    model = create_model(None, pretrained=model_dir).eval()  # also a shipped folder, without its text tower
    pre = preprocessing_from_config(read_folder_config(model_dir), model.config.vision.image_size)
    picked = pick_test_images(src, data_dir, count)
    ids = [i for i, _ in picked]
    pixel_values = load_pixels(data_dir, ids, pre.image_size, pre.mean, pre.std)  # [B, 3, H, W]
    text = load_tokenizer(model_dir)([q for _, q in picked], padding="max_length", truncation=True,
                                     max_length=pre.max_text_len, return_tensors="pt")
    noise = torch.rand(len(picked), model.config.vision.num_patches,
                       generator=torch.Generator().manual_seed(RECONSTRUCTION_SEED))  # [B, L_i]
    ratio = model.config.mask_ratio_image
    out = model.encode(pixel_values, text["input_ids"], text["attention_mask"], image_noise=noise,
                       mask_ratio=ratio)
    pred = model.heads["mim"](model.mim_features(out), out.ids_restore)  # [B, L_i, P*P*C]
    panels = viz.reconstruction_panels(pixel_values, pred, out.image_mask, model.config.vision.patch_size,
                                       model.config.norm_pix_loss)
    caption = (f"{round(ratio * 100)}% of patches removed at random; text input = one of the image's test "
               "questions (no answer). "
               + ("With norm_pix_loss the model predicts each patch normalised by its own mean and variance, "
                  "so each predicted patch is de-normalised with the ORIGINAL patch's mean and variance (as "
                  "MAE's visualisation does): patch brightness comes from the original, structure from the "
                  "model."
                  if model.config.norm_pix_loss else "Predictions shown as they are."))
    return viz.plot_reconstructions(panels, path, caption=caption, mean=pre.mean, std=pre.std,
                                    title="MAE reconstructions by the pre-trained model (test images)",
                                    row_labels=[i.rsplit("/", 1)[-1] for i in ids])


def draw_figures(out: Path, src: Path, dirs: dict[str, Path], runs: dict[str, Path],
                 records: dict[str, list[dict[str, Any]]], min_type_count: int, start: Path) -> dict[str, Path]:
    """Reconstructions (by the pre-trained start), training curves and accuracy by question type (plus
    the per-question records)."""
    from m3ae.reports import viz

    figures = {"reconstructions": reconstruction_figure(start, src, dirs["vqa"], out / "reconstructions.png")}
    logs = {**({"demo pre-training": runs["pretrain"] / "log.jsonl"} if "pretrain" in runs else {}),
            **{f"fine-tuning: {row.replace('_', ' ')}": runs[row] / "log.jsonl" for row in RUN_FOLDERS
               if row in runs}}
    figures["curves"] = viz.plot_training_curves({k: v for k, v in logs.items() if v.is_file()},
                                                 out / "training_curves.png")
    types = question_types(src)
    by_type = {row: viz.accuracy_by_group([types.get(r["question_id"], "?") for r in rows],
                                          [r["score"] for r in rows]) for row, rows in records.items()}
    figures["question_types"] = viz.plot_accuracy_by_group(
        by_type, out / "accuracy_by_question_type.png", min_count=min_type_count,
        title=f"VQA-RAD test accuracy by question type (types with >= {min_type_count} questions)")
    (out / "accuracy_by_question_type.json").write_text(json.dumps(by_type, indent=2))
    for row, rows in records.items():
        (out / f"predictions_{row}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return figures


# ------------------------------------------------------------------------------ stage 6: report
def results_table(rows: dict[str, dict[str, float]], majority_answer: str | None = None,
                  sd: dict[str, dict[str, float]] | None = None) -> str:
    """A Markdown table of open / closed / overall per row (mean ± sd when ``sd`` is given)."""
    lines = ["| method | open | closed | overall |", "| --- | ---: | ---: | ---: |"]
    for row, m in rows.items():
        title = ROW_TITLES.get(row, row)
        if row == "majority" and majority_answer:
            title = f"majority answer ('{majority_answer}', from train)"
        cells = [f"{m[k]:.1f}" + (f" ± {sd[row][k]:.1f}" if sd else "") for k in ("open", "closed", "overall")]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_metrics(rows: dict[str, dict[str, float]]) -> None:
    """Every reported accuracy must be a percentage."""
    for name, metrics in rows.items():
        for key, value in metrics.items():
            if not 0.0 <= value <= 100.0:
                raise M3AEError(f"demo: {name} {key} = {value} is not a percentage")


def mean_table(tables: list[dict[str, dict[str, float]]]) -> tuple[dict, dict]:
    """Mean and sd (over seeds) of every row and metric."""
    from m3ae.metrics import mean_sd

    mean = {row: {} for row in tables[0]}
    sd = {row: {} for row in tables[0]}
    for row in tables[0]:
        for key in tables[0][row]:
            mean[row][key], sd[row][key] = mean_sd([t[row][key] for t in tables])
    return mean, sd


def write_report(out: Path, sizes: DemoSizes, table: dict[str, dict[str, float]], sd: dict | None,
                 tables: list[dict], seeds: list[int], figures: dict[str, Path], ft_run: Path,
                 dirs: dict[str, Path], clock: StageClock, plan: Plan | None, precision: Any, *, quick: bool,
                 seed: int, budget_minutes: float) -> None:
    """results.json, results.md and the model card of the fine-tuned model."""
    from m3ae.data import read_summary
    from m3ae.hardware import cpu_bf16
    from m3ae.reports.model_card import current_command, write_model_card

    summary = read_summary(dirs["vqa"])
    results = {"metrics": table, "split": "test", "protocol": "clean", "quick": bool(quick),
               "seeds": seeds, "metrics_sd": sd, "metrics_per_seed": dict(zip(map(str, seeds), tables)),
               "sizes": dataclasses.asdict(sizes), "seed": seed, "wall_time_s": clock.total,
               "plan": dataclasses.asdict(plan) if plan else None, "budget_minutes": budget_minutes,
               "precision": precision.name, "precision_reason": precision.reason, "cpu_bf16": cpu_bf16(),
               "stage_times_s": clock.times, "stage_cpu_s": clock.cpu_times, "cpu_time_s": clock.cpu_total,
               "threads": torch.get_num_threads(),
               "figures": {k: str(v) for k, v in figures.items()}, "data_summary": summary}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(
        "# m3ae demo results (VQA-RAD test split, clean protocol)\n\n" + results_table(table, sd=sd) + "\n\n"
        + (f"Mean ± sd over seeds {seeds}.\n\n" if sd else "")
        + f"`m3ae` fine-tunes the pre-trained {sizes.start_model} (its vision tower; the fusion re-initialised)"
        + (f"; `m3ae_demo_pretrain` the demo's own {sizes.pretrain_steps}-step pre-training, whose text was "
           "question + answer pairs of the train split, not real captions" if "m3ae_demo_pretrain" in table else "")
        + ". Research use only.\n")
    write_model_card(ft_run / "best", {
        "name": "m3ae-small fine-tuned on VQA-RAD (demo)", "task": "vqa",
        "data": {"dataset": "vqa-rad", "protocol": summary.get("protocol", "clean"),
                 "splits": {k: v.get("examples") for k, v in summary.get("splits", {}).items()}},
        "base_model": f"{sizes.start_model} (m3ae-small pre-trained by M3AE: MLM + MIM + ITM + ITC), its "
                      f"{', '.join(sizes.start_fresh)} re-initialised for fine-tuning",
        "metrics": tables[0]["m3ae"], "metrics_split": "test",
        "training": {"finetune_epochs": round(sizes.finetune_epochs, 2), "batch_size": sizes.finetune_batch_size,
                     "lr": sizes.finetune_lr, "precision": f"{precision.name} ({precision.reason})",
                     "loss": sizes.finetune_loss,
                     "lr_multipliers": f"fusion and heads x{sizes.finetune_head_multiplier:g}",
                     "image_size": DEMO_IMAGE_SIZE, "max_text_len": sizes.max_text_len, "seed": seeds[0]},
        "command": current_command(),
        "notes": "A demonstration model trained for minutes on CPU; far below the paper's numbers.",
    })
