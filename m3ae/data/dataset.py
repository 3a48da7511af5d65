"""One dataset class for every task, driven by the prepared folder's summary and a ``DataConfig``.

Determinism: every random choice an example needs (crop, MLM positions, MIM noise, ITM label and
negative image, retrieval negatives) comes from a generator seeded by (seed, epoch, index), so
an example is the same whatever the worker, rank or resume point. The epoch is set through
``set_epoch`` (the sampler of ``make_loader`` does it for you).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from m3ae.data.collate import EXAMPLES, Collator
from m3ae.data.config import DataConfig
from m3ae.data.images import ImageTransform, decode_image
from m3ae.data.storage import ImageStore, read_answers, read_summary, read_table
from m3ae.data.text import mask_text_tokens, tokenize, tokenizer_info
from m3ae.errors import DataError, M3AEError

# tasks a prepared folder can serve: caption folders feed both pre-training and retrieval
COMPATIBLE_TASKS = {name: set(spec.folders) for name, spec in EXAMPLES.items()}
NEGATIVE_TRIES = 64  # rejection-sampling attempts before enumerating the allowed candidates
ITM_POSITIVE_RATE = 0.5


def example_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A torch generator seeded from (seed, epoch, index) through NumPy's SeedSequence (well mixed)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def draw_other(count: int, num_items: int, is_positive, generator: torch.Generator) -> list[int]:
    """Draw ``count`` indices uniformly from [0, num_items) with ``is_positive(i)`` False.

    Used for ITM negative images and retrieval negative captions: a negative is never the positive.
    """
    chosen = []
    for _ in range(count):
        for _ in range(NEGATIVE_TRIES):
            candidate = int(torch.randint(num_items, (1,), generator=generator))
            if not is_positive(candidate):
                chosen.append(candidate)
                break
        else:  # nearly every item is a positive: draw among the few allowed ones explicitly
            allowed = [i for i in range(num_items) if not is_positive(i)]
            if not allowed:
                raise DataError("no negative available: every example shares the positive's image")
            chosen.append(allowed[int(torch.randint(len(allowed), (1,), generator=generator))])
    return chosen


class DecodedImageCache:
    """Decoded images by id, up to a memory budget (first come, first kept; no eviction).

    An image is decoded once per process instead of once per example and epoch: VQA-RAD has
    about ten questions per image, and decoding was half the cost of an example.
    """

    def __init__(self, budget_mb: int) -> None:
        self.budget, self.used = int(budget_mb) * 2**20, 0
        self.images: dict[str, Any] = {}

    def get(self, image_id: str) -> Any:
        return self.images.get(image_id)

    def put(self, image_id: str, image: Any) -> None:
        size = image.width * image.height * len(image.getbands())
        if self.used + size <= self.budget:
            self.images[image_id] = image
            self.used += size


class M3AEDataset(Dataset):
    """Examples of one split of a prepared folder, as tensors for ``task``.

    Args:
        data_dir: a folder written by ``m3ae prepare``.
        split: "train", "val" or "test".
        task: the example kind, "pretrain", "vqa", "cls" or "irtr" (a task's ``examples``; must
            fit the folder's task).
        cfg: image size, text length, masking and transform options.
        tokenizer: from ``load_tokenizer``.
        train: training transforms (random resized crop when configured).
        seed: base seed of every per-example draw.
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        task: str,
        cfg: DataConfig,
        tokenizer: Any,
        train: bool = False,
        seed: int = 0,
    ) -> None:
        self.data_dir, self.split, self.task, self.cfg = Path(data_dir), split, task, cfg
        self.summary = read_summary(self.data_dir)
        folder_task = self.summary.get("task")
        if task not in COMPATIBLE_TASKS or folder_task not in COMPATIBLE_TASKS[task]:
            raise M3AEError(f"{self.data_dir} holds {folder_task!r} data; it cannot serve task {task!r}")
        if split not in self.summary.get("splits", {}):
            raise M3AEError(
                f"{self.data_dir}: no split {split!r} (has {sorted(self.summary.get('splits', {}))})"
            )
        self.tokenizer, self.train, self.seed, self.epoch = tokenizer, train, seed, 0
        self.transform = ImageTransform.from_preprocessing(cfg.preprocessing(),
                                                           cfg.train_transform if train else "clip")
        spec = EXAMPLES[task]
        self.text_info = tokenizer_info(tokenizer) if spec.needs_mlm else None
        self.num_answers = len(read_answers(self.data_dir)) if spec.needs_answers else None
        self.collate_fn = Collator(spec, self.num_answers)
        self.images = ImageStore(self.data_dir)
        self._length = int(self.summary["splits"][split]["examples"])
        self._columns: dict[str, list] | None = None
        self._tokens: dict[str, dict[str, torch.Tensor]] = {}  # text column -> tokenised rows
        self._decoded = DecodedImageCache(cfg.image_cache_mb)

    # -- lazy opening: nothing memory-mapped travels to worker processes -------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_columns"], state["_tokens"] = None, {}
        state["_decoded"] = DecodedImageCache(self.cfg.image_cache_mb)
        return state

    @property
    def columns(self) -> dict[str, list]:
        """The split table as Python lists, read on first use in each process."""
        if self._columns is None:
            table = read_table(self.data_dir / f"{self.split}.arrow")
            if table.num_rows != self._length:
                raise DataError(
                    f"{self.data_dir / self.split}.arrow: {table.num_rows} rows, summary says {self._length}"
                )
            self._columns = {name: table.column(name).to_pylist() for name in table.column_names}
        return self._columns

    def __len__(self) -> int:
        return self._length

    def set_epoch(self, epoch: int) -> None:
        """Change the epoch that seeds per-example draws (call before creating the iterator)."""
        self.epoch = int(epoch)

    def load_image(self, image_id: str, generator: torch.Generator | None) -> torch.Tensor:
        """Decode (or take from the decoded-image cache) and transform one stored image. # -> [3, H, W]"""
        image = self._decoded.get(image_id)
        if image is None:
            image = decode_image(self.images.get_bytes(image_id), f"{self.data_dir}:{image_id}")
            self._decoded.put(image_id, image)
        return self.transform(image, generator)

    def _row_text(self, column: str, rows: list[int]) -> dict[str, torch.Tensor]:
        """Tokenised texts of some rows of ``column``: [len(rows), L_t] each.

        The whole column is tokenised once, in one batched call, on first use in each process:
        one call per example cost ~4 ms on CPU, as much as decoding the example's image.
        """
        if column not in self._tokens:
            enc = tokenize(self.tokenizer, self.columns[column], self.cfg.max_text_len)
            self._tokens[column] = {k: v.to(torch.int32) for k, v in enc.items()}  # half the memory
        index = torch.as_tensor(rows, dtype=torch.long)
        return {k: v[index].long() for k, v in self._tokens[column].items()}

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self._length:
            raise IndexError(index)
        gen = example_generator(self.seed, self.epoch, index)
        return getattr(self, f"_item_{self.task}")(index, gen)

    # -- one builder per task; the draw order inside each is fixed (determinism) ---------------------
    def _image_and_text(self, index: int, text_column: str, gen: torch.Generator) -> dict[str, Any]:
        """The example's transformed image and its one tokenised text (VQA question, cls text)."""
        cols = self.columns
        text = self._row_text(text_column, [index])
        return {
            "pixel_values": self.load_image(cols["image_id"][index], gen),
            "input_ids": text["input_ids"][0],
            "attention_mask": text["attention_mask"][0],
        }

    def _item_vqa(self, index: int, gen: torch.Generator) -> dict[str, Any]:
        cols = self.columns
        return {
            **self._image_and_text(index, "question", gen),
            "vqa_labels": int(cols["label"][index]),
            "answer_type": int(cols["answer_type"][index]),
            "question_id": int(cols["question_id"][index]),
        }

    def _item_cls(self, index: int, gen: torch.Generator) -> dict[str, Any]:
        return {**self._image_and_text(index, "text", gen), "labels": int(self.columns["label"][index])}

    def _item_pretrain(self, index: int, gen: torch.Generator) -> dict[str, Any]:
        cols = self.columns
        image_ids = cols["image_id"]
        pixel_values = self.load_image(image_ids[index], gen)
        text = self._row_text("text", [index])
        mlm_ids, mlm_labels = mask_text_tokens(
            text["input_ids"],
            text["special_tokens_mask"],
            self.text_info,
            self.cfg.mlm_probability,
            self.cfg.mlm_mode,
            gen,
        )
        image_noise = torch.rand(self.cfg.num_patches, generator=gen)  # [L_i], drives MIM masking
        itm_label = int(torch.rand(1, generator=gen) < ITM_POSITIVE_RATE)
        if itm_label:
            itm_pixel_values = pixel_values
        else:  # a random other text's image (upstream draws by text), never the same image id
            (other,) = draw_other(1, self._length, lambda i: image_ids[i] == image_ids[index], gen)
            itm_pixel_values = self.load_image(image_ids[other], gen)
        return {
            "pixel_values": pixel_values,
            "input_ids": text["input_ids"][0],
            "attention_mask": text["attention_mask"][0],
            "mlm_input_ids": mlm_ids[0],
            "mlm_labels": mlm_labels[0],
            "image_noise": image_noise,
            "itm_labels": itm_label,
            "itm_pixel_values": itm_pixel_values,
            # drawn last, so the draws above are those of earlier versions: drives the choice of
            # in-batch hard negatives (task.itm_negatives "hard"), one number per direction
            "itm_noise": torch.rand(2, generator=gen),
        }

    def _item_irtr(self, index: int, gen: torch.Generator) -> dict[str, Any]:
        cols = self.columns
        image_ids = cols["image_id"]
        pixel_values = self.load_image(image_ids[index], gen)
        negatives = draw_other(
            self.cfg.draw_false_text, self._length, lambda i: image_ids[i] == image_ids[index], gen
        )
        text = self._row_text("text", [index, *negatives])  # [1+N, L_t], index 0 = true caption
        return {
            "pixel_values": pixel_values,
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
        }


