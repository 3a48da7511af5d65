"""Re-exports the evaluations, which live with their tasks in `m3ae.tasks` (shared parts in
`m3ae.tasks.evaluation`); kept for old imports. ``DEFAULT_MONITOR``: each task's ``monitor``."""
from __future__ import annotations

from m3ae.tasks import TASKS
from m3ae.tasks.cls import evaluate_cls  # noqa: F401
from m3ae.tasks.evaluation import (  # noqa: F401
    _batches,
    _cat,
    _device_of,
    _gather_cat,
    _progress,
    eval_mode,
    shard_loader,
)
from m3ae.tasks.irtr import (  # noqa: F401
    RETRIEVAL_PROTOCOLS,
    TwoStageScores,
    _ranking,
    candidate_pairs,
    dual_embeddings,
    evaluate_retrieval,
    evaluate_retrieval_two_stage,
    retrieval_scores,
    score_pairs,
    two_stage_scores,
)
from m3ae.tasks.pretrain import evaluate_pretrain  # noqa: F401
from m3ae.tasks.vqa import evaluate_vqa  # noqa: F401

DEFAULT_MONITOR = {name: task.monitor for name, task in TASKS.items()}
