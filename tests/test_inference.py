"""Inference: `VQAPipeline`, `m3ae predict`, the model card and the plotting helpers.

A tiny VQA model (m3ae-tiny, random weights) is saved once per module; every test reads it.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m3ae.cli import main
from m3ae.errors import M3AEError

ANSWERS = ["yes", "no", "ct", "mri", "left", "right", "brain"]


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def vqa_model_dir(tmp_path_factory) -> Path:
    """A saved m3ae-tiny VQA model folder with the packaged RoBERTa tokenizer and an answer list."""
    from m3ae.data import load_tokenizer
    from m3ae.models import M3AE, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig.from_name("m3ae-tiny").with_heads(["vqa"], num_answers=len(ANSWERS))
    model = M3AE(config).eval()
    out = tmp_path_factory.mktemp("vqa_model")
    model.save_pretrained(out, tokenizer=load_tokenizer(),
                          extra={"answers": ANSWERS,
                                 "preprocessing": {"image_size": config.vision.image_size,
                                                   "max_text_len": 16}})
    return out


@pytest.fixture(scope="module")
def pretrain_model_dir(tmp_path_factory) -> Path:
    """A saved m3ae-tiny folder without a VQA head (what pre-training writes)."""
    from m3ae.models import M3AE, ModelConfig

    model = M3AE(ModelConfig.from_name("m3ae-tiny").with_heads(["itm"]))
    out = tmp_path_factory.mktemp("pretrain_model")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def png16(tmp_path_factory) -> Path:
    """A 16-bit greyscale PNG (mode I;16) with values far above 255."""
    path = tmp_path_factory.mktemp("img") / "ct16.png"
    ramp = (np.arange(40 * 56, dtype=np.uint32).reshape(40, 56) * 23 % 65535).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    return path


@pytest.fixture(scope="module")
def dicom_file() -> Path:
    """A CT slice bundled with pydicom (offline)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if path is None:
        pytest.skip("pydicom's bundled CT_small.dcm is not installed")
    return Path(path)


# ------------------------------------------------------------------------------- image inputs
def test_16bit_png_is_windowed_not_clipped(png16):
    from m3ae.inference import to_rgb_image

    rgb = np.asarray(to_rgb_image(png16))
    # a plain 8-bit cast would saturate almost everything at 255; a min-max window spans 0..255
    assert rgb.shape == (40, 56, 3) and rgb.min() == 0 and rgb.max() == 255
    assert len(np.unique(rgb[..., 0])) > 100


def test_dicom_decodes_to_rgb(dicom_file):
    from m3ae.inference import to_rgb_image

    rgb = to_rgb_image(dicom_file)
    assert rgb.mode == "RGB" and rgb.size == (128, 128)
    assert np.asarray(rgb).std() > 10  # a real picture, not a flat substitute


@pytest.mark.parametrize("array", [
    np.zeros((20, 30), np.uint8), np.arange(600, dtype=np.uint16).reshape(20, 30),
    np.random.default_rng(0).random((20, 30, 3)).astype(np.float32), np.zeros((20, 30, 1), np.uint8),
])
def test_array_inputs_become_rgb(array):
    from m3ae.inference import to_rgb_image

    image = to_rgb_image(array)
    assert image.mode == "RGB" and image.size == (30, 20)


def test_bad_image_inputs_raise(tmp_path):
    from m3ae.inference import to_rgb_image

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    for bad in (tmp_path / "missing.png", broken, np.zeros((2, 3, 4, 5), np.uint8), 42):
        with pytest.raises(M3AEError):
            to_rgb_image(bad)


# ---------------------------------------------------------------------------------- pipeline
def test_pipeline_answers_sorted_probabilities(vqa_model_dir, png16):
    from m3ae import VQAPipeline

    pipe = VQAPipeline.from_pretrained(vqa_model_dir)
    answers = pipe(png16, "Is there a fracture?", top_k=3)
    assert len(answers) == 3 and {a["answer"] for a in answers} <= set(ANSWERS)
    probs = [a["probability"] for a in answers]
    assert probs == sorted(probs, reverse=True) and all(0.0 <= p <= 1.0 for p in probs)
    everything = pipe(png16, "Is there a fracture?", top_k=100)
    assert len(everything) == len(ANSWERS)
    assert sum(a["probability"] for a in everything) == pytest.approx(1.0, abs=1e-5)


