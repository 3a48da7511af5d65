"""Tasks: pretrain (MLM + MIM + ITM), vqa, cls, irtr, one module each, and their registry.

A task declares its heads, the example kind whose collator builds its batches and the batch keys
its losses read, the prepared data kinds it accepts, its losses, ``evaluate`` and monitor
metric, and what a saved model keeps (see `m3ae.tasks.base.BaseTask`). ``get_task(name)`` is
what the training runner, the CLI, model cards and inference ask instead of comparing names.
"""
from __future__ import annotations

from m3ae.tasks.base import TASKS, BaseTask, fuse, get_task, make_task, mlm_loss_at_labels, register
# registration order is the order of TASKS: pretrain, vqa, cls, irtr
from m3ae.tasks.pretrain import PretrainTask  # isort: skip
from m3ae.tasks.vqa import VQATask  # isort: skip
from m3ae.tasks.cls import ClassificationTask  # isort: skip
from m3ae.tasks.irtr import ContrastiveRetrievalTask, RetrievalTask  # isort: skip

__all__ = ["TASKS", "BaseTask", "ClassificationTask", "ContrastiveRetrievalTask", "PretrainTask",
           "RetrievalTask", "VQATask", "fuse", "get_task", "make_task", "mlm_loss_at_labels", "register"]
