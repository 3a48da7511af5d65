"""The kinds of prepared folder (``summary.json`` "task"): what each holds and how it is checked.

`m3ae prepare` and its readers ask the kind instead of comparing names; a task
(``m3ae.tasks``) lists the kinds it accepts. Caption folders (pretrain, irtr) serve both
pre-training and retrieval.
"""
from __future__ import annotations

from dataclasses import dataclass

from m3ae.errors import M3AEError


@dataclass(frozen=True)
class FolderKind:
    """One kind of prepared folder."""

    name: str
    text: str
    """What the example's text is called in messages: caption, question or text."""
    min_words: int = 2
    """Shorter texts are dropped (captions: filtered as upstream; 0-1 words are always bad input)."""
    captions: bool = False
    """Image-caption pairs (rows: image_id, text)."""
    answers: bool = False
    """Examples carry an answer and an answer type, checked at validation (VQA)."""
    vocabulary: str | None = None
    """"answers" or "labels": the closed set the head predicts over; None: no set."""
    count_key: str | None = None
    """The summary key of the set's size (num_answers, num_classes)."""
    unique: str | None = None
    """A `RawExample` field that must not repeat within a split (VQA: question_id)."""
    column: str = "text"
    """The split table's column that holds the example's text (VQA: question)."""


MIN_CAPTION_WORDS = 3
"""Upstream keeps ROCO/MedICaT texts of at least 3 words; 2-word texts are filtered (and counted)."""

FOLDER_KINDS: dict[str, FolderKind] = {kind.name: kind for kind in (
    FolderKind("pretrain", "caption", MIN_CAPTION_WORDS, captions=True),
    FolderKind("irtr", "caption", MIN_CAPTION_WORDS, captions=True),
    FolderKind("vqa", "question", answers=True, vocabulary="answers", count_key="num_answers",
               unique="question_id", column="question"),
    FolderKind("cls", "text", vocabulary="labels", count_key="num_classes"),
)}
CAPTION_KINDS = tuple(name for name, kind in FOLDER_KINDS.items() if kind.captions)


def folder_kind(name: str) -> FolderKind:
    """The `FolderKind` called ``name``; a clear error for an unknown one."""
    if name not in FOLDER_KINDS:
        raise M3AEError(f"unknown prepared data kind {name!r}; expected one of {tuple(FOLDER_KINDS)}")
    return FOLDER_KINDS[name]
