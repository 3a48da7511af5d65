"""VQA-RAD (MEVF split) reader."""

from __future__ import annotations

from pathlib import Path

from m3ae.data.prepare import SPLITS, Issues, RawExample
from m3ae.data.sources.common import _vqa_examples, hold_out_by_image

VQA_RAD_VAL_FRACTION = 0.1
"""Clean protocol: share of VQA-RAD train images held out as validation."""
VQA_RAD_IMAGE_FIELDS = {"image_organ": "organ"}


def read_vqa_rad(src: Path, protocol: str, seed: int, issues: Issues) -> dict[str, list[RawExample]]:
    """VQA-RAD (MEVF split): trainset.json, testset.json [, valset.json], images/.

    paper: val = valset.json when present, else a copy of the test set (what upstream's valset.json
    is). clean: val = 10% of the train images, held out with ``seed``.
    """
    images = src / "images"
    read = lambda path, split: _vqa_examples(path, split, images, "image_name", issues,
                                            category_key="question_type", image_keys=VQA_RAD_IMAGE_FIELDS)
    splits = {s: read(src / f"{s}set.json", s) for s in ("train", "test")}
    if protocol == "paper":
        valset = src / "valset.json"
        if valset.exists():
            splits["val"] = read(valset, "val")
        else:
            splits["val"] = [RawExample(**{**ex.__dict__, "split": "val"}) for ex in splits["test"]]
    else:
        splits["train"], splits["val"] = hold_out_by_image(splits["train"], VQA_RAD_VAL_FRACTION, seed)
    return {s: splits[s] for s in SPLITS}
