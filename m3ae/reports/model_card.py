"""Model cards: a README.md in every saved model folder saying what the model is and is not for.

A folder written by `M3AE.save_pretrained` describes its *architecture* (config.json); the card
describes its *history*: which data and protocol it was trained on, which split its metrics come
from, the command that produced it, and its intended use. `write_model_card(dir, info)` takes a
plain dict so that any producer (the fine-tuning loop, the demo, a conversion) can call it.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from m3ae.errors import M3AEError

CARD_NAME = "README.md"

# Keys of `info` that get their own section; anything else lands in the "Details" table.
KNOWN_KEYS = ("name", "task", "base_model", "data", "protocol", "metrics", "metrics_split", "command",
              "training", "intended_use", "limitations", "license", "citation", "notes", "leakage_guard")

INTENDED_USE = (
    "Research on medical vision-and-language models only. This model is **not** a medical device: "
    "it must not be used for diagnosis, treatment or any other clinical decision, and its answers "
    "must not be shown to patients or clinicians as medical advice."
)

LIMITATIONS = (
    "Trained and evaluated on small public radiology benchmarks; accuracy on other modalities, "
    "institutions, scanners or question styles is unknown. Answers come from a closed answer list "
    "learned from the training data: a question whose answer is not in that list cannot be answered "
    "correctly, and the reported probability is not a calibrated measure of correctness."
)

M3AE_CITATION = (
    "Chen, Z., Du, Y., Hu, J., Liu, Y., Li, G., Wan, X., Chang, T.-H. (2022). Multi-Modal Masked "
    "Autoencoders for Medical Vision-and-Language Pre-Training. MICCAI 2022. arXiv:2209.07098."
)


def current_command() -> str:
    """The command line of this process, shell-quoted (what a card records as `command`)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("m3ae", "cli.py", "cli/__main__.py")):  # the entry point, python -m m3ae.cli
        argv[0] = "m3ae"
    return " ".join(shlex.quote(a) for a in argv)


def _format_value(value: Any) -> str:
    """One table cell: numbers rounded, containers as compact JSON, pipes escaped."""
    if isinstance(value, float):
        text = f"{value:.2f}" if value == 0 or abs(value) >= 0.01 else f"{value:.3g}"  # lr 2e-4, not 0.00
    elif isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: dict[str, Any], header: tuple[str, str] = ("field", "value")) -> list[str]:
    """A two-column Markdown table."""
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {_format_value(k)} | {_format_value(v)} |" for k, v in rows.items()]
    return lines


def _metrics_section(metrics: Any, split: str | None) -> list[str]:
    """Metrics as a table; a nested dict (e.g. per question type) becomes one row per entry."""
    lines = ["## Metrics", ""]
    if split:
        lines += [f"Computed on the **{split}** split.", ""]
    if not isinstance(metrics, dict) or not metrics:
        return lines + ["No metrics recorded.", ""]
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return lines + _table(flat, ("metric", "value")) + [""]


# Hub pipeline tags (https://huggingface.co/docs/hub/model-cards): the Hub has no retrieval tag,
# so retrieval models take CLIP's (zero-shot image classification = image-text matching).
PIPELINE_TAGS = {"vqa": "visual-question-answering", "irtr": "zero-shot-image-classification",
                 "cls": "image-classification", "pretrain": "feature-extraction"}
TASK_NAMES = {"vqa": "Medical visual question answering", "irtr": "Image-text retrieval",
              "cls": "Image-text classification", "pretrain": "Vision-language pre-training"}


def _hub_base_model(base: Any) -> str | None:
    """``base_model`` only when it names a Hub repository (org/name), not a local folder or preset."""
    from m3ae.weights.hub import is_hub_id

    return str(base) if base and is_hub_id(str(base)) else None


