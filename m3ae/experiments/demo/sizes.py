"""What one demo run trains: the lengths, batch sizes and learning rates of its stages (FULL, and QUICK
for --quick), the image size, and the rows that every demo fine-tunes. The demo's lowest module: it
imports no other part of the demo."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from m3ae.errors import M3AEError

DEMO_IMAGE_SIZE = 64
"""m3ae-small's input size in the demo (16 px patches: a 4 x 4 grid); the prepared copies are pre-resized to
it. At 128 px a step cost 2.5x more, so 3 epochs fitted the budget instead of 10 (docs/learning.md)."""


@dataclass(frozen=True)
class DemoSizes:
    """Sizes and lengths of one demo run (full or --quick). The budget planner scales the lengths."""

    pretrain_steps: int
    """Optimisation steps of pre-training."""
    finetune_epochs: float
    """Epochs of VQA fine-tuning (every fine-tuned row of the table trains exactly as long)."""
    finetune_max_steps: int | None = None
    """Cap on fine-tuning steps (--quick, or set by the budget planner)."""
    batch_size: int = 32
    """Samples per optimisation step of pre-training."""
    finetune_batch_size: int = 32
    """Samples per optimisation step of fine-tuning."""
    pretrain_lr: float = 2e-4
    """Base learning rate of pre-training (towers); fusion and heads get x5."""
    finetune_lr: float = 2e-4
    """Base learning rate of fine-tuning (the ViT; the text tower is frozen)."""
    finetune_head_multiplier: float = 2.5
    """LR multiplier of the fusion and the VQA head: 5e-4, the best of 1e-4 / 5e-4 / 2e-3 in docs/learning.md."""
    finetune_loss: str = "ce"
    """VQA loss: softmax cross-entropy ("ce"); the paper's BCE x answers ("paper") needs tens of epochs
    to leave the majority answer (docs/learning.md)."""
    freeze_text: bool = True
    """Keep the pretrained MiniLM text tower frozen in every stage (no gradients, no dropout): its features
    stay intact and a step costs about a third less, so more steps fit the budget (docs/learning.md)."""
    pooling: str = "mean"
    """Poolers summarise each stream by the mean of its tokens: with a few epochs the paper's first-token
    pooler stayed near the majority answer (docs/learning.md)."""
    fusion_dropout: float = 0.0
    """Dropout in the fusion layers: none; without it a CPU step cost 15% less (docs/learning.md)."""
    max_text_len: int = 24
    """Tokens per text: 99% of VQA-RAD questions and 95% of question+answer pairs fit in 24 MiniLM tokens."""
    precision: str = "auto"
    """Autocast precision: bf16 only where the CPU runs it natively, else fp32 (m3ae.hardware)."""
    min_type_count: int = 5
    """Question types with fewer test questions are left out of the per-type chart."""
    subset_images: int | None = None
    """Use only this many train images and half as many test images (--quick only)."""
    start_model: str = "m3ae-small-medvqa"
    """The pre-trained model the `m3ae` row (and the blank-image and question-only rows) fine-tune from:
    the name of a model shipped with m3ae, or a model folder (--start)."""
    start_fresh: tuple[str, ...] = ("fusion", "poolers", "modality_embed", "text_proj")
    """Parts of a pre-trained start that VQA fine-tuning re-initialises: the pre-trained vision tower is
    kept and the pre-trained fusion is not. On VQA-RAD the whole pre-trained model scored 6 points below
    scratch (3 seeds, docs/learning.md section 11); the shipped model's vision tower with a fresh fusion
    scores 4.8 above it (62.3 +- 2.7 against 57.5 +- 6.9, section 12)."""


FULL = DemoSizes(pretrain_steps=300, finetune_epochs=10)
"""``pretrain_steps`` is the demo's own short pre-training (its optional last row); 0 leaves that row out."""
QUICK = DemoSizes(pretrain_steps=3, finetune_epochs=1, finetune_max_steps=3, batch_size=8,
                  finetune_batch_size=8, subset_images=24, min_type_count=1)

FINETUNE_ROWS = ("m3ae", "scratch", "blank_images", "question_only")
"""The fine-tuned rows of every demo; every fine-tuned row trains for the same number of steps."""
SHORT_ROW = "m3ae_demo_pretrain"
"""The optional row: the demo's own short pre-training, then the `m3ae` row's fine-tuning."""


def demo_sizes(*, quick: bool, pretrain_steps: int | None, finetune_epochs: float | None, start: str | None,
               seeds: list[int] | None, budget_minutes: float) -> DemoSizes:
    """FULL or QUICK, with the command-line overrides applied and checked (None: not given)."""
    sizes = QUICK if quick else FULL
    if pretrain_steps is not None:
        sizes = dataclasses.replace(sizes, pretrain_steps=pretrain_steps)
    if finetune_epochs is not None:
        sizes = dataclasses.replace(sizes, finetune_epochs=finetune_epochs)
    if sizes.pretrain_steps < 0 or sizes.finetune_epochs <= 0:
        raise M3AEError("--pretrain-steps must be at least 0 (0 = no row of the demo's own pre-training) "
                        "and --finetune-epochs above 0")
    sizes = dataclasses.replace(sizes, start_model=start if start is not None else sizes.start_model)
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise M3AEError(f"--seeds has duplicates: {seeds}")
    if budget_minutes < 0:
        raise M3AEError(f"--budget-minutes must be >= 0 (0 = no budget), got {budget_minutes:g}")
    return sizes
