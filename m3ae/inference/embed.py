"""Per-example image, text and joint features of a data set, written to Parquet with pyarrow
(`embed_to_parquet`, what `m3ae embed` runs; its help in `m3ae.cli.embed` describes the columns).

``image_embedding`` and ``text_embedding`` [D] are the towers alone (`M3AE.embed_images` /
`M3AE.embed_texts`), unit norm; ``joint_embedding`` [2D] is the fused ``cls_feats`` of the pair. The
file is written batch by batch to a temporary name and renamed when complete, so an interrupted run
leaves no partial file behind."""
from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from m3ae.errors import DataError, M3AEError


@dataclass
class Example:
    """One row to embed: where its image comes from and its text."""

    id: str
    """Row identifier written to the ``id`` column."""
    image: str
    """Image id (prepared folder) or path (CSV)."""
    text: str
    """The text paired with the image."""


def prepared_examples(data_dir: str | Path, split: str) -> tuple[list[Example], Any]:
    """The examples of one split of a prepared folder and the image store they reference."""
    from m3ae.data.kinds import folder_kind
    from m3ae.data.storage import ImageStore, read_summary, read_table

    data_dir = Path(data_dir)
    summary = read_summary(data_dir)
    if split not in summary.get("splits", {}):
        raise M3AEError(f"{data_dir}: no split {split!r} (has {sorted(summary.get('splits', {}))})")
    table = read_table(data_dir / f"{split}.arrow")
    texts = table.column(folder_kind(summary["task"]).column).to_pylist()
    ids = (table.column("question_id").to_pylist() if "question_id" in table.column_names
           else range(table.num_rows))
    image_ids = table.column("image_id").to_pylist()
    return [Example(str(i), im, t) for i, im, t in zip(ids, image_ids, texts)], ImageStore(data_dir)


def csv_examples(path: str | Path) -> list[Example]:
    """Rows of a CSV with ``image`` and ``text`` columns (``id`` optional); paths relative to the CSV."""
    path = Path(path)
    if not path.is_file():
        raise M3AEError(f"{path}: input CSV not found")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"image", "text"} - set(reader.fieldnames or [])
        if missing:
            raise M3AEError(f"{path}: missing column(s) {sorted(missing)} (has {reader.fieldnames})")
        rows = []
        for line, row in enumerate(reader, start=2):
            if not (row["image"] or "").strip() or not (row["text"] or "").strip():
                raise DataError(f"{path}:{line}: empty image or text")
            image = Path(row["image"])
            rows.append(Example(row.get("id") or str(line - 2),
                                str(image if image.is_absolute() else path.parent / image), row["text"]))
    if not rows:
        raise M3AEError(f"{path}: no rows")
    return rows


class _Batches:
    """Decodes, transforms and tokenises examples batch by batch (the model folder's preprocessing)."""

    def __init__(self, examples: list[Example], store: Any, tokenizer: Any, pre: Any) -> None:
        self.examples, self.store, self.tokenizer, self.pre = examples, store, tokenizer, pre

    def _pixels(self, example: Example) -> torch.Tensor:
        from m3ae.data import images

        if self.store is not None:
            rgb = images.decode_image(self.store.get_bytes(example.image), example.image)
        else:
            if not Path(example.image).is_file():
                raise DataError(f"{example.image}: image file not found (row id {example.id})")
            rgb = images.read_image_file(example.image)
        # the original "clip" evaluation transform, as `m3ae predict` and evaluation apply it
        return images.ImageTransform.from_preprocessing(self.pre)(rgb)  # [3, H, W]

    def __call__(self, batch_size: int) -> Iterator[tuple[list[Example], dict[str, torch.Tensor]]]:
        from m3ae.data.text import tokenize

        for start in range(0, len(self.examples), batch_size):
            rows = self.examples[start:start + batch_size]
            text = tokenize(self.tokenizer, [r.text for r in rows], self.pre.max_text_len)
            yield rows, {"pixel_values": torch.stack([self._pixels(r) for r in rows]), **text}


@torch.no_grad()
def embed_batch(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Image [B, D], text [B, D] and joint [B, 2D] features; each tower runs once."""
    image = model.embed_image(batch["pixel_values"])  # ImageEmbeds [B, 1+L_i, D]
    text = model.embed_text(batch["input_ids"], batch["attention_mask"])  # [B, L_t, D]
    from m3ae.tasks.base import fuse

    joint = fuse(model, text, batch["attention_mask"], image).cls_feats
    text_summary = model.tower_summary(text, batch["attention_mask"])  # [B, D]
    return {"image_embedding": model.project_dual(model.tower_summary(image.embeds), "image"),
            "text_embedding": model.project_dual(text_summary, "text"), "joint_embedding": joint.float()}


def _record_batch(rows: list[Example], feats: dict[str, torch.Tensor]) -> Any:
    import pyarrow as pa

    columns = {"id": pa.array([r.id for r in rows]), "image": pa.array([r.image for r in rows]),
               "text": pa.array([r.text for r in rows])}
    for name, value in feats.items():
        flat = pa.array(value.cpu().numpy().reshape(-1), type=pa.float32())
        columns[name] = pa.FixedSizeListArray.from_arrays(flat, value.shape[1])
    return pa.record_batch(list(columns.values()), names=list(columns))


def embed_to_parquet(model_dir: str | Path, out: str | Path, data: str | Path | None = None, split: str = "test",
                     input_csv: str | Path | None = None, batch_size: int = 32, device: str = "cpu",
                     progress: bool = True) -> int:
    """Embed every example of ``data``/``split`` or of ``input_csv`` into ``out`` (Parquet).

    Returns:
        The number of rows written.
    """
    import pyarrow.parquet as pq

    from m3ae.data import load_tokenizer
    from m3ae.inference.pipeline import _has_tokenizer_files
    from m3ae.models import M3AE
    from m3ae.models.io import read_preprocessing, resolve_model_dir
    from m3ae.tasks.evaluation import _progress

    if (data is None) == (input_csv is None):
        raise M3AEError("give exactly one of --data (a prepared folder) or --input (a CSV)")
    if batch_size < 1:
        raise M3AEError(f"--batch-size must be at least 1 (got {batch_size})")
    folder = resolve_model_dir(model_dir)
    model = M3AE.from_pretrained(folder).eval().to(device)
    pre = read_preprocessing(folder)
    tokenizer = load_tokenizer(folder if _has_tokenizer_files(folder) else None)
    examples, store = prepared_examples(data, split) if data is not None else (csv_examples(input_csv), None)
    batches = _Batches(examples, store, tokenizer, pre)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    writer = None
    try:
        total = (len(examples) + batch_size - 1) // batch_size
        for rows, batch in _progress(batches(batch_size), total, "embed", progress):
            feats = embed_batch(model, {k: v.to(device) for k, v in batch.items()})
            record = _record_batch(rows, feats)
            writer = writer or pq.ParquetWriter(str(partial), record.schema)
            writer.write_batch(record)
    except BaseException:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(partial, out)
    return len(examples)