def _model_index(info: dict[str, Any], dataset: str | None) -> list[dict[str, Any]]:
    """The Hub's ``model-index``: the metrics with their values, task, dataset and split."""
    metrics = info.get("metrics")
    if not isinstance(metrics, dict):
        return []
    values = [{"type": k, "name": k, "value": round(float(v), 4)} for k, v in metrics.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not values:
        return []
    task = info.get("task") or "pretrain"
    result = {"task": {"type": PIPELINE_TAGS.get(task, "other"), "name": TASK_NAMES.get(task, task)},
              "dataset": {"name": dataset or "unknown", "type": dataset or "unknown",
                          **({"split": info["metrics_split"]} if info.get("metrics_split") else {})},
              "metrics": values}
    return [{"name": str(info.get("name") or "M3AE model"), "results": [result]}]


def front_matter(info: dict[str, Any]) -> dict[str, Any]:
    """The YAML metadata block of the Hub's model-card specification, as a dict."""
    data = info.get("data")
    dataset = data.get("dataset") if isinstance(data, dict) else data
    task = info.get("task")
    meta: dict[str, Any] = {"library_name": "m3ae", "license": info.get("license", "apache-2.0"),
                            "tags": ["medical", "vision-language", "m3ae"] + ([task] if task else [])}
    if task in PIPELINE_TAGS:
        meta["pipeline_tag"] = PIPELINE_TAGS[task]
    if dataset:
        meta["datasets"] = [str(dataset)]
    if _hub_base_model(info.get("base_model")):
        meta["base_model"] = _hub_base_model(info.get("base_model"))
    index = _model_index(info, str(dataset) if dataset else None)
    if index:
        meta["metrics"] = sorted({m["type"] for m in index[0]["results"][0]["metrics"]})
        meta["model-index"] = index
    return meta


def _front_matter(info: dict[str, Any]) -> list[str]:
    """The metadata block between ``---`` lines, written with a YAML library (always parseable)."""
    import yaml

    text = yaml.safe_dump(front_matter(info), sort_keys=False, allow_unicode=True).rstrip("\n")
    return ["---", *text.split("\n"), "---", ""]


def _usage(task: str | None) -> list[str]:
    """The "How to use" lines the task declares (``card_usage``), none for an unknown task."""
    if not task:
        return []
    from m3ae.tasks import TASKS

    return list(TASKS[task].card_usage) if task in TASKS else []


def _data_section(info: dict[str, Any]) -> list[str]:
    """"## Data": the dataset (a table when a dict) and the protocol's meaning."""
    lines: list[str] = []
    data = info.get("data")
    protocol = info.get("protocol") or (data.get("protocol") if isinstance(data, dict) else None)
    lines += ["## Data", ""]
    if isinstance(data, dict):
        lines += _table(data) + [""]
    elif data:
        lines += [str(data), ""]
    else:
        lines += ["Not recorded.", ""]
    if protocol:
        lines += [f"Protocol: **{protocol}**" + (
            " (model selection on a validation split held out from train; the test split is used once)."
            if protocol == "clean" else
            " (reproduces the original; for VQA-RAD its validation split is a copy of test)."
            if protocol == "paper" else "."), ""]
    return lines


def _guard_section(guards: Any) -> list[str]:
    """"## Leakage guard": per corpus (`m3ae corpus` summary "guard"), the evaluation images it left out."""
    if not isinstance(guards, list) or not guards:
        return []
    lines = ["## Leakage guard", "",
             "The pre-training corpus left out every image that matched an image of these evaluation splits "
             "by id, by exact pixels or as a near duplicate (perceptual hash; docs/data.md).", "",
             "| evaluation folder | splits | its images | by id | exact pixels | near duplicate | threshold |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for guard in guards:
        for folder, counts in (guard.get("excluded") or {}).items():
            cells = [folder, "+".join(guard.get("splits", [])), counts.get("evaluation_images"),
                     counts.get("by_id"), counts.get("exact_pixels"), counts.get("near_duplicate"),
                     guard.get("threshold")]
            lines.append("| " + " | ".join(_format_value(c) for c in cells) + " |")
        if not guard.get("excluded"):
            lines.append("| (none given) | | | | | | |")
    return lines + [""]


def _closing_sections(info: dict[str, Any]) -> list[str]:
    """Details (unknown keys), notes, limitations and citation."""
    lines: list[str] = []
    extra = {k: v for k, v in info.items() if k not in KNOWN_KEYS}
    if extra:
        lines += ["## Details", ""] + _table(extra) + [""]
    if info.get("notes"):
        lines += ["## Notes", "", str(info["notes"]), ""]
    lines += ["## Limitations", "", str(info.get("limitations") or LIMITATIONS), ""]
    lines += ["## Citation", "", str(info.get("citation") or M3AE_CITATION), ""]
    return lines


def render_model_card(info: dict[str, Any]) -> str:
    """The Markdown text of a model card.

    Args:
        info: what is known about the model. Recognised keys: ``name``, ``task`` (e.g. "vqa"),
            ``base_model`` (preset or the folder it was initialised from), ``data`` (a dataset name
            or a dict such as ``{"dataset": "vqa-rad", "protocol": "clean", "splits": {...}}``),
            ``protocol``, ``metrics`` (dict, nested dicts allowed), ``metrics_split``, ``command``
            (defaults to this process's command line), ``training`` (dict of hyper-parameters),
            ``intended_use``, ``limitations``, ``license``, ``citation``, ``notes``, ``leakage_guard``
            (the "guard" records of the `m3ae corpus` folders it was pre-trained on). Any other key is
            listed under "Details".

    Returns:
        The card as Markdown.
    """
    if not isinstance(info, dict):
        raise M3AEError(f"model card info must be a dict, got {type(info).__name__}")
    name = info.get("name") or "M3AE model"
    lines = _front_matter(info) + [f"# {name}", ""]
    task = info.get("task")
    lines += [f"An M3AE model (multi-modal masked autoencoder){f' for **{task}**' if task else ''}, "
              "produced with the `m3ae` library.", ""]

    lines += ["## Intended use", "", str(info.get("intended_use") or INTENDED_USE), ""]

    lines += _data_section(info)
    lines += _guard_section(info.get("leakage_guard"))
    if info.get("base_model"):
        lines += ["## Initialisation", "", str(info["base_model"]), ""]
    lines += _metrics_section(info.get("metrics"), info.get("metrics_split"))
    if isinstance(info.get("training"), dict) and info["training"]:
        lines += ["## Training", ""] + _table(info["training"], ("setting", "value")) + [""]

    lines += ["## How it was produced", "", "```", str(info.get("command") or current_command()), "```", ""]
    usage = _usage(task)
    if usage:
        lines += ["## How to use", "", *usage, ""]

    lines += _closing_sections(info)
    return "\n".join(lines)


def write_model_card(model_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write `README.md` into a saved model folder (overwriting an older card).

    Args:
        model_dir: an existing folder written by `M3AE.save_pretrained`.
        info: see `render_model_card`.

    Returns:
        The path of the card.

    Raises:
        M3AEError: if the folder does not exist or `info` is not a dict.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise M3AEError(f"cannot write a model card: {model_dir} is not a folder")
    path = model_dir / CARD_NAME
    path.write_text(render_model_card(info), encoding="utf-8")
    return path
