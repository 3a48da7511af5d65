"""`m3ae prepare`: the real VQA-RAD/SLAKE counts, every raw layout, both protocols, upstream
.arrow import, bad input (fail names the file and record; skip counts by reason), atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from m3ae.cli import main
from m3ae.data.answers import normalize_answer
from m3ae.data import prepare_dataset
from m3ae.data.storage import ImageStore, read_answers, read_labels, read_summary, read_table
from m3ae.errors import DataError, M3AEError

import helpers.raw_builders as rb


def counts(summary):
    return [summary["splits"][s]["examples"] for s in ("train", "val", "test")]


# -- real data --------------------------------------------------------------------------------------
def test_vqa_rad_paper_protocol_reproduces_the_original(vqa_rad_data, tmp_path, capsys):
    out = tmp_path / "vqa_rad"
    assert main(["prepare", "vqa-rad", "--src", str(vqa_rad_data), "--out", str(out)]) == 0
    summary = read_summary(out)
    assert counts(summary) == [3064, 451, 451] and summary["num_answers"] == 498
    answers = read_answers(out)
    assert len(answers) == 498 and answers[0] == "yes"
    val, test = read_table(out / "val.arrow"), read_table(out / "test.arrow")
    assert val.equals(test) and summary["val_is_test"]  # upstream's valset.json is a copy of the test set
    train = read_table(out / "train.arrow").to_pylist()
    assert {r["answer_type"] for r in train} == {0, 1}  # includes the two "CLOSED " rows
    assert len(ImageStore(out).image_ids()) == 315 - 1  # one image is referenced by no question
    assert "answers: 498" in capsys.readouterr().out
    assert _no_record_refused(summary)


def _no_record_refused(summary) -> bool:
    """Nothing skipped as bad input and no known quirk dropped, in any split."""
    return summary["dropped"] == {} and not any(
        info["skipped"] or info["dropped"] for info in summary["splits"].values()
    )


def test_vqa_rad_clean_protocol_holds_out_train_images(vqa_rad_data, tmp_path):
    out = tmp_path / "clean"
    summary = prepare_dataset("vqa-rad", vqa_rad_data, out, protocol="clean")
    train = read_table(out / "train.arrow").column("image_id").to_pylist()
    val = read_table(out / "val.arrow").to_pylist()
    assert counts(summary)[0] + counts(summary)[1] == 3064 and counts(summary)[2] == 451
    assert not set(train) & {r["image_id"] for r in val} and not summary["val_is_test"]
    assert summary["splits"]["val"]["outside_set"] == sum(r["label"] == -1 for r in val) > 0
    assert summary["num_answers"] == len(read_answers(out)) < 498
    assert summary["splits"]["test"]["outside_set"] > 0
    # the release's oddities are all valid input: ten integer answers (4, 2, 12), two answer
    # types "CLOSED " and two answers with a leading space; none is refused under the clean protocol
    assert _no_record_refused(summary)
    rows = read_table(out / "train.arrow").to_pylist() + val
    assert {"4", "2", "12"} <= {r["answer"] for r in rows}


@pytest.fixture(scope="module")
def slake_paper(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("slake") / "paper"
    return out, prepare_dataset("slake", shared_data / "slake", out, image_size=64)


def test_slake_paper_counts_and_english_only(slake_paper):
    out, summary = slake_paper
    assert counts(summary) == [4919, 1053, 1061] and summary["num_answers"] == 222
    assert summary["splits"]["train"]["filtered"]["not_english"] > 0
    assert "" in read_answers(out)  # upstream keeps the one empty answer as a class
    assert _no_record_refused(summary)
    assert summary["image_size"] == 64 and summary["image_format"] == "jpeg"


def test_slake_clean_answer_set_is_train_only(shared_data, tmp_path):
    # answer-set logic only: a copy of the JSON files with a handful of images is enough
    src = tmp_path / "slake"
    (src / "imgs").mkdir(parents=True)
    for name in ("train.json", "validate.json", "test.json"):
        records = [r for r in json.loads((shared_data / "slake" / name).read_text()) if r["q_lang"] == "en"]
        keep = sorted({r["img_name"] for r in records})[:3]
        records = [r for r in records if r["img_name"] in keep]
        (src / name).write_text(json.dumps(records))
        for img in keep:
            target = src / "imgs" / img
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((shared_data / "slake" / "imgs" / img).read_bytes())
    summary = prepare_dataset("slake", src, tmp_path / "out", protocol="clean")
    train_answers = {r["answer"] for r in read_table(tmp_path / "out" / "train.arrow").to_pylist()}
    assert set(read_answers(tmp_path / "out")) == train_answers
    test = read_table(tmp_path / "out" / "test.arrow").to_pylist()
    assert summary["splits"]["test"]["outside_set"] == sum(r["answer"] not in train_answers for r in test)


def test_slake_clean_drops_the_release_empty_answer_without_a_flag(shared_data, tmp_path, capsys):
    out = tmp_path / "clean"
    summary = prepare_dataset("slake", shared_data / "slake", out, protocol="clean", image_size=32)
    assert counts(summary) == [4919 - 1, 1053, 1061] and summary["on_error"] == "fail"
    assert summary["dropped"] == {"empty_answer": 1} == summary["splits"]["train"]["dropped"]
    answers = read_answers(out)
    assert len(answers) == summary["num_answers"] == 217 and "" not in answers
    assert not any(info["skipped"] for info in summary["splits"].values())  # the only quirk is qid 1622
    assert 1622 not in read_table(out / "train.arrow").column("question_id").to_pylist()
    assert capsys.readouterr().out.count("empty answer, dropped") == 1


def test_known_quirk_is_said_once_and_counted_per_split(tmp_path, capsys):
    src = tmp_path / "slake"
    record = {"img_name": "a.jpg", "question": "Is this a lung?", "answer": "Yes", "answer_type": "CLOSED",
              "q_lang": "en"}
    rb.write_jpeg(src / "imgs" / "a.jpg", seed=0)
    for n, name in enumerate(("train.json", "validate.json", "test.json")):
        blanks = [{**record, "qid": 10 * n + i, "answer": " "} for i in range(2)]
        (src / name).write_text(json.dumps([{**record, "qid": 10 * n + 5}, *blanks]))
    summary = prepare_dataset("slake", src, tmp_path / "out", protocol="clean")
    assert summary["dropped"] == {"empty_answer": 6} and counts(summary) == [1, 1, 1]
    assert [summary["splits"][s]["dropped"] for s in ("train", "val", "test")] == [{"empty_answer": 2}] * 3
    assert capsys.readouterr().out.count("m3ae prepare: note:") == 1


VQA_MED_RAW_FILES = {  # file in the organisers' release -> (fields per line, lines)
    "ImageClef-2019-VQA-Med-Training/All_QA_Pairs_train.txt": (3, 12792),
    "ImageClef-2019-VQA-Med-Validation/All_QA_Pairs_val.txt": (3, 2000),
    "VQAMed2019Test/VQAMed2019_Test_Questions_w_Ref_Answers.txt": (4, 500),
}


@pytest.mark.parametrize("name", VQA_MED_RAW_FILES)
def test_vqa_med_2019_raw_release_has_no_empty_malformed_or_repeated_lines(shared_data, name):
    # the raw text files, read directly (the reader of this layout is not ours to test here):
    # the class of quirk SLAKE has (an empty answer) and its relatives are absent
    fields, expected = VQA_MED_RAW_FILES[name]
    text = (shared_data / "vqa_med_2019" / name).read_text(encoding="utf-8")
    assert "\r" not in text and not text.startswith("\ufeff")
    lines = text.split("\n")
    assert lines[-1] == "" or len(lines) == expected  # at most a final newline
    records = [line.split("|") for line in lines if line]
    assert len(records) == expected and all(len(r) == fields for r in records)
    assert all(normalize_answer(r[-1]).strip() and len(r[-2].split()) >= 2 for r in records)
    assert len({(r[0], r[-2]) for r in records}) == expected  # no (image, question) twice


# -- fixture layouts ----------------------------------------------------------------------------------
def test_roco_texts_are_references_then_caption(tmp_path):
    summary = prepare_dataset("roco", rb.build_roco(tmp_path / "raw"), tmp_path / "out")
    rows = read_table(tmp_path / "out" / "train.arrow").to_pylist()
    assert counts(summary) == [8, 8, 8] and summary["task"] == "pretrain" and summary["references"]
    first = [r["text"] for r in rows if r["image_id"] == "train/ROCO_00000.jpg"]
    assert first == [
        "As shown in figure 0, the mass is enhancing.",
        "Axial CT scan number 0 of the train split showing a lesion.",
    ]
    assert summary["splits"]["train"]["filtered"] == {"short_text": 4}  # "Too short": 2 words < 3


def test_roco_without_references_uses_captions(tmp_path):
    summary = prepare_dataset(
        "roco", rb.build_roco(tmp_path / "raw", with_references=False), tmp_path / "out"
    )
    assert counts(summary) == [4, 4, 4] and summary["references"] is False


def test_medicat_radiology_split_is_seeded(tmp_path):
    src = rb.build_medicat(tmp_path / "raw")
    a = prepare_dataset("medicat", src, tmp_path / "a", eval_size=2)
    prepare_dataset("medicat", src, tmp_path / "b", eval_size=2)
    ids = lambda out, s: read_table(out / f"{s}.arrow").column("image_id").to_pylist()
    assert [ids(tmp_path / "a", s) for s in ("train", "val", "test")] == [
        ids(tmp_path / "b", s) for s in ("train", "val", "test")
    ]
    all_ids = {i for s in ("train", "val", "test") for i in ids(tmp_path / "a", s)}
    assert "figures/hash3_fig3.jpg" not in all_ids  # not radiology
    assert "figures/hash5_fig5.jpg" not in all_ids  # no caption, no references
    assert sum(a["splits"][s]["images"] for s in ("train", "val", "test")) == 6


def test_vqa_med_2019_skips_abnormality_and_numbers_questions(tmp_path):
    summary = prepare_dataset("vqa-med-2019", rb.build_medvqa_2019(tmp_path / "raw"), tmp_path / "out")
    assert counts(summary) == [4, 4, 4]
    assert read_answers(tmp_path / "out") == [
        "ct w contrast iv",
        "mr flair",
        "lung mediastinum pleura",
        "axial",
    ]
    val = read_table(tmp_path / "out" / "val.arrow").to_pylist()
    assert [r["question_id"] for r in val] == [4, 5, 6, 7]  # running index continued across splits
    assert {r["answer_type"] for r in val} == {1}


def test_melinda_labels_are_sorted_indices(tmp_path):
    src = rb.build_melinda(tmp_path / "raw")
    summary = prepare_dataset("melinda", src, tmp_path / "out")
    assert summary["num_classes"] == 3 and read_labels(tmp_path / "out") == ["bio", "exp", "mol"]
    rows = read_table(tmp_path / "out" / "train.arrow").to_pylist()
    assert [r["label"] for r in rows] == [1, 2, 0]
    assert rows[0]["text"] == "Panel 0 shows, the staining result."
    prepare_dataset("melinda", src, tmp_path / "i", label_column="i_meth")
    assert read_labels(tmp_path / "i") == ["Microscopy", "Western blot"]


def test_roco_retrieval_pools_are_capped_and_seeded(tmp_path):
    src = rb.build_roco(tmp_path / "raw", per_split=6)
    summary = prepare_dataset("roco-retrieval", src, tmp_path / "a", eval_size=4)
    prepare_dataset("roco-retrieval", src, tmp_path / "b", eval_size=4)
    assert counts(summary) == [6, 4, 4] and summary["task"] == "irtr"
    assert read_table(tmp_path / "a" / "val.arrow").equals(read_table(tmp_path / "b" / "val.arrow"))
    clean = prepare_dataset("roco-retrieval", src, tmp_path / "c", protocol="clean", eval_size=4)
    assert counts(clean) == [6, 4, 4]


def test_custom_jsonl_vqa(tmp_path):
    summary = prepare_dataset("custom", rb.build_custom_vqa(tmp_path / "raw"), tmp_path / "out")
    assert summary["task"] == "vqa" and counts(summary) == [2, 1, 1] and summary["num_answers"] == 2


def test_custom_csv_captions_for_retrieval(tmp_path):
    rb.write_jpeg(tmp_path / "a.jpg", 1)
    rb.write_jpeg(tmp_path / "b.jpg", 2)
    (tmp_path / "train.csv").write_text("image,caption\na.jpg,a small chest film\nb.jpg,an axial head CT\n")
    summary = prepare_dataset("custom", tmp_path, tmp_path / "out", task="irtr")
    assert summary["task"] == "irtr" and counts(summary) == [2, 0, 0]


def _write_ipc(path: Path, table: pa.Table) -> None:
    """An Arrow IPC file the way upstream's make_arrow writes it (RecordBatchFileWriter)."""
    with pa.OSFile(str(path), "wb") as sink, pa.RecordBatchFileWriter(sink, table.schema) as writer:
        writer.write_table(table)


