"""SLAKE 1.0 reader."""

from __future__ import annotations

from pathlib import Path

from m3ae.data.prepare import Issues, RawExample
from m3ae.data.sources.common import _drop_empty_answers, _vqa_examples

SLAKE_IMAGE_FIELDS = {"modality": "modality", "location": "location"}
"""SLAKE record field -> image metadata name (metadata.json)."""
SLAKE_FILES = {"train": "train.json", "val": "validate.json", "test": "test.json"}


def read_slake(src: Path, protocol: str, seed: int, issues: Issues) -> dict[str, list[RawExample]]:
    """SLAKE 1.0: train/validate/test.json + imgs/; English questions only (both protocols).

    clean: records with an empty answer are dropped and counted (``dropped``), not refused; the
    official release has one (train qid 1622, "Does the picture contain liver?"). paper keeps it,
    as upstream does ("" is one of its 222 answers).
    """
    english = lambda rec: rec.get("q_lang") == "en"
    splits = {
        s: _vqa_examples(src / f, s, src / "imgs", "img_name", issues, english,
                         category_key="content_type", image_keys=SLAKE_IMAGE_FIELDS)
        for s, f in SLAKE_FILES.items()
    }
    if protocol == "clean":
        splits = {s: _drop_empty_answers(examples, issues) for s, examples in splits.items()}
    return splits