def test_pipeline_same_answer_for_path_pil_and_array(vqa_model_dir, dicom_file):
    from m3ae import VQAPipeline
    from m3ae.inference import to_rgb_image

    pipe = VQAPipeline.from_pretrained(vqa_model_dir)
    rgb = to_rgb_image(dicom_file)
    by_path = pipe(dicom_file, "What organ is shown?", top_k=2)
    by_pil = pipe(rgb, "What organ is shown?", top_k=2)
    by_array = pipe(np.asarray(rgb), "What organ is shown?", top_k=2)
    assert by_path == by_pil == by_array


def test_pipeline_batch_matches_single(vqa_model_dir, png16, dicom_file):
    from m3ae import VQAPipeline

    pipe = VQAPipeline.from_pretrained(vqa_model_dir)
    batch = pipe.predict_batch([png16, dicom_file], ["Is it normal?", "Is this a CT?"], top_k=1)
    single = [pipe(png16, "Is it normal?", top_k=1), pipe(dicom_file, "Is this a CT?", top_k=1)]
    for b, s in zip(batch, single):
        assert b[0]["answer"] == s[0]["answer"]
        assert b[0]["probability"] == pytest.approx(s[0]["probability"], abs=1e-5)


def test_pipeline_rejects_empty_question_and_model_without_vqa_head(vqa_model_dir, pretrain_model_dir, png16):
    from m3ae import VQAPipeline

    pipe = VQAPipeline.from_pretrained(vqa_model_dir)
    with pytest.raises(M3AEError, match="empty"):
        pipe(png16, "   ")
    with pytest.raises(M3AEError, match="no VQA head"):
        VQAPipeline.from_pretrained(pretrain_model_dir)
    with pytest.raises(M3AEError, match="not found"):
        VQAPipeline.from_pretrained(vqa_model_dir.parent / "does-not-exist")