def _write_upstream_vqa_arrows(folder: Path) -> None:
    folder.mkdir(parents=True)
    image = (rb.write_jpeg(folder / "img.jpg", 3)).read_bytes()
    for split in ("train", "val", "test"):
        table = pa.table(
            {
                "image": [image],
                "questions": [["is it a ct?", "where is it?"]],
                "answers": [[["yes"], ["left lung"]]],
                "answer_labels": [[[0], [1]]],
                "answer_scores": [[[1.0], [1.0]]],
                "image_id": [f"images/{split}.jpg"],
                "question_id": [[1, 2]],
                "answer_type": [[0, 1]],
                "split": [split],
            }
        )
        _write_ipc(folder / f"vqa_vqa_rad_{split}.arrow", table)


def test_from_upstream_arrow(tmp_path):
    _write_upstream_vqa_arrows(tmp_path / "arrows")
    summary = prepare_dataset("vqa-rad", tmp_path / "arrows", tmp_path / "out", from_arrow=True)
    assert counts(summary) == [2, 2, 2] and read_answers(tmp_path / "out") == ["yes", "left lung"]
    rows = read_table(tmp_path / "out" / "train.arrow").to_pylist()
    assert [(r["label"], r["answer_type"]) for r in rows] == [(0, 0), (1, 1)]
    with pytest.raises(M3AEError, match="paper"):
        prepare_dataset("vqa-rad", tmp_path / "arrows", tmp_path / "x", from_arrow=True, protocol="clean")


