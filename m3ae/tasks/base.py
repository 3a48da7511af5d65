"""The task interface: what every task declares, the registry, and what the tasks share.

A task is the one place that knows what training, evaluation, the data pipeline, saved models and
their cards need of it: the heads it trains, the example kind whose collator builds its batches,
the batch keys its losses read, the prepared data kinds it accepts, its losses, its evaluation
and monitor metric, and the metadata a saved model keeps. Code outside ``m3ae.tasks`` asks the
task object (``get_task(name)``) instead of comparing task names.

Each task has ``losses(model, batch) -> {name: scalar}`` (``loss`` = the total that is optimised)
and ``forward_backward(model, batch, scale)``, which computes the same losses and
back-propagates ``scale(loss)``. Only `PretrainTask` overrides the latter, to back-propagate each
of its three passes as soon as its loss exists.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from m3ae.errors import M3AEError
from m3ae.models import losses as L

Batch = dict[str, torch.Tensor]
Scale = Callable[[torch.Tensor], torch.Tensor]

TASKS: dict[str, type[BaseTask]] = {}
"""The registered tasks by name, in registration order (pretrain, vqa, cls, irtr)."""


def register(cls: type[BaseTask]) -> type[BaseTask]:
    """Class decorator: adds a task class to `TASKS` under its ``name``."""
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise M3AEError(f"a task named {cls.name!r} is already registered")
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> type[BaseTask]:
    """The task class registered as ``name``; a clear error for an unknown name."""
    if name not in TASKS:
        raise M3AEError(f"unknown task {name!r}; choose among {', '.join(TASKS)}")
    return TASKS[name]


def make_task(name: str, **kwargs: Any) -> BaseTask:
    """The task object for ``task.name`` (pretrain, vqa, cls, irtr) with its options; irtr with
    ``itc_weight`` > 0 adds the contrastive loss."""
    return get_task(name).create(**kwargs)


def fuse(model: nn.Module, text: torch.Tensor, attention_mask: torch.Tensor, image: Any) -> Any:
    """`model.fuse`: fusion and poolers on embeddings a task computed once (see `M3AE.fuse`)."""
    return model.fuse(text, attention_mask, image)


def mlm_loss_at_labels(model: nn.Module, text_feats: torch.Tensor, labels: torch.Tensor,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """MLM cross-entropy with the vocabulary head applied to the labelled positions only.

    The same loss as the head over every position ([B, L_t, V] logits) followed by the masked
    mean, for about 15% of the work: the vocabulary projection is the largest matrix product of
    pre-training at small widths. A head that mixes tokens (the transformer decoder) first runs
    its blocks over the whole stream.

    Args:
        text_feats: [B, L_t, D] text stream (`model.mlm_features`); labels: [B, L_t], -100 = not
            predicted; attention_mask: [B, L_t] (read by a token-mixing head only).
    """
    chosen = labels != -100
    if not bool(chosen.any()):
        return text_feats.sum() * 0.0
    head = model.heads["mlm"]
    if getattr(head, "mixes_tokens", False):
        return L.mlm_loss(head(text_feats, attention_mask)[chosen], labels[chosen])
    return L.mlm_loss(head(text_feats[chosen]), labels[chosen])  # [N, V] vs [N]


class BaseTask:
    """Shared behaviour (batch-key validation, the default forward/backward) and the declarations
    every task makes; subclasses set the class attributes and override what differs."""

    name = "base"
    heads: tuple[str, ...] = ()
    """Keys of ``model.heads`` the task trains (what `create_model` builds for it)."""
    examples = ""
    """The example kind (`m3ae.data.collate.EXAMPLES`) whose dataset and collator build the batches."""
    batch_keys: tuple[str, ...] = ()
    """Batch keys the losses read (a subset of the example kind's keys)."""
    accepts: tuple[str, ...] = ()
    """Prepared data kinds (``summary.json`` "task") the task trains and evaluates on."""
    monitor = "-loss"
    """Metric that selects the best checkpoint, higher is better (``-loss``: the lowest loss)."""
    options: tuple[str, ...] = ()
    """Fields of the recipe's ``task`` section the constructor takes."""
    pretraining = False
    """True for pre-training (``m3ae pretrain``), False for fine-tuning (``m3ae finetune``)."""
    several_folders = False
    """Whether several prepared folders may be concatenated for training (pre-training)."""
    evaluates_saved = True
    """Whether ``m3ae evaluate`` scores a saved model of this task."""
    card_usage: tuple[str, ...] = ()
    """Lines of the model card's "How to use" section (none: no section)."""

    # -- declarations read without an instance ------------------------------------------------
    @classmethod
    def create(cls, **options: Any) -> BaseTask:
        """The task object with its options (`make_task`)."""
        return cls(**options)

    @classmethod
    def options_from(cls, args: Any) -> dict[str, Any]:
        """The keyword options of `create` from a recipe's ``task`` section (a ``TaskArgs``)."""
        return {k: getattr(args, k) for k in cls.options}

    @classmethod
    def head_sizes(cls, summary: dict[str, Any]) -> dict[str, Any]:
        """Head sizes for `create_model` from the prepared folder's summary (answers, classes)."""
        return {}

    @classmethod
    def metadata(cls, data_dir: str | Path, args: Any) -> dict[str, Any]:
        """What a saved model keeps for this task besides the common entries (answers, labels)."""
        return {}

    @classmethod
    def check_saved(cls, meta: dict[str, Any], data_dir: str | Path, model_dir: str | Path) -> None:
        """Raises when a saved model's metadata does not fit a prepared folder (``m3ae evaluate``)."""

    # -- evaluation ---------------------------------------------------------------------------
    def eval_data(self, data_dir: str | Path, split: str, data_cfg: Any, tokenizer: Any, seed: int = 0) -> Any:
        """What `evaluate` reads for one split: a dataset (a retrieval pool for irtr)."""
        from m3ae.data import make_dataset

        return make_dataset(data_dir, split, self.examples, data_cfg, tokenizer, train=False, seed=seed)

    def evaluate(self, model: nn.Module, data: Any, args: Any, precision: str,
                 progress: bool = False) -> dict[str, float]:
        """Metrics of ``model`` on ``data`` (from `eval_data`); ``args``: the recipe's ``eval``
        section (batch sizes, retrieval protocol)."""
        raise NotImplementedError

    # -- training -----------------------------------------------------------------------------
    def check_batch(self, batch: Batch) -> None:
        """Raises a clear error when the collator did not produce a key this task needs."""
        missing = [k for k in self.batch_keys if k not in batch]
        if missing:
            raise M3AEError(f"{self.name} task: batch lacks {missing} (has {sorted(batch)})")

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Named scalar losses; ``loss`` is the one optimised."""
        raise NotImplementedError

    def losses_one_graph(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """`losses` as one autograd graph, for a single backward (the low-memory mode's optimizer
        step inside backward needs each gradient complete when its hook fires)."""
        return self.losses(model, batch)

    def forward_backward(self, model: nn.Module, batch: Batch, scale: Scale) -> dict[str, torch.Tensor]:
        """Computes `losses` and back-propagates ``scale(loss)``; returns detached losses."""
        out = self.losses(model, batch)
        scale(out["loss"]).backward()
        return {k: v.detach() for k, v in out.items()}


IMAGE_INPUTS = ("pixels", "none")
"""pixels: the image goes through the vision tower; none: question-only (`M3AE.empty_image`)."""


class HeadOnJointFeatureTask(BaseTask):
    """A head on ``cls_feats`` trained with one loss: what VQA and classification share.

    Args:
        image_input: "pixels" (the model) or "none" (the text-only baseline: the same text tower,
            fusion and head, with an image stream that carries no image).
    """

    head: str
    """Key of ``model.heads``."""
    target_key: str
    """Batch key of the loss target."""

    def __init__(self, image_input: str = "pixels") -> None:
        if image_input not in IMAGE_INPUTS:
            raise M3AEError(f"task.image_input must be one of {IMAGE_INPUTS} (got {image_input!r})")
        self.image_input = image_input

    @staticmethod
    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """[B, A] answer logits (VQA) or [B, K] class logits (classification)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.image_input == "none":
            out = model.encode(None, ids, mask, image_embeds=model.empty_image(ids.shape[0]))
        else:
            out = model.encode(batch["pixel_values"], ids, mask)
        return model.heads[self.head](out.cls_feats)

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """``{"loss": ...}``."""
        self.check_batch(batch)
        return {"loss": self.loss_fn(self.logits(model, batch), batch[self.target_key])}