# ------------------------------------------------------------------------------- predict CLI
def test_predict_cli_json_on_dicom(vqa_model_dir, dicom_file, capsys):
    code = main(["predict", "--model", str(vqa_model_dir), "--image", str(dicom_file),
                 "--question", "Is this a CT scan?", "--top-k", "4", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["question"] == "Is this a CT scan?" and len(result["answers"]) == 4
    assert set(result["answers"][0]) == {"answer", "probability"}


def test_predict_cli_text_on_16bit_png(vqa_model_dir, png16, capsys):
    assert main(["predict", "--model", str(vqa_model_dir), "--image", str(png16),
                 "--question", "Normal?"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "Q: Normal?" and len(lines) == 1 + 5


def test_predict_cli_batch_csv(vqa_model_dir, png16, dicom_file, tmp_path):
    src = tmp_path / "questions.csv"
    (tmp_path / "rel.png").write_bytes(png16.read_bytes())
    with src.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image", "question"])
        writer.writerow(["a", "rel.png", "Is it normal?"])  # relative to the CSV's folder
        writer.writerow(["b", str(dicom_file), "Is this a CT?"])
    out = tmp_path / "answers.csv"
    assert main(["predict", "--model", str(vqa_model_dir), "--input", str(src), "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == ["a", "b"]
    assert all(r["answer"] in ANSWERS and 0.0 <= float(r["probability"]) <= 1.0 for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["--question", "x"], "--image"),
    (["--image", "a.png", "--question", "x", "--input", "q.csv"], "not both"),
    (["--input", "q.csv"], "--output"),
    (["--image", "a.png", "--question", "x", "--top-k", "0"], "top-k"),
])
def test_predict_cli_argument_errors(vqa_model_dir, argv, message, capsys):
    assert main(["predict", "--model", str(vqa_model_dir), *argv]) == 2
    assert message in capsys.readouterr().err


def test_predict_cli_bad_inputs_name_the_problem(vqa_model_dir, pretrain_model_dir, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    assert main(["predict", "--model", str(vqa_model_dir), "--image", str(broken), "--question", "x"]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert main(["predict", "--model", str(pretrain_model_dir), "--image", str(broken),
                 "--question", "x"]) == 2
    assert "no VQA head" in capsys.readouterr().err
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("image,question\nrel.png,\n")
    assert main(["predict", "--model", str(vqa_model_dir), "--input", str(bad_csv),
                 "--output", str(tmp_path / "o.csv")]) == 2
    assert "bad.csv:2: empty 'question'" in capsys.readouterr().err
    missing_img = tmp_path / "missing.csv"
    missing_img.write_text("image,question\nnope.png,Is it?\n")
    assert main(["predict", "--model", str(vqa_model_dir), "--input", str(missing_img),
                 "--output", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "missing.csv:2" in err and "nope.png" in err


# -------------------------------------------------------------------------------- model card
def test_model_card_has_required_sections(tmp_path):
    from m3ae.reports.model_card import write_model_card

    path = write_model_card(tmp_path, {
        "name": "demo VQA", "task": "vqa", "data": {"dataset": "vqa-rad", "protocol": "clean"},
        "metrics": {"open": 12.5, "closed": 60.0, "overall": 41.0}, "metrics_split": "test",
        "command": "m3ae demo --quick", "seed": 3})
    text = path.read_text()
    for needle in ("## Intended use", "not** a medical device", "## Data", "vqa-rad", "clean",
                   "## Metrics", "| overall | 41.00 |", "m3ae demo --quick", "| seed | 3 |", "## Citation"):
        assert needle in text, needle
    with pytest.raises(M3AEError):
        write_model_card(tmp_path / "missing", {})


# ------------------------------------------------------------------------------------- plots
def test_denormalize_patches_inverts_per_patch_normalisation():
    from m3ae.models.masking import patchify
    from m3ae.reports.viz import NORM_PIX_EPS, denormalize_patches

    images = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    target = patchify(images, 8)  # [2, 6, 192]
    std = (target.var(-1, keepdim=True) + NORM_PIX_EPS).sqrt()
    normalised = (target - target.mean(-1, keepdim=True)) / std
    torch.testing.assert_close(denormalize_patches(normalised, target), target, atol=1e-5, rtol=1e-5)


def test_reconstruction_panels_keep_visible_patches():
    from m3ae.reports.viz import reconstruction_panels

    images = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0]])  # patches 0 and 3 removed
    panels = reconstruction_panels(images, torch.zeros(1, 4, 192), mask, patch_size=8, norm_pix=False)
    mixed, masked = panels["visible_plus_reconstruction"], panels["masked"]
    torch.testing.assert_close(mixed[..., :8, 8:], images[..., :8, 8:])  # patch 1 visible: original
    # removed patches (0 and 3): the prediction (zeros) in the mix, the mean colour (0) in the input
    assert mixed[..., :8, :8].abs().max() == 0 and masked[..., 8:, 8:].abs().max() == 0


def test_accuracy_by_group_and_plots(tmp_path):
    from m3ae.reports import viz

    stats = viz.accuracy_by_group(["PRES", "PRES", "ABN", "PRES"], [1, 0, 1, 1])
    assert list(stats) == ["PRES", "ABN"] and stats["PRES"] == pytest.approx((200 / 3, 3))
    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s, "val/overall": 10.0 * s}) for s in (1, 2, 3)]
    log.write_text("\n".join(lines))
    assert viz.curves_from_log(viz.read_log(log))["loss"] == ([1, 2, 3], [1.0, 0.5, 1.0 / 3])
    for path in (viz.plot_training_curves({"run": log}, tmp_path / "curves.png"),
                 viz.plot_accuracy_by_group({"m": stats}, tmp_path / "types.png")):
        assert Image.open(path).size[0] > 300
    five = {}
    for i in range(5):  # pre-training (MLM ~20, ITM ~0.7) and four fine-tunes with accuracies
        five[f"run {i}"] = tmp_path / f"log{i}.jsonl"
        rows = [{"step": s, "mlm_loss": 20.0 / s, "itm_loss": 0.7} if i == 0 else
                {"step": s, "loss": 2.0 / s, "val/overall": 20.0 * s} for s in (1, 2, 3)]
        five[f"run {i}"].write_text("\n".join(json.dumps(r) for r in rows))
    width, height = Image.open(viz.plot_training_curves(five, tmp_path / "five.png")).size
    assert 1000 < width <= 1600 and height > width / 2.5  # 2 rows of 3, readable at 100%
    runs = {name: viz.curves_from_log(viz.read_log(p)) for name, p in five.items()}
    assert viz._log_loss_axis(runs)  # one decision for all panels: 20 .. 0.67 spans > 20x, 2 .. 0.67 does not
    assert not viz._log_loss_axis({k: v for k, v in runs.items() if k != "run 0"})
    log.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(M3AEError, match="log.jsonl:2"):
        viz.read_log(log)