# -- bad input ------------------------------------------------------------------------------------------
def _vqa_rad_copy(tmp_path: Path, records: list[dict], images: dict[str, bytes | None]) -> Path:
    src = tmp_path / "raw"
    (src / "images").mkdir(parents=True)
    for name, data in images.items():
        if data is not None:
            (src / "images" / name).write_bytes(data)
    good = {
        "image_name": "ok.jpg",
        "qid": 1,
        "question": "Is this a CT scan?",
        "answer": "Yes",
        "answer_type": "CLOSED",
    }
    (src / "trainset.json").write_text(
        json.dumps([{**good, "qid": 100 + i, **r} for i, r in enumerate(records)])
    )
    (src / "testset.json").write_text(json.dumps([good]))
    return src


@pytest.fixture()
def ok_jpeg(tmp_path):
    return rb.write_jpeg(tmp_path / "ok.jpg", 0).read_bytes()


BAD_CASES = [
    ({"image_name": "missing.jpg"}, "missing_image", "missing.jpg: image file not found"),
    ({"image_name": "empty.jpg"}, "empty_image", "empty.jpg: empty image file"),
    ({"image_name": "trunc.jpg"}, "bad_image", "trunc.jpg: cannot decode"),
    ({"image_name": "junk.jpg"}, "bad_image", "junk.jpg: cannot decode"),
    ({"question": "  "}, "empty_text", "trainset.json record 1: empty question"),
    ({"question": "Size?"}, "one_word_text", "trainset.json record 1: question has a single word"),
    ({"answer_type": "maybe"}, "bad_answer_type", "record 1: answer_type 'maybe'"),
    ({"qid": 100}, "duplicate_id", "record 1: duplicate question_id 100"),
    ({"image_name": None, "qid": 7, "question": None}, "malformed_record", "record 1: malformed record"),
]


