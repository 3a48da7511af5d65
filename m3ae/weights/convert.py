"""`m3ae convert`: an official M3AE Lightning checkpoint (.ckpt) into an m3ae model folder, with its
preprocessing, the answer list of a fine-tuned VQA checkpoint and the tokenizer files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from m3ae.errors import CheckpointError, DataError, M3AEError
from m3ae.weights.upstream import convert_checkpoint


def read_answer_list(path: str | Path) -> list[str]:
    """Answers by VQA output index from a JSON list, or from a JSON object answer -> index.

    Raises:
        DataError: a missing or malformed file, or indices that are not exactly 0..N-1.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as err:
        raise DataError(f"--answers {path}: cannot read ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if isinstance(data, list) and all(isinstance(a, str) for a in data):
        return data
    if isinstance(data, dict) and all(isinstance(i, int) and not isinstance(i, bool) for i in data.values()):
        if sorted(data.values()) != list(range(len(data))):
            raise DataError(f"{path}: the answer -> index map must use each index 0..{len(data) - 1} once")
        return [a for a, _ in sorted(data.items(), key=lambda item: item[1])]
    raise DataError(f"{path}: expected a JSON list of answers or an object answer -> index")


def conversion_metadata(src: str | Path, answers: str | Path | None, model) -> dict:
    """config.json extras: the source, its preprocessing, and the answer list checked against the VQA head."""
    from m3ae.preprocessing import Preprocessing
    from m3ae.weights.pretrained import find_by_file

    entry = find_by_file(src)  # a released file: its recorded text length and normalisation
    size = model.config.vision.image_size
    pre = entry.preprocessing(size) if entry is not None else Preprocessing(image_size=size)
    extra: dict = {"source": str(src), "preprocessing": pre.to_dict()}
    if answers is None:
        if "vqa" in model.config.heads:
            print("note: no --answers given; `m3ae predict` needs the answer list of this VQA checkpoint "
                  "(convert again with --answers FILE)")
        return extra
    if "vqa" not in model.config.heads:
        raise M3AEError(f"--answers: {src} has no VQA head (heads {list(model.config.heads)})")
    answer_list = read_answer_list(answers)
    if len(answer_list) != model.config.num_answers:
        raise M3AEError(f"--answers {answers} lists {len(answer_list)} answers but the VQA head of "
                        f"{src} has {model.config.num_answers} outputs")
    extra["answers"] = answer_list
    return extra


def convert_to_folder(src: str | Path, out_dir: str | Path, tokenizer: Any, image_size: int | None = None,
                      answers: str | Path | None = None) -> int:
    """Convert ``src``, print the conversion report, save ``out_dir`` with ``tokenizer``'s files (a
    loaded tokenizer: `m3ae.data.load_tokenizer`, the packaged RoBERTa files by default). Returns 0.

    Raises:
        CheckpointError: NaN/Inf in the converted weights; M3AEError: a bad answer list.
    """
    from m3ae.guards import nonfinite_keys

    model, report = convert_checkpoint(src, image_size=image_size)
    bad = nonfinite_keys(model.state_dict())
    if bad:
        raise CheckpointError(f"{src}: NaN/Inf in {len(bad)} tensor(s), e.g. {bad[:3]}; not converted")
    extra = conversion_metadata(src, answers, model)
    for line in report.lines():
        print(line)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out_dir, tokenizer=tokenizer, extra=extra)
    print(f"wrote {out_dir} ({n_params / 1e6:.1f} M parameters, heads {list(model.config.heads)})")
    return 0
