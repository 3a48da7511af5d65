"""The pre-trained model that ships with m3ae (m3ae/assets/pretrained/m3ae-small-medvqa)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from m3ae.weights.pretrained import SHIPPED_DIR, shipped_names

NAME = "m3ae-small-medvqa"
FOLDER = SHIPPED_DIR / NAME
VQA_RAD = Path(__file__).resolve().parents[1] / "data" / "vqa_rad"


def test_it_ships_small_with_a_card_and_without_its_text_tower():
    assert NAME in shipped_names()
    total = sum(p.stat().st_size for p in FOLDER.iterdir())
    assert total <= 30 * 2**20, f"{total / 2**20:.1f} MiB"  # it lives in the repository and the wheel
    config = json.loads((FOLDER / "config.json").read_text())
    assert config["model"]["text"]["pretrained_path"].startswith("package:")
    card = (FOLDER / "README.md").read_text()
    for must in ("Leakage guard", "itm_acc", "mim_loss", "minutes", "Shipped with m3ae"):
        assert must in card, must


def _test_images(count: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """The first ``count`` VQA-RAD test images (never in the corpus: the leakage guard removed them) with
    one of their questions, through the evaluation transform."""
    from m3ae.data import images as image_ops
    from m3ae.preprocessing import Preprocessing

    pre = Preprocessing(image_size=size)
    first: dict[str, str] = {}
    for row in json.loads((VQA_RAD / "testset.json").read_text()):
        first.setdefault(row["image_name"], row["question"])
    picked = sorted(first.items())[:count]
    pixels = []
    for name, _ in picked:
        image = image_ops.decode_image((VQA_RAD / "images" / name).read_bytes(), name)
        square = image_ops.center_crop(image_ops.resize_shorter(image, size), size)
        pixels.append(image_ops.to_normalized_tensor(square, pre.mean, pre.std))
    return torch.stack(pixels), [q for _, q in picked]


@torch.no_grad()
def _mim_loss(model, pixels: torch.Tensor, questions: list[str]) -> float:
    from m3ae.data import load_tokenizer
    from m3ae.models.losses import mim_loss

    text = load_tokenizer(FOLDER)(questions, padding="max_length", truncation=True, max_length=24,
                                  return_tensors="pt")
    noise = torch.rand(len(questions), model.config.vision.num_patches, generator=torch.Generator().manual_seed(0))
    out = model.encode(pixels, text["input_ids"], text["attention_mask"], image_noise=noise,
                       mask_ratio=model.config.mask_ratio_image)
    pred = model.heads["mim"](model.mim_features(out), out.ids_restore)  # [B, L_i, P*P*C]
    return float(mim_loss(pred, pixels, out.image_mask, model.config.vision.patch_size, model.config.norm_pix_loss))


@pytest.mark.skipif(not (VQA_RAD / "testset.json").is_file(), reason="bundled VQA-RAD missing")
def test_it_loads_offline_by_name_and_reconstructs_unseen_images_better_than_before_pretraining():
    """Loads with `create_model(name, pretrained=True)` (the text tower from the pip package), and its
    pixel decoder predicts removed patches of unseen images better than the same model before
    pre-training (1.0 = predicting each patch's own mean)."""
    import m3ae

    torch.manual_seed(0)
    shipped = m3ae.create_model(NAME, pretrained=True).eval()
    assert any("text tower loaded from package:" in n for n in shipped.load_report.notes)
    before = m3ae.create_model(shipped.config).eval()
    pixels, questions = _test_images(16, shipped.config.vision.image_size)
    trained, untrained = _mim_loss(shipped, pixels, questions), _mim_loss(before, pixels, questions)
    assert trained < 0.85 and trained < untrained - 0.15, (trained, untrained)


def test_a_fine_tuning_config_can_start_from_it_with_a_fresh_fusion():
    """The demo's `m3ae` row: an asked-for m3ae-small config, `pretrained` = the shipped folder (which has
    no text tower: its config names where it comes from) and the fusion kept at its fresh start."""
    import dataclasses

    from m3ae.weights.factory import create_model

    shipped = create_model(NAME, pretrained=True)
    # the recipe's own config (as `model.name` + `model.config` build it) names no text source
    asked = dataclasses.replace(shipped.config, text=dataclasses.replace(shipped.config.text, pretrained_path=None))
    model = create_model(asked, pretrained=NAME, fresh=("fusion", "poolers"), heads=("vqa",), num_answers=7)
    state, ref = model.state_dict(), shipped.state_dict()
    assert torch.equal(state["vision_encoder.pos_embed"], ref["vision_encoder.pos_embed"])
    text_key = next(k for k in ref if k.startswith("text_encoder."))
    assert torch.equal(state[text_key], ref[text_key])
    fusion_key = next(k for k in ref if k.startswith("fusion.") and k.endswith("weight"))
    assert not torch.equal(state[fusion_key], ref[fusion_key])