class ConcatExamples(Dataset):
    """Several prepared folders served as one dataset (ROCO + MedICaT pre-training, as the paper).

    Each part keeps its own negatives (an ITM negative image comes from the same folder, as
    upstream draws it from the same sub-dataset) and its own seed stream, so that example i of one
    folder and example i of another do not share their random draws.
    """

    def __init__(self, parts: list[M3AEDataset]) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])  # [P+1] first global index of each part
        self.collate_fn = parts[0].collate_fn

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[k][index - int(self.offsets[k])]


# the seed of part k of a ConcatExamples is seed + k * PART_SEED_STRIDE
PART_SEED_STRIDE = 1_000_003


def make_dataset(
    data_dir: str | Path | list[str | Path],
    split: str,
    task: str,
    cfg: DataConfig,
    tokenizer: Any,
    train: bool = False,
    seed: int = 0,
) -> M3AEDataset | ConcatExamples:
    """The dataset of one split of a prepared folder; its ``collate_fn`` builds the batch contract.

    ``data_dir`` may be a list of folders of the same task: their examples are concatenated.
    """
    if isinstance(data_dir, (list, tuple)):
        if len(data_dir) == 1:
            return M3AEDataset(data_dir[0], split, task, cfg, tokenizer, train, seed)
        return ConcatExamples(
            [
                M3AEDataset(d, split, task, cfg, tokenizer, train, seed + k * PART_SEED_STRIDE)
                for k, d in enumerate(data_dir)
            ]
        )
    return M3AEDataset(data_dir, split, task, cfg, tokenizer, train, seed)


