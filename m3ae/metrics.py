"""Evaluation metrics: pure functions over label indices and score matrices (numpy or torch in).

All accuracies and recalls are returned in percent, the unit the paper reports.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from m3ae.errors import M3AEError

# answer_type strings and their integer codes (the data contract: 0 closed, 1 open)
_ANSWER_TYPES = {"closed": 0, "open": 1}


def _as_numpy(x: Any, name: str) -> np.ndarray:
    """Converts a tensor/list/array to a 1-D or 2-D numpy array (torch is optional here)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 0:
        raise M3AEError(f"{name}: expected a sequence, got a scalar")
    return arr


def _answer_type_codes(answer_type: Any) -> np.ndarray:
    """Maps "open"/"closed" strings (any case) or 1/0 ints to 1/0."""
    arr = _as_numpy(answer_type, "answer_type")
    if arr.dtype.kind in "iub":
        codes = arr.astype(np.int64)
    else:
        try:
            codes = np.array([_ANSWER_TYPES[str(a).strip().lower()] for a in arr], dtype=np.int64)
        except KeyError as err:
            raise M3AEError(f"answer_type: unknown value {err.args[0]!r}; use 'open'/'closed' or 1/0") from None
    if not np.isin(codes, (0, 1)).all():
        raise M3AEError("answer_type: integer codes must be 0 (closed) or 1 (open)")
    return codes


def _percent_mean(hits: np.ndarray) -> float:
    """Mean of 0/1 hits in percent; 0.0 for an empty selection (the original reports 0 there)."""
    return float(hits.mean() * 100.0) if hits.size else 0.0


def vqa_scores(pred: Any, target: Any, answer_type: Any) -> dict[str, float]:
    """VQA accuracy split by answer type, as the original `VQARADScore` computes it.

    A sample scores 1 when the predicted label (the argmax) is its answer. The original scores
    the target vector at the argmax; with one answer per question that is the same thing, and a
    target of -1 (answer outside the closed answer set) can never be hit, so it scores 0.

    Args:
        pred: [N] predicted label indices.
        target: [N] true label indices, -1 for an answer outside the answer set.
        answer_type: [N] "open"/"closed" strings or 1/0 ints (1 = open), from the data annotation.

    Returns:
        ``{"open", "closed", "overall"}`` in percent. An answer type with no samples scores 0.0
        (MedVQA-2019 has no closed questions; the original reports 0 there too).
    """
    pred_np = _as_numpy(pred, "pred").astype(np.int64).reshape(-1)
    target_np = _as_numpy(target, "target").astype(np.int64).reshape(-1)
    codes = _answer_type_codes(answer_type).reshape(-1)
    if not pred_np.shape == target_np.shape == codes.shape:
        raise M3AEError(
            f"vqa_scores: pred {pred_np.shape}, target {target_np.shape} and answer_type {codes.shape} "
            "must have the same length"
        )
    hits = (pred_np == target_np) & (target_np >= 0)
    return {
        "open": _percent_mean(hits[codes == 1]),
        "closed": _percent_mean(hits[codes == 0]),
        "overall": _percent_mean(hits),
    }


def _ranked(scores: np.ndarray, axis_len: int) -> np.ndarray:
    """Indices of each row sorted by descending score; ties keep the lower index first (stable)."""
    # argsort of the negated scores with a stable kind keeps equal scores in index order,
    # so the result does not depend on the sort implementation.
    return np.argsort(-scores, axis=1, kind="stable")[:, :axis_len]


