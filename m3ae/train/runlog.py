"""Run-folder logging in one place: ``log.jsonl`` lines, optional TensorBoard events."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class RunLogger:
    """Appends one JSON object per call to ``log.jsonl`` and mirrors scalars to TensorBoard.

    Only the main rank writes; other ranks get a logger that does nothing.
    """

    def __init__(self, run_dir: str | Path | None, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled and run_dir is not None
        self.path = Path(run_dir) / "log.jsonl" if run_dir is not None else None
        self._tb = None
        if self.enabled:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
        if self.enabled and tensorboard:
            try:  # optional: tensorboard may be missing or broken
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            except Exception:  # noqa: BLE001 - any import/runtime failure just disables TB
                self._tb = None

    def truncate_after(self, step: int) -> None:
        """Drops lines logged after ``step`` (on resume, so no step appears twice)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip()
                and json.loads(ln).get("step", 0) <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def log(self, record: dict[str, Any], prefix: str = "train") -> None:
        """Writes ``record`` (must hold ``step``) as one line; numbers also go to TensorBoard."""
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), "kind": prefix, **record}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "time", "epoch"):
                    self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])
            self._tb.flush()

    def close(self) -> None:
        """Closes the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_log(run_dir: str | Path, kind: str = "train") -> list[dict[str, Any]]:
    """The ``log.jsonl`` records of one kind (``train`` or ``val``), in order."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return []
    recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return [r for r in recs if r.get("kind") == kind]