class PoolImages(Dataset):
    """The distinct images of a retrieval split, each once: items {"pixel_values", "image_index"}."""

    def __init__(self, source: M3AEDataset, image_ids: list[str]) -> None:
        self.source, self.image_ids = source, image_ids
        self.collate_fn = _stack

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"pixel_values": self.source.load_image(self.image_ids[i], None), "image_index": i}


class PoolTexts(Dataset):
    """The captions of a retrieval split: items {"input_ids", "attention_mask", "text_index"}."""

    def __init__(self, texts: list[str], tokenizer: Any, max_len: int) -> None:
        self.texts, self.tokenizer, self.max_len = texts, tokenizer, max_len
        self.collate_fn = _stack

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        enc = tokenize(self.tokenizer, [self.texts[i]], self.max_len)
        return {"input_ids": enc["input_ids"][0], "attention_mask": enc["attention_mask"][0], "text_index": i}


def _stack(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        k: torch.stack([e[k] for e in examples])
        if torch.is_tensor(examples[0][k])
        else torch.tensor([e[k] for e in examples])
        for k in examples[0]
    }


def make_retrieval_pool(
    data_dir: str | Path, split: str, cfg: DataConfig, tokenizer: Any
) -> tuple[PoolImages, PoolTexts, torch.Tensor]:
    """Images and texts of a split for full cross-encoder retrieval scoring.

    Returns:
        (images, texts, text_to_image): ``text_to_image[t]`` [T] long is the position in ``images``
        of caption t's image. Score every (image, text) pair; image->text recall counts a hit when
        a top-K text maps to the image, text->image when the top-K images contain ``text_to_image[t]``.
    """
    source = M3AEDataset(data_dir, split, "irtr", cfg, tokenizer, train=False)
    image_ids = source.columns["image_id"]
    order = list(dict.fromkeys(image_ids))  # distinct, in order of first appearance
    position = {image_id: i for i, image_id in enumerate(order)}
    text_to_image = torch.tensor([position[i] for i in image_ids], dtype=torch.long)
    return (
        PoolImages(source, order),
        PoolTexts(source.columns["text"], tokenizer, cfg.max_text_len),
        text_to_image,
    )
