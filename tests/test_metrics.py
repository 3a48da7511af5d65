"""Metrics on hand-made cases whose answers are known."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from m3ae.errors import M3AEError
from m3ae.metrics import classification_scores, mean_sd, retrieval_recall, vqa_scores


def test_vqa_open_closed_overall_with_an_answer_outside_the_set():
    pred = [3, 1, 2, 0, 5, 5]
    target = [3, 1, 7, 0, -1, 4]  # -1: answer not in the answer set -> always 0
    types = ["closed", "CLOSED", "open", "Open ", "open", "closed"]
    s = vqa_scores(pred, target, types)
    assert s["closed"] == pytest.approx(100 * 2 / 3)  # hits: 3, 1; miss: 5 vs 4
    assert s["open"] == pytest.approx(100 * 1 / 3)  # hit: 0; misses: 2 vs 7, outside the set
    assert s["overall"] == pytest.approx(50.0)


def test_vqa_integer_answer_types_and_tensors_give_the_same_scores():
    pred, target = torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])
    assert vqa_scores(pred, target, torch.tensor([1, 0, 0])) == vqa_scores(
        [1, 2, 3], [1, 0, 3], ["open", "closed", "closed"])


def test_vqa_prediction_of_minus_one_does_not_hit_an_outside_answer():
    assert vqa_scores([-1], [-1], ["open"])["overall"] == 0.0


def test_vqa_no_closed_questions_scores_zero_like_the_original():
    s = vqa_scores([0, 1], [0, 1], [1, 1])
    assert s == {"open": 100.0, "closed": 0.0, "overall": 100.0}


def test_vqa_bad_answer_type_is_an_error():
    with pytest.raises(M3AEError, match="answer_type"):
        vqa_scores([0], [0], ["yes/no"])
    with pytest.raises(M3AEError, match="same length"):
        vqa_scores([0, 1], [0], [1])


def test_retrieval_recall_non_square_pool_with_ties():
    # 3 images, 5 texts; text -> image: t0,t1 -> i0; t2 -> i1; t3,t4 -> i2
    t2i = [0, 0, 1, 2, 2]
    s = np.array([
        [0.1, 0.9, 0.5, 0.9, 0.0],  # i0: tie 0.9 between t1 (own) and t3 -> lower index t1 first: R@1 hit
        [0.8, 0.1, 0.2, 0.3, 0.4],  # i1: own t2 ranks 4th -> R@1 miss, R@5 hit
        [0.3, 0.3, 0.3, 0.3, 0.3],  # i2: all tied -> order t0..t4: own t3 is 4th
    ])
    r = retrieval_recall(s, t2i, ks=(1, 2, 5))
    assert r["i2t_r1"] == pytest.approx(100 / 3)
    assert r["i2t_r2"] == pytest.approx(100 / 3)
    assert r["i2t_r5"] == pytest.approx(100.0)  # k=5 covers all texts
    # t2i, by column: t0 -> i1, i2, i0 (miss@2); t1 -> i0 (hit@1); t2 -> i0, i2, i1 (miss@2);
    # t3 -> i0, then the i1/i2 tie puts i1 first (miss@2); t4 -> i1, i2 (hit@2)
    assert r["t2i_r1"] == pytest.approx(20.0)
    assert r["t2i_r2"] == pytest.approx(40.0)
    assert r["t2i_r5"] == pytest.approx(100.0)  # k clamped to 3 images
    assert r["r_mean"] == pytest.approx(np.mean([r[k] for k in r if k != "r_mean"]))


def test_retrieval_recall_identity_is_perfect_and_torch_input_works():
    r = retrieval_recall(torch.eye(4), torch.arange(4), ks=(1,))
    assert r["i2t_r1"] == r["t2i_r1"] == 100.0


def test_retrieval_recall_shape_mismatch_is_an_error():
    with pytest.raises(M3AEError, match="n_texts"):
        retrieval_recall(np.zeros((2, 3)), [0, 1])
    with pytest.raises(M3AEError, match="text_to_image values"):
        retrieval_recall(np.zeros((2, 2)), [0, 2])


def test_classification_accuracy_and_macro_f1():
    s = classification_scores([0, 0, 1, 2], [0, 1, 1, 1])
    assert s["accuracy"] == pytest.approx(50.0)
    # class 0: P=1/2 R=1 F1=2/3; class 1: P=1 R=1/3 F1=1/2; class 2: F1=0
    assert s["macro_f1"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 0) / 3)


def test_mean_sd():
    assert mean_sd([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_sd([5.0]) == (5.0, 0.0)


def test_effective_rank_counts_the_directions_used():
    from m3ae.metrics import effective_rank

    g = np.random.default_rng(0)
    spread = np.linalg.qr(g.normal(size=(64, 16)))[0] * 10  # 16 orthogonal directions, equal weight
    assert effective_rank(spread) == pytest.approx(16, rel=0.1)
    folded = g.normal(size=(64, 1)) @ g.normal(size=(1, 16)) + 1e-6 * g.normal(size=(64, 16))
    assert effective_rank(folded) < 1.1
    assert effective_rank(np.ones((8, 4))) == 1.0  # identical rows
    with pytest.raises(M3AEError, match="N >= 2"):
        effective_rank(np.ones((1, 4)))
