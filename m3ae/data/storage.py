"""The one on-disk format every prepared dataset uses.

A prepared folder holds:

- ``images-00000.arrow``, ``images-00001.arrow``, ...: Arrow IPC files with one row per image,
  columns ``image_id`` (str), ``image`` (encoded bytes, stored once however many examples or
  splits use the image), ``width``/``height`` (int32) and ``source`` (where it came from).
  Shards roll over every ``shard_size`` images so that big corpora stay manageable.
- ``{split}.arrow``: one row per example, referencing images by ``image_id``. Columns depend on
  the task (see ``EXAMPLE_COLUMNS``).
- ``summary.json`` and ``answers.json`` (VQA) or ``labels.json`` (classification).

All tables are read through memory maps: opening is cheap, and worker processes share pages.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

from m3ae.errors import DataError, M3AEError

TASKS = ("pretrain", "vqa", "cls", "irtr")
IMAGE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("image", pa.binary()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("source", pa.string()),
    ]
)
EXAMPLE_COLUMNS: dict[str, list[tuple[str, pa.DataType]]] = {
    "pretrain": [("image_id", pa.string()), ("text", pa.string())],
    "irtr": [("image_id", pa.string()), ("text", pa.string())],
    "vqa": [
        ("question_id", pa.int64()),
        ("image_id", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("label", pa.int64()),
        ("answer_type", pa.int8()),
    ],
    "cls": [
        ("image_id", pa.string()),
        ("text", pa.string()),
        ("label", pa.int64()),
        ("label_name", pa.string()),
    ],
}
DEFAULT_SHARD_SIZE = 20_000
SUMMARY_FILE, ANSWERS_FILE, LABELS_FILE = "summary.json", "answers.json", "labels.json"
METADATA_FILE = "metadata.json"
"""Sidecar of a VQA folder: ``{"questions": {question_id: {"category", "answer"}}, "images": {image_id:
{field: value}}}``: what a release says beyond the QA pairs (the category, the answer before VQA
normalisation, SLAKE modality/location, VQA-RAD organ), read by `m3ae corpus` when present."""


def example_schema(task: str) -> pa.Schema:
    """Arrow schema of a split table for ``task``."""
    if task not in EXAMPLE_COLUMNS:
        raise M3AEError(f"unknown task {task!r}; expected one of {TASKS}")
    return pa.schema(EXAMPLE_COLUMNS[task])


class ImageShardWriter:
    """Append images to ``images-NNNNN.arrow`` shards, rolling over every ``shard_size`` rows."""

    def __init__(self, folder: Path, shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 256) -> None:
        self.folder, self.shard_size, self.batch_size = Path(folder), shard_size, batch_size
        self._shard, self._rows_in_shard, self._writer, self._sink = -1, 0, None, None
        self._pending: list[dict[str, Any]] = []
        self.count = 0

    def _open_next(self) -> None:
        self._close_current()
        self._shard += 1
        self._sink = pa.OSFile(str(self.folder / f"images-{self._shard:05d}.arrow"), "wb")
        self._writer = pa.ipc.new_file(self._sink, IMAGE_SCHEMA)
        self._rows_in_shard = 0

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_batch(pa.RecordBatch.from_pylist(self._pending, schema=IMAGE_SCHEMA))
            self._pending = []

    def _close_current(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def add(self, image_id: str, data: bytes, width: int, height: int, source: str) -> None:
        """Queue one image; written in record batches of ``batch_size``."""
        if self._writer is None or self._rows_in_shard >= self.shard_size:
            self._open_next()
        self._pending.append(
            {"image_id": image_id, "image": data, "width": width, "height": height, "source": source}
        )
        self._rows_in_shard += 1
        self.count += 1
        if len(self._pending) >= self.batch_size:
            self._flush()

    def close(self) -> None:
        """Finish the last shard (an empty dataset still gets one, empty, shard)."""
        if self._writer is None:
            self._open_next()
        self._close_current()


def write_examples(path: Path, task: str, rows: list[dict[str, Any]]) -> None:
    """Write one split table (Arrow IPC file)."""
    schema = example_schema(task)
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_table(table)


def read_table(path: Path) -> pa.Table:
    """Memory-map an Arrow IPC file (zero-copy)."""
    try:
        return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found") from err
    except pa.ArrowInvalid as err:
        raise DataError(f"{path}: not a readable Arrow IPC file ({err})") from err


def write_json(path: Path, value: Any) -> None:
    """Pretty JSON with a trailing newline."""
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(f"{path}: not found (is this a folder written by `m3ae prepare`?)") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err


def read_summary(data_dir: str | Path) -> dict[str, Any]:
    """``summary.json`` of a prepared folder."""
    return _read_json(Path(data_dir) / SUMMARY_FILE)


def read_answers(data_dir: str | Path) -> list[str]:
    """The ordered VQA answer list (label i is ``answers[i]``)."""
    return list(_read_json(Path(data_dir) / ANSWERS_FILE))


def read_metadata(data_dir: str | Path) -> dict[str, Any]:
    """``metadata.json`` of a VQA folder (question categories, raw answers, image fields); {} when
    the folder has none (written before it existed, or by a reader that knows nothing more)."""
    path = Path(data_dir) / METADATA_FILE
    return dict(_read_json(path)) if path.exists() else {}


def read_labels(data_dir: str | Path) -> list[str]:
    """The ordered class names of a classification folder."""
    return list(_read_json(Path(data_dir) / LABELS_FILE))


class ImageStore:
    """Lazy, memory-mapped access to the image shards of a prepared folder, keyed by image_id.

    Nothing is opened until the first lookup, so a store can be pickled into DataLoader workers
    and each worker opens the files once, on its own.
    """

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self._columns: list[pa.ChunkedArray] | None = None
        self._index: dict[str, tuple[int, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"data_dir": self.data_dir, "_columns": None, "_index": {}}

    def _open(self) -> None:
        shards = sorted(self.data_dir.glob("images-*.arrow"))
        if not shards:
            raise DataError(f"{self.data_dir}: no images-*.arrow shards (is this a prepared folder?)")
        columns, index = [], {}
        for s, shard in enumerate(shards):
            table = read_table(shard)
            columns.append(table.column("image"))
            for row, image_id in enumerate(table.column("image_id").to_pylist()):
                index[image_id] = (s, row)
        self._columns, self._index = columns, index

    def __contains__(self, image_id: str) -> bool:
        if self._columns is None:
            self._open()
        return image_id in self._index

    def image_ids(self) -> list[str]:
        """Every stored image id, in storage order."""
        if self._columns is None:
            self._open()
        return list(self._index)

    def get_bytes(self, image_id: str) -> bytes:
        """Encoded bytes of one image."""
        if self._columns is None:
            self._open()
        try:
            shard, row = self._index[image_id]
        except KeyError as err:
            raise DataError(f"{self.data_dir}: image_id {image_id!r} not in the image shards") from err
        return self._columns[shard][row].as_py()


def is_prepared_folder(folder: Path) -> bool:
    """True for a folder `m3ae prepare` wrote: our marker, or (folders written before the marker
    existed) a summary.json that carries ``m3ae_version``."""
    from m3ae.guards import OWNER_MARKER

    if (folder / OWNER_MARKER).is_file():
        return True
    try:
        return "m3ae_version" in json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def check_output(out: Path, overwrite: bool, protected: dict[str, Path] | None = None) -> None:
    """May ``out`` be written? Only if it is absent, or ``overwrite`` and m3ae wrote it.

    Raises:
        M3AEError: ``out`` exists without ``overwrite``, or is not ours, or holds ``protected``.
    """
    from m3ae.guards import check_replaceable

    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise M3AEError(f"{out} already exists; pass --overwrite to replace it")
    check_replaceable(out, protected, owned=out.is_dir() and is_prepared_folder(out))


@contextmanager
def atomic_output(out: Path, overwrite: bool, protected: dict[str, Path] | None = None) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success it replaces ``out`` in one rename.

    A failure leaves no half-written ``out`` (the temporary folder is removed); temporary
    folders of killed runs into the same ``out`` are removed first. The caller holds ``out``'s
    lock (`m3ae.guards.folder_lock`), so no other run is writing them.
    """
    from m3ae.guards import OWNER_MARKER, remove_stale_temps

    out = Path(out)
    check_output(out, overwrite, protected)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        (tmp / OWNER_MARKER).write_text("written by `m3ae prepare`; `--overwrite` may replace this folder\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
