"""Re-exports the tasks of `m3ae.tasks` (one module per task there), kept for old imports."""
from __future__ import annotations

from m3ae.tasks.base import (  # noqa: F401
    IMAGE_INPUTS,
    BaseTask,
    Batch,
    HeadOnJointFeatureTask,
    Scale,
    fuse,
    make_task,
    mlm_loss_at_labels,
)
from m3ae.tasks.cls import ClassificationTask  # noqa: F401
from m3ae.tasks.irtr import ContrastiveRetrievalTask, RetrievalTask  # noqa: F401
from m3ae.tasks.pretrain import PretrainTask  # noqa: F401
from m3ae.tasks.vqa import VQA_LOSSES, VQATask  # noqa: F401
