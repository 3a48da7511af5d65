"""Training and evaluation: one loop (`fit`) for pre-training and every downstream task.

Public names: `fit`, `Loaders`, `OptimArgs`, `TrainArgs`, `EvalArgs`, `TaskArgs`, `ModelArgs`,
`RunConfig`, `load_config`, `PretrainTask`, `VQATask`, `ClassificationTask`, `RetrievalTask`,
`pretrain`, `finetune`, `evaluate`. Resolved lazily so `import m3ae.train` stays light.
"""
from __future__ import annotations

from m3ae._lazy import lazy_getattr

_LAZY = {
    "fit": "m3ae.train.loop",
    "Loaders": "m3ae.train.loop",
    "OptimArgs": "m3ae.train.config",
    "TrainArgs": "m3ae.train.config",
    "EvalArgs": "m3ae.train.config",
    "TaskArgs": "m3ae.train.config",
    "ModelArgs": "m3ae.train.config",
    "RunConfig": "m3ae.train.config",
    "load_config": "m3ae.train.config",
    "PretrainTask": "m3ae.train.tasks",
    "VQATask": "m3ae.train.tasks",
    "ClassificationTask": "m3ae.train.tasks",
    "RetrievalTask": "m3ae.train.tasks",
    "make_task": "m3ae.train.tasks",
    "param_groups": "m3ae.train.optim",
    "build_optimizer": "m3ae.train.optim",
    "pretrain": "m3ae.train.runner",
    "finetune": "m3ae.train.runner",
    "evaluate": "m3ae.train.runner",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
