"""Hugging Face Hub interop: resolve a Hub id through the local cache, and upload a model folder.

A folder written by `M3AE.save_pretrained` (plus the model card that fine-tuning writes) is a
valid Hub model repository: ``config.json``, ``model.safetensors`` and ``README.md`` with YAML
metadata. Here:

- `resolve_model_dir("org/name")` (defined with our folder format in `m3ae.models.io`, re-exported
  here) finds its snapshot in the Hugging Face cache (``HF_HUB_CACHE``) and **never downloads**
  unless ``allow_download=True``; a local folder passes through unchanged.
- `push_to_hub(dir, "org/name")` is a thin wrapper over ``HfApi.create_repo`` +
  ``HfApi.upload_folder`` that first checks the folder is a complete model repository.

``huggingface_hub`` ships with transformers, so nothing is added to the core dependencies; it is
imported inside the functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3ae.errors import M3AEError
from m3ae.models.io import REPO_ID as _REPO_ID
from m3ae.models.io import is_hub_id, resolve_model_dir

__all__ = ["is_hub_id", "resolve_model_dir", "plan_push", "push_to_hub", "PushPlan"]

REQUIRED_FILES = ("config.json", "model.safetensors", "README.md")
# files of a model folder that belong on the Hub; training leftovers (checkpoints, logs) do not
UPLOAD_PATTERNS = ("*.json", "*.safetensors", "*.md", "*.txt", "*.model", "*.onnx")


@dataclass(frozen=True)
class PushPlan:
    """What `push_to_hub` sends: one commit of a model folder's files to a model repository."""

    folder: Path
    """The model folder uploaded."""
    repo_id: str
    """Target repository, "org/name"."""
    files: tuple[str, ...]
    """Relative paths that match `UPLOAD_PATTERNS` (what the commit will contain)."""
    private: bool
    """Create the repository as private when it does not exist."""
    commit_message: str
    """The commit message."""


def plan_push(folder: str | Path, repo_id: str, private: bool = False,
              commit_message: str | None = None) -> PushPlan:
    """Check that ``folder`` is a complete model repository and list what would be uploaded.

    Raises:
        M3AEError: a missing folder or file, or an invalid repo id.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise M3AEError(f"{folder}: not a folder")
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise M3AEError(f"{folder}: not a complete model folder, missing {missing} "
                        "(write it with save_pretrained; fine-tuning also writes README.md)")
    if "/" not in repo_id or not _REPO_ID.match(repo_id):
        raise M3AEError(f"{repo_id!r} is not a Hub repo id of the form org/name")
    files = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*")
        if p.is_file() and any(p.match(pattern) for pattern in UPLOAD_PATTERNS)
    )
    return PushPlan(folder, repo_id, tuple(files), private,
                    commit_message or f"Upload {folder.name} with m3ae")


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str | None = None, api: Any = None) -> Any:
    """Upload a model folder to the Hub (creates the repository when needed).

    Args:
        folder: a model folder with config.json, model.safetensors and README.md.
        repo_id: "org/name".
        private: create the repository as private.
        token: a Hub token (default: the one ``huggingface-cli login`` stored, or ``HF_TOKEN``).
        commit_message: default "Upload <folder> with m3ae".
        api: an ``HfApi`` (tests pass a recording one).

    Returns:
        What ``HfApi.upload_folder`` returns (the commit info).
    """
    plan = plan_push(folder, repo_id, private, commit_message)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(plan.repo_id, repo_type="model", private=plan.private, exist_ok=True)
    return api.upload_folder(folder_path=str(plan.folder), repo_id=plan.repo_id, repo_type="model",
                             commit_message=plan.commit_message, allow_patterns=list(UPLOAD_PATTERNS))