@pytest.mark.parametrize(
    ("change", "reason", "message"), BAD_CASES, ids=[c[1] + str(i) for i, c in enumerate(BAD_CASES)]
)
def test_bad_records_fail_with_location_or_skip_with_count(tmp_path, ok_jpeg, change, reason, message):
    change = {k: v for k, v in change.items() if v is not None} if reason != "malformed_record" else None
    record = change if change is not None else {"drop": True}
    images = {
        "ok.jpg": ok_jpeg,
        "empty.jpg": b"",
        "trunc.jpg": ok_jpeg[: len(ok_jpeg) // 2],
        "junk.jpg": b"x" * 300,
    }
    src = _vqa_rad_copy(tmp_path, [{}, record], images)
    if change is None:  # a record without the required keys
        data = json.loads((src / "trainset.json").read_text())
        del data[1]["question"]
        (src / "trainset.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message.replace("(", r"\(")) as err:
        prepare_dataset("vqa-rad", src, out)
    assert reason in str(err.value)
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))  # nothing half-written
    summary = prepare_dataset("vqa-rad", src, out, on_error="skip")
    assert (
        summary["splits"]["train"]["skipped"] == {reason: 1} and summary["splits"]["train"]["examples"] == 1
    )


def test_closed_with_trailing_space_is_valid(tmp_path, ok_jpeg):
    src = _vqa_rad_copy(tmp_path, [{"answer_type": "CLOSED "}, {"answer_type": " open"}], {"ok.jpg": ok_jpeg})
    rows = read_table(
        Path(prepare_dataset("vqa-rad", src, tmp_path / "o") and tmp_path / "o") / "train.arrow"
    )
    assert rows.column("answer_type").to_pylist() == [0, 1]


def test_huge_image_is_refused(tmp_path, ok_jpeg, monkeypatch):
    from m3ae.data import images

    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    src = _vqa_rad_copy(tmp_path, [{}], {"ok.jpg": ok_jpeg})
    with pytest.raises(DataError, match="ok.jpg: 40x32 pixels exceeds"):
        prepare_dataset("vqa-rad", src, tmp_path / "out")


def test_unsupported_mode_is_counted(tmp_path, ok_jpeg, monkeypatch):
    from m3ae.data import images

    monkeypatch.setattr(images, "DIRECT_MODES", set())
    monkeypatch.setattr(images, "CONVERTIBLE_MODES", set())
    src = _vqa_rad_copy(tmp_path, [{}], {"ok.jpg": ok_jpeg})
    summary = prepare_dataset("vqa-rad", src, tmp_path / "out", on_error="skip")
    assert summary["splits"]["train"]["skipped"] == {"unsupported_mode": 1}


def test_malformed_json_file_names_the_line(tmp_path):
    (tmp_path / "raw" / "images").mkdir(parents=True)
    (tmp_path / "raw" / "trainset.json").write_text('[\n{"qid": 1,\n oops}\n]')
    with pytest.raises(DataError, match=r"trainset.json:3: malformed JSON"):
        prepare_dataset("vqa-rad", tmp_path / "raw", tmp_path / "out")


def test_malformed_lines_in_csv_and_jsonl(tmp_path):
    src = rb.build_medvqa_2019(tmp_path / "vqamed")
    (src / "train" / "QA" / "Plane.csv").write_text("synpic03|only two fields\n")
    with pytest.raises(DataError, match=r"Plane.csv:1: expected image_id\|question\|answer"):
        prepare_dataset("vqa-med-2019", src, tmp_path / "o1")
    summary = prepare_dataset("vqa-med-2019", src, tmp_path / "o2", on_error="skip")
    assert summary["splits"]["train"]["skipped"] == {"malformed_line": 1}
    med = rb.build_medicat(tmp_path / "medicat")
    path = med / "release" / "s2_full_figures_oa_nonroco_combined_medical_top4_public.jsonl"
    path.write_text(path.read_text() + "\n{not json")
    with pytest.raises(DataError, match=r"public.jsonl:9: malformed JSON"):
        prepare_dataset("medicat", med, tmp_path / "o3", eval_size=2)
    mel = rb.build_melinda(tmp_path / "melinda")
    (mel / "dev.csv").write_text(rb.MELINDA_HEADER + "\nfig_1_0.jpg,too,few\n")
    with pytest.raises(DataError, match=r"dev.csv:2: wrong number of fields"):
        prepare_dataset("melinda", mel, tmp_path / "o4")


def test_duplicate_roco_id_and_one_word_caption(tmp_path):
    src = rb.build_roco(tmp_path / "raw", with_references=False)
    captions = src / "val" / "radiology" / "captions.txt"
    lines = captions.read_text().splitlines()
    captions.write_text("\n".join(lines + [lines[0], "ROCO_19999\tX-ray"]) + "\n")
    with pytest.raises(DataError, match=r"captions.txt:5: duplicate image id 'ROCO_10000'"):
        prepare_dataset("roco", src, tmp_path / "o")
    summary = prepare_dataset("roco", src, tmp_path / "o", on_error="skip")
    assert summary["splits"]["val"]["skipped"] == {"duplicate_id": 1, "one_word_text": 1}


def test_existing_output_needs_overwrite(tmp_path, ok_jpeg):
    src = _vqa_rad_copy(tmp_path, [{}], {"ok.jpg": ok_jpeg})
    out = tmp_path / "out"
    prepare_dataset("vqa-rad", src, out)
    with pytest.raises(M3AEError, match="--overwrite"):
        prepare_dataset("vqa-rad", src, out)
    assert main(["prepare", "vqa-rad", "--src", str(src), "--out", str(out)]) == 2
    prepare_dataset("vqa-rad", src, out, overwrite=True, protocol="clean")
    assert read_summary(out)["protocol"] == "clean"


def test_custom_cls_with_a_dicom_image_is_preresized(tmp_path):
    import numpy as np

    (tmp_path / "scan.dcm").write_bytes(
        rb.dicom_bytes(np.tile(np.arange(0, 640, 10, dtype=np.uint16), (48, 1)))
    )
    rb.write_jpeg(tmp_path / "b.jpg", 2)
    (tmp_path / "train.csv").write_text(
        'image,text,label\nscan.dcm,"a ct slice of the abdomen",ct\nb.jpg,"a chest x-ray film",xray\n'
    )
    (tmp_path / "test.csv").write_text('image,text,label\nb.jpg,"an ultrasound of the liver",us\n')
    summary = prepare_dataset(
        "custom", tmp_path, tmp_path / "out", protocol="clean", image_size=32, image_format="png"
    )
    assert summary["task"] == "cls" and read_labels(tmp_path / "out") == ["ct", "xray"]
    assert summary["splits"]["test"]["outside_set"] == 1
    store = ImageStore(tmp_path / "out")
    assert store.get_bytes("scan.dcm")[:4] == b"\x89PNG"  # the DICOM was windowed and re-encoded


def test_from_upstream_caption_arrow(tmp_path):
    image = rb.write_jpeg(tmp_path / "img.jpg", 4).read_bytes()
    (tmp_path / "arrows").mkdir()
    for split in ("train", "val", "test"):
        table = pa.table(
            {
                "image": [image],
                "caption": [["first caption of it", "second caption here"]],
                "image_id": [f"data/{split}/x.jpg"],
                "split": [split],
            }
        )
        _write_ipc(tmp_path / "arrows" / f"irtr_roco_{split}.arrow", table)
    # --src may also name one of the files: its folder is used and --from-arrow implied
    summary = prepare_dataset("roco-retrieval", tmp_path / "arrows" / "irtr_roco_val.arrow", tmp_path / "out")
    assert counts(summary) == [2, 2, 2] and summary["task"] == "irtr" and summary["from_arrow"]
