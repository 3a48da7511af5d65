"""Pictures of what a model learned: MAE reconstructions, training curves, accuracy by question type.

Everything here writes PNG files with matplotlib's Agg backend (no display needed). The array
maths (un-normalising images, de-normalising per-patch predictions) are pure functions, kept
apart from the plotting so they can be tested without looking at pictures.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from m3ae.errors import M3AEError
from m3ae.preprocessing import CLIP_MEAN, CLIP_STD  # defaults only: a model folder records its own

# The epsilon MAE adds to the per-patch variance in its norm_pix_loss target.
NORM_PIX_EPS = 1e-6
# Loss curves spanning more than this factor get a logarithmic axis.
LOG_SCALE_RATIO = 20.0


def _pyplot():
    """matplotlib.pyplot on the Agg backend (imported lazily: plotting is an optional extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def unnormalize(pixel_values: torch.Tensor, mean: Sequence[float] = CLIP_MEAN,
                std: Sequence[float] = CLIP_STD) -> np.ndarray:
    """Undo the mean/std normalisation and return displayable images.

    Args:
        pixel_values: normalised images [B, C, H, W] (or [C, H, W]).
        mean, std: per-channel values used to normalise.

    Returns:
        float array in [0, 1], [B, H, W, C] (or [H, W, C]).
    """
    x = pixel_values.detach().float().cpu()
    mean_t = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    x = (x * std_t + mean_t).clamp(0.0, 1.0)
    return x.movedim(-3, -1).numpy()  # [..., C, H, W] -> [..., H, W, C]


def denormalize_patches(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Map per-patch normalised predictions back to pixel space (MAE's visualisation).

    With ``norm_pix_loss`` the decoder learns to predict each patch normalised by *that patch's*
    mean and variance, so its raw output has no absolute brightness. As in MAE's demo notebook, we
    borrow the statistics of the original patch: ``pred * sqrt(var + eps) + mean``. The picture
    therefore shows structure the model predicted, with brightness taken from the original.

    Args:
        pred: decoder output [B, L_i, P*P*C].
        target: the original patches in the same space as the loss target [B, L_i, P*P*C].

    Returns:
        [B, L_i, P*P*C] predictions in the target's space.
    """
    mean = target.mean(dim=-1, keepdim=True)  # [B, L_i, 1]
    var = target.var(dim=-1, keepdim=True)  # unbiased, as the loss computes it
    return pred * (var + NORM_PIX_EPS).sqrt() + mean


def reconstruction_panels(pixel_values: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                          patch_size: int, norm_pix: bool) -> dict[str, torch.Tensor]:
    """The images a reconstruction figure shows, all still CLIP-normalised [B, C, H, W].

    Args:
        pixel_values: the original (normalised) images [B, C, H, W].
        pred: MIM decoder output [B, L_i, P*P*C].
        mask: [B, L_i], 1 = patch removed from the encoder's input.
        patch_size: P.
        norm_pix: whether the model was trained with per-patch normalised targets.

    Returns:
        ``original``, ``masked`` (removed patches set to 0, i.e. the dataset mean colour),
        ``reconstruction`` (every patch as predicted) and ``visible_plus_reconstruction``
        (visible patches from the original, removed ones from the prediction).
    """
    from m3ae.models.masking import patchify, unpatchify

    b, c, h, w = pixel_values.shape
    grid = (h // patch_size, w // patch_size)
    target = patchify(pixel_values, patch_size)  # [B, C, H, W] -> [B, L_i, P*P*C]
    if pred.shape != target.shape:
        raise M3AEError(f"prediction shape {tuple(pred.shape)} does not match patches {tuple(target.shape)}")
    pred = denormalize_patches(pred, target) if norm_pix else pred
    removed = mask.unsqueeze(-1).to(pred.dtype)  # [B, L_i] -> [B, L_i, 1]

    def image(patches: torch.Tensor) -> torch.Tensor:
        return unpatchify(patches, patch_size, c, grid)  # [B, L_i, P*P*C] -> [B, C, H, W]

    return {
        "original": pixel_values,
        "masked": image(target * (1 - removed)),
        "reconstruction": image(pred),
        "visible_plus_reconstruction": image(target * (1 - removed) + pred * removed),
    }


def plot_reconstructions(panels: Mapping[str, torch.Tensor], path: str | Path, *, title: str = "",
                         caption: str = "", mean: Sequence[float] = CLIP_MEAN,
                         std: Sequence[float] = CLIP_STD, row_labels: Sequence[str] | None = None) -> Path:
    """Save a grid: one row per image, one column per panel (see `reconstruction_panels`).

    Args:
        panels: name -> normalised images [B, C, H, W]; all with the same B.
        path: PNG to write.
        title: figure title.
        caption: text printed under the grid (e.g. how predictions were de-normalised).
        mean, std: the normalisation to undo.
        row_labels: one label per image (e.g. the file name).

    Returns:
        The path written.
    """
    plt = _pyplot()
    names = list(panels)
    images = {k: unnormalize(v, mean, std) for k, v in panels.items()}
    rows = images[names[0]].shape[0]
    fig, axes = plt.subplots(rows, len(names), figsize=(2.6 * len(names), 2.6 * rows + 0.9), squeeze=False)
    for r in range(rows):
        for col, name in enumerate(names):
            ax = axes[r][col]
            ax.imshow(images[name][r])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name.replace("_", " "), fontsize=10)
            if col == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    if caption:
        fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=7.5, wrap=True)
    fig.tight_layout(rect=(0, 0.06 if caption else 0, 1, 0.97 if title else 1))
    return _save(fig, path)


def read_log(path: str | Path) -> list[dict]:
    """Read a run's `log.jsonl` (one JSON object per line).

    Raises:
        M3AEError: naming the file and line when a line is not a JSON object.
    """
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise M3AEError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise M3AEError(f"{path}:{number}: expected a JSON object")
        records.append(record)
    return records


def curves_from_log(records: Sequence[Mapping], x_key: str = "step") -> dict[str, tuple[list, list]]:
    """Collect numeric series named like a loss or a metric from log records.

    Records without `x_key` are skipped. Keys containing "loss", or that are metrics of an
    evaluation (``open``, ``closed``, ``overall``, ``accuracy``), become series. A record whose
    ``kind`` is not "train" (e.g. "val", as `m3ae.train` logs evaluations) prefixes its keys with it.

    Returns:
        series name -> (x values, y values), in log order.
    """
    series: dict[str, tuple[list, list]] = {}
    for record in records:
        if x_key not in record:
            continue
        kind = record.get("kind", "train")
        for key, value in record.items():
            if key == x_key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            leaf = key.rsplit("/", 1)[-1]
            if "loss" in leaf or leaf in ("open", "closed", "overall", "accuracy"):
                if math.isfinite(value):
                    name = key if kind == "train" or "/" in key else f"{kind}/{key}"
                    xs, ys = series.setdefault(name, ([], []))
                    xs.append(record[x_key])
                    ys.append(value)
    return series


CURVE_COLUMNS = 3
"""Panels per row of the training-curves grid: 5 runs -> 2 rows, about 1,500 px wide at 100%."""
PANEL_INCHES = (4.6, 3.3)
"""Width and height of one panel (at the 110 dpi of `_save`)."""


def plot_training_curves(logs: Mapping[str, str | Path], path: str | Path, x_key: str = "step") -> Path:
    """A grid of panels, one per run: its loss curves (left axis) and evaluation accuracies (right).

    Every panel uses the same loss axis (one scale, log when the losses of all runs span more than
    ``LOG_SCALE_RATIO``, and one range) and the same accuracy axis (0-100), so panels compare at a
    glance; a series keeps its colour in every panel, and one legend sits outside the data (in the
    grid's spare cell, or below the grid when there is none).

    Args:
        logs: run name -> path of its `log.jsonl`.
        path: PNG to write.
        x_key: the field to use as the x axis.

    Returns:
        The path written.
    """
    plt = _pyplot()
    runs = {name: curves_from_log(read_log(log_path), x_key) for name, log_path in logs.items()}
    names = sorted({key for series in runs.values() for key in series})
    colours = {key: f"C{i % 10}" for i, key in enumerate(names)}
    columns = max(1, min(CURVE_COLUMNS, len(runs)))
    rows = max(1, math.ceil(len(runs) / columns))
    spare = rows * columns > len(runs)
    legend_inches = 0 if spare else 0.6  # a row for the legend below the grid when no cell is free
    fig, axes = plt.subplots(rows, columns, squeeze=False, sharey=True,
                             figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows + legend_inches))
    cells = list(axes.flat)
    log_scale = _log_loss_axis(runs)
    for i, (ax, (name, series)) in enumerate(zip(cells, runs.items())):
        # axis titles once per row: the left axis is shared, the accuracy axis is 0-100 everywhere
        row_end = i % columns == columns - 1 or i == len(runs) - 1
        _curve_panel(ax, name, series, colours, x_key, log_scale, i % columns == 0, row_end)
    for ax in cells[len(runs):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[k], linestyle="--" if "loss" not in k else "-",
                          marker="o" if "loss" not in k else None, markersize=3, label=k) for k in names]
    if handles and spare:  # the empty cell is the legend's
        cells[-1].legend(handles=handles, loc="center", fontsize=9,
                         title="series (dashed: accuracy, right axis)")
    elif handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
    return _save(fig, path)


def _log_loss_axis(runs: Mapping[str, Mapping[str, tuple[list, list]]]) -> bool:
    """One decision for every panel: a log loss axis when all losses span more than LOG_SCALE_RATIO
    (e.g. MLM at ~10 next to ITM at ~0.7), so no panel reads on another scale than its neighbours."""
    values = [y for series in runs.values() for key, (_, ys) in series.items() if "loss" in key for y in ys]
    return bool(values) and min(values) > 0 and max(values) / min(values) > LOG_SCALE_RATIO


def _curve_panel(ax, name: str, series: Mapping[str, tuple[list, list]], colours: Mapping[str, str],
                 x_key: str, log_scale: bool, loss_label: bool, accuracy_label: bool) -> None:
    """One run's panel: losses on the shared left axis, accuracies (%) on a 0-100 right axis."""
    from matplotlib.ticker import MaxNLocator

    ax.set_title(name, fontsize=10)
    ax.set_xlabel(x_key)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and epochs are whole numbers
    if log_scale:
        ax.set_yscale("log")
    if loss_label:
        ax.set_ylabel("loss (log scale)" if log_scale else "loss")
    ax.grid(alpha=0.3)
    scores = {k: v for k, v in series.items() if "loss" not in k}
    for key, (xs, ys) in sorted(series.items()):
        if "loss" in key:
            ax.plot(xs, ys, color=colours[key], linewidth=1.2, marker="." if len(xs) < 30 else None)
    if scores:
        twin = ax.twinx()
        for key, (xs, ys) in sorted(scores.items()):
            twin.plot(xs, ys, color=colours[key], linestyle="--", marker="o", markersize=3)
        twin.set_ylim(0, 100)
        if accuracy_label:
            twin.set_ylabel("accuracy (%)")
        else:
            twin.tick_params(labelright=False)
    if not series:
        ax.text(0.5, 0.5, "no numeric series in log", ha="center", transform=ax.transAxes)


def accuracy_by_group(groups: Sequence[str], correct: Sequence[float]) -> dict[str, tuple[float, int]]:
    """Accuracy per group label (e.g. VQA-RAD's question_type).

    Args:
        groups: one label per question.
        correct: one score per question (1 correct, 0 wrong).

    Returns:
        label -> (accuracy in percent, number of questions), sorted by decreasing count.
    """
    if len(groups) != len(correct):
        raise M3AEError(f"{len(groups)} group labels for {len(correct)} scores")
    totals: dict[str, list[float]] = {}
    for group, score in zip(groups, correct):
        totals.setdefault(group, []).append(float(score))
    stats = {g: (100.0 * sum(s) / len(s), len(s)) for g, s in totals.items()}
    return dict(sorted(stats.items(), key=lambda kv: (-kv[1][1], kv[0])))


def plot_accuracy_by_group(results: Mapping[str, Mapping[str, tuple[float, int]]], path: str | Path, *,
                           title: str = "Accuracy by question type", min_count: int = 1) -> Path:
    """Grouped horizontal bars: for each question type, one bar per model.

    Args:
        results: model name -> (group -> (accuracy %, count)), e.g. from `accuracy_by_group`.
        path: PNG to write.
        title: figure title.
        min_count: hide groups with fewer questions (their accuracy is noise).

    Returns:
        The path written.
    """
    plt = _pyplot()
    first = next(iter(results.values()))
    groups = [g for g, (_, n) in first.items() if n >= min_count]
    models = list(results)
    height = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(groups) * max(1, len(models)) ** 0.5 + 1.6))
    for i, model in enumerate(models):
        ys = [k + i * height for k in range(len(groups))]
        accs = [results[model].get(g, (0.0, 0))[0] for g in groups]
        bars = ax.barh(ys, accs, height=height, label=model)
        for bar, acc in zip(bars, accs):
            ax.text(bar.get_width() + 0.8, bar.get_y() + bar.get_height() / 2, f"{acc:.0f}",
                    va="center", fontsize=6.5)
    ax.set_yticks([k + height * (len(models) - 1) / 2 for k in range(len(groups))])
    ax.set_yticklabels([f"{g} (n={first[g][1]})" for g in groups], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Write a figure as PNG and free it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
