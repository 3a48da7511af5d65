"""VQA-Med 2019 in the organisers' layout, the composed pre-training corpus and the leakage guard."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m3ae.cli import main
from m3ae.data.compose import QA, ImageQA, compose_texts, yes_no_statement
from m3ae.data.corpus import build_corpus
from m3ae.data.guard import fingerprint, match
from m3ae.data.prepare import Issues
from m3ae.data import prepare_dataset
from m3ae.data.sources import read_medvqa_2019, read_vqa_rad
from m3ae.data.storage import read_summary, read_table

FIXTURE = Path(__file__).parent / "fixtures" / "vqa_med_2019"
TRAIN_IMAGES = FIXTURE / "ImageClef-2019-VQA-Med-Training" / "Train_images"


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def med(tmp_path_factory) -> Path:
    """The fixture prepared with all four categories (clean protocol)."""
    out = tmp_path_factory.mktemp("med") / "vqa_med"
    prepare_dataset("vqa-med-2019", FIXTURE, out, protocol="clean", categories="all")
    return out


def test_release_layout_default_categories_and_unreleased_test_images(tmp_path):
    summary = prepare_dataset("vqa-med-2019", FIXTURE, tmp_path / "out")
    assert [summary["splits"][s]["examples"] for s in ("train", "val", "test")] == [6, 3, 0]
    assert summary["splits"]["test"]["filtered"] == {"test_images_not_released": 2}  # the abnormality one is not chosen
    questions = [r["question"] for r in read_table(tmp_path / "out" / "train.arrow").to_pylist()]
    assert not any("abnormal" in q for q in questions)  # Abnormality (C4) left out, as upstream


def test_categories_option_records_each_category(med):
    summary = read_summary(med)
    assert summary["categories"] == ["Modality", "Plane", "Organ", "Abnormality"]
    assert summary["splits"]["train"]["examples"] == 8
    categories = json.loads((med / "metadata.json").read_text())["questions"]
    rows = read_table(med / "train.arrow").to_pylist()
    by_category = {categories[str(r["question_id"])]["category"] for r in rows}
    assert by_category == {"Modality", "Plane", "Organ", "Abnormality"}


def test_test_questions_are_read_when_their_images_exist(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    images = src / "VQAMed2019Test" / "VQAMed2019_Test_Images"
    images.mkdir()
    for name in ("synpic54082", "synpic48556", "synpic50696"):
        shutil.copyfile(TRAIN_IMAGES / "synpic41148.jpg", images / f"{name}.jpg")
    splits = read_medvqa_2019(src, "clean", 0, Issues(), categories="all")
    assert [(ex.category, ex.answer) for ex in splits["test"]] == [
        ("Modality", "cta - ct angiography"), ("Modality", "no"), ("Abnormality", "meningioma")]


def test_unknown_category_and_wrong_dataset_are_one_line_errors(tmp_path):
    assert main(["prepare", "vqa-med-2019", "--src", str(FIXTURE), "--out", str(tmp_path / "o"),
                 "--categories", "Colour"]) == 2
    assert main(["prepare", "slake", "--src", str(FIXTURE), "--out", str(tmp_path / "o"),
                 "--categories", "all"]) == 2


def test_yes_no_questions_become_statements_or_are_left_out():
    assert yes_no_statement("Does the picture contain liver?", "No") == "the picture does not contain liver"
    assert yes_no_statement("is this a t1 weighted image?", "no") == "this is not a t1 weighted image"
    assert yes_no_statement("Is there an abnormality in the x-ray?", "no") == "there is no abnormality in the x-ray"
    assert yes_no_statement("was the ct taken with contrast?", "yes") == "the ct was taken with contrast"
    assert yes_no_statement("Can you see the heart?", "yes") is None


def test_one_text_per_image_or_one_per_category():
    image = ImageQA("xmlab1/source.jpg", {"modality": "MRI", "location": "Abdomen"}, [
        QA("What modality is used to take this image?", "MRI", "Modality"),
        QA("Does the picture contain liver?", "Yes", "Organ"),
        QA("What is the largest organ in the picture?", "Liver", "Size"),
        QA("Can you see the heart?", "No", "Organ"),
    ])
    texts, dropped = compose_texts("slake", image)
    assert texts == ["mri of the abdomen: the picture contains liver; the largest organ in the picture is liver"]
    assert dropped["yes_no_unmatched"] == 1
    per_category, _ = compose_texts("slake", image, "category")
    assert per_category == ["mri of the abdomen", "mri of the abdomen: the picture contains liver",
                            "mri of the abdomen: the largest organ in the picture is liver"]


def test_vqa_med_text_is_header_then_diagnosis(med):
    summary = build_corpus([str(med)], med.parent / "corpus", val_fraction=0)
    texts = {r["image_id"]: r["text"] for r in read_table(med.parent / "corpus" / "train.arrow").to_pylist()}
    first = "vqa-med-2019/ImageClef-2019-VQA-Med-Training/Train_images/synpic41148.jpg"
    assert texts[first] == ("axial ct angiography of the lung, mediastinum, pleura: "
                            "cryptococcal pneumonia in an immunocompetent host")
    assert summary["corpus"]["images"] == summary["corpus"]["texts"] == 3


def test_guard_catches_a_renamed_reencoded_resized_copy_not_a_different_image():
    original = Image.open(TRAIN_IMAGES / "synpic41148.jpg").convert("L")
    copy = original.resize((original.width // 2 + 7, original.height // 2 + 7), Image.Resampling.BILINEAR)
    other = Image.open(TRAIN_IMAGES / "synpic43984.jpg").convert("L")
    test_set = fingerprint([("synpic41148.jpg", "vqa-rad/synpic41148.jpg", jpeg(original, 95))], "eval")
    corpus = fingerprint([("renamed.jpg", "mine/renamed.jpg", jpeg(copy, 60)),
                          ("same.png", "mine/same.png", jpeg(original, 95)),
                          ("other.jpg", "mine/other.jpg", jpeg(other))], "corpus")
    assert match(corpus, test_set) == ["near_duplicate", "exact_pixels", None]


def _vqa_folder_with_copy(tmp_path: Path) -> Path:
    """A custom VQA folder whose test image is a renamed, re-encoded, resized VQA-Med train image."""
    src = tmp_path / "eval_src"
    src.mkdir()
    image = Image.open(TRAIN_IMAGES / "synpic41148.jpg").convert("RGB")
    image.resize((image.width * 3 // 2, image.height * 3 // 2)).save(src / "patient7.jpg", quality=70)
    Image.fromarray(np.full((48, 48), 90, dtype=np.uint8)).save(src / "flat.jpg")
    rows = [{"split": "train", "image": "flat.jpg", "question": "is it flat?", "answer": "yes"},
            {"split": "test", "image": "patient7.jpg", "question": "what is seen here?", "answer": "avm"}]
    (src / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "eval"
    prepare_dataset("custom", src / "data.jsonl", out, protocol="clean")
    return out


def test_corpus_leaves_evaluation_copies_out_and_counts_them(med, tmp_path, capsys):
    evaluation = _vqa_folder_with_copy(tmp_path)
    out = tmp_path / "corpus"
    code = main(["corpus", "--from", f"{med}:train", "--exclude", str(evaluation), "--out", str(out),
                 "--val-fraction", "0", "--check-overlap", str(evaluation)])
    assert code == 0
    guard = read_summary(out)["guard"]
    assert guard["excluded"][str(evaluation)] == {"evaluation_images": 1, "by_id": 0, "exact_pixels": 0,
                                                  "near_duplicate": 1, "by_source": {"vqa-med-2019": 1}}
    assert read_summary(out)["corpus"]["images"] == 1
    printed = capsys.readouterr().out
    assert "1 near duplicates" in printed and "overlap check" in printed


def test_check_overlap_reports_the_copy(med, tmp_path, capsys):
    evaluation = _vqa_folder_with_copy(tmp_path)
    out = tmp_path / "again"
    prepare_dataset("vqa-med-2019", FIXTURE, out, protocol="clean", categories="all", check_overlap=[evaluation])
    printed = capsys.readouterr().out
    assert f"{out}/train (2 images) x {evaluation}/test: 1 shared (0 by id, 0 exact pixels, 1 near duplicates)" in printed


def test_corpus_bad_input_is_one_line(med, tmp_path, capsys):
    assert main(["corpus", "--from", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    assert "missing: --from folder not found" in capsys.readouterr().err
    build_corpus([str(med)], tmp_path / "pretrain", val_fraction=0)
    assert main(["corpus", "--from", str(tmp_path / "pretrain"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "needs a prepared VQA folder, this one holds 'pretrain' data" in err and len(err.strip().split("\n")) == 1


def test_the_21_real_vqa_rad_test_images_in_vqa_med_are_found(shared_data):
    med_splits = read_medvqa_2019(shared_data / "vqa_med_2019", "clean", 0, Issues(), categories="all")
    rad = read_vqa_rad(shared_data / "vqa_rad", "paper", 0, Issues())
    med_images = {Path(ex.image_id).stem: ex.image_path for s in ("train", "val") for ex in med_splits[s]}
    rad_test = {Path(ex.image_id).stem: ex.image_path for ex in rad["test"]}
    twins = sorted(set(med_images) & set(rad_test))
    assert len(twins) == 21
    # by pixels alone: the VQA-Med copies, renamed, against the VQA-RAD test images
    corpus = fingerprint([(f"x{n}", f"x/{n}", med_images[t].read_bytes()) for n, t in enumerate(twins)], "med")
    test_set = fingerprint([(t, f"rad/{t}", rad_test[t].read_bytes()) for t in twins], "rad")
    assert all(match(corpus, test_set))


def test_model_card_of_a_model_pretrained_on_the_corpus_shows_the_guard(med, tmp_path):
    from helpers.synthetic import REPO, TINY

    evaluation = _vqa_folder_with_copy(tmp_path)
    corpus = tmp_path / "corpus"
    build_corpus([str(med)], corpus, exclude=[evaluation], val_fraction=0.4, texts_per="category")
    out = tmp_path / "pt"
    assert main(["pretrain", "--config", str(REPO / "configs/pretrain/tiny.yaml"), "--data", str(corpus),
                 "--out", str(out), "--train.max_steps", "1", *TINY, "--train.batch_size", "2"]) == 0
    card = (out / "best" / "README.md").read_text()
    assert "## Leakage guard" in card
    assert f"| {evaluation} | test+val | 1 | 0 | 0 | 1 | 24 |" in card