def retrieval_recall(
    scores: Any, text_to_image: Any, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K for image-to-text and text-to-image retrieval over one score matrix.

    Ties are broken by index (the lower index ranks first), so results are deterministic.

    Args:
        scores: [n_images, n_texts] matching scores (higher = better match).
        text_to_image: [n_texts] index of the image each text belongs to.
        ks: the K values. K larger than the pool is clamped to the pool size.

    Returns:
        ``i2t_r{k}`` (an image hits when any of its top-k texts belongs to it) and ``t2i_r{k}``
        (a text hits when its image is among its top-k images) for each k, in percent, plus
        ``r_mean``, the mean of all of them (a single number for model selection).
    """
    s = _as_numpy(scores, "scores").astype(np.float64)
    t2i = _as_numpy(text_to_image, "text_to_image").astype(np.int64).reshape(-1)
    if s.ndim != 2 or s.shape[1] != t2i.shape[0]:
        raise M3AEError(
            f"retrieval_recall: scores must be [n_images, n_texts] with n_texts = len(text_to_image) "
            f"(got scores {s.shape}, text_to_image {t2i.shape})"
        )
    n_images, n_texts = s.shape
    if t2i.size and (t2i.min() < 0 or t2i.max() >= n_images):
        raise M3AEError(f"retrieval_recall: text_to_image values must be in [0, {n_images})")
    if np.isnan(s).any():
        raise M3AEError("retrieval_recall: scores contain NaN")
    kmax = max(ks)
    # [n_images, k] text indices -> the image each of them belongs to
    i2t_top_images = t2i[_ranked(s, min(kmax, n_texts))]
    # [n_texts, k] image indices
    t2i_top = _ranked(s.T, min(kmax, n_images))
    out: dict[str, float] = {}
    for k in ks:
        i2t_hit = (i2t_top_images[:, :k] == np.arange(n_images)[:, None]).any(axis=1)
        t2i_hit = (t2i_top[:, :k] == t2i[:, None]).any(axis=1)
        out[f"i2t_r{k}"] = _percent_mean(i2t_hit)
        out[f"t2i_r{k}"] = _percent_mean(t2i_hit)
    out["r_mean"] = float(np.mean(list(out.values())))
    return out


def classification_scores(pred: Any, target: Any, num_classes: int | None = None) -> dict[str, float]:
    """Accuracy and macro-F1 (both in percent) for single-label classification (MELINDA).

    Macro-F1 averages the per-class F1 over the classes that occur in the targets or the
    predictions (scikit-learn's convention); a class with no true and no predicted positives
    does not count, and one with precision + recall = 0 counts as F1 0.

    Args:
        pred: [N] predicted class indices.
        target: [N] true class indices.
        num_classes: optional K, only used to validate the indices.

    Returns:
        ``{"accuracy", "macro_f1"}``.
    """
    p = _as_numpy(pred, "pred").astype(np.int64).reshape(-1)
    t = _as_numpy(target, "target").astype(np.int64).reshape(-1)
    if p.shape != t.shape:
        raise M3AEError(f"classification_scores: pred {p.shape} and target {t.shape} differ in length")
    if num_classes is not None and ((p >= num_classes).any() or (t >= num_classes).any()):
        raise M3AEError(f"classification_scores: a class index is >= num_classes ({num_classes})")
    f1s = []
    for c in np.union1d(p, t):
        tp = float(((p == c) & (t == c)).sum())
        denom = float((p == c).sum() + (t == c).sum())
        f1s.append(2 * tp / denom if denom else 0.0)
    return {
        "accuracy": _percent_mean(p == t),
        "macro_f1": float(np.mean(f1s) * 100.0) if f1s else 0.0,
    }


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n-1; 0.0 for a single value) of repeated runs."""
    if not values:
        raise M3AEError("mean_sd: no values")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def effective_rank(features: Any) -> float:
    """Effective rank of a feature matrix (Roy and Vetterli, 2007): exp of the Shannon entropy of its
    normalised singular values, after centring each feature. [N, D] -> a number in [1, min(N, D)].

    It counts how many directions the features really use: a representation that folds into a few
    directions (a collapsing encoder) scores low whatever its width.
    """
    x = _as_numpy(features, "features").astype(np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise M3AEError(f"effective_rank needs an [N, D] matrix with N >= 2, got shape {x.shape}")
    s = np.linalg.svd(x - x.mean(axis=0, keepdims=True), compute_uv=False)
    if s.sum() <= 0:
        return 1.0  # every row the same: one direction at most
    p = s / s.sum()
    p = p[p > 0]
    return float(math.exp(-(p * np.log(p)).sum()))
