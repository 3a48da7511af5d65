"""Bad input through the real CLI: every case gets exit code 2 (or a documented success), one
line on stderr that names the file or option, no traceback, and nothing the user owned removed.

The table `CASES` holds one row per case; each row's ``build`` makes the inputs in a fresh
folder and returns the argv plus the paths that must survive. A few cases need a second live
process (locks) or a finished training run (resume) and have their own tests below the table.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m3ae.cli import main

from helpers.raw_builders import dicom_bytes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = str(REPO / "configs/finetune/vqa_rad_tiny.yaml")
# the recipes' batch sizes are for real data; the test folders hold a few examples
QUIET = ["--train.progress", "false", "--train.tensorboard", "false", "--train.batch_size", "4",
        "--train.per_device_batch_size", "2", "--train.log_every", "1"]
ANSWERS = ["yes", "no", "left", "right"]


# ------------------------------------------------------------------------------ tiny inputs
def write_png(path: Path, size=(40, 40), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).save(path, format="PNG")
    return path


def write_csv(path: Path, rows: list[dict], bom: bool = False) -> Path:
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def vqa_rows(n: int = 4, **override) -> list[dict]:
    return [{"image": f"img{i}.png", "question": f"is there a mass in part {i}?", "answer": ANSWERS[i % 4],
             "answer_type": "CLOSED", "question_id": i} | override for i in range(n)]


def raw_vqa(root: Path, rows_by_split: dict[str, list[dict]] | None = None, bom: bool = False) -> Path:
    """A custom VQA release: train/val/test CSVs and their images, in ``root/raw``."""
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        write_png(raw / f"img{i}.png", seed=i)
    for split, rows in (rows_by_split or {s: vqa_rows() for s in ("train", "val", "test")}).items():
        write_csv(raw / f"{split}.csv", rows, bom=bom)
    return raw


def prepare_argv(raw: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "custom", "--src", str(raw), "--out", str(out), *extra]


def user_folder(path: Path) -> Path:
    """A folder of the user's own files (no m3ae marker)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.txt").write_text("my thesis\n")
    return path / "notes.txt"


@pytest.fixture(scope="module")
def vqa_model(tmp_path_factory) -> Path:
    """A saved m3ae-tiny VQA model with an answer list and the packaged tokenizer."""
    from m3ae.data import load_tokenizer
    from m3ae.models import M3AE, ModelConfig

    torch.manual_seed(0)
    model = M3AE(ModelConfig.from_name("m3ae-tiny").with_heads(["vqa"], num_answers=len(ANSWERS))).eval()
    out = tmp_path_factory.mktemp("model") / "vqa"
    model.save_pretrained(out, tokenizer=load_tokenizer(),
                          extra={"answers": ANSWERS, "preprocessing": {"image_size": 32, "max_text_len": 16}})
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared custom VQA folder (4 train / 4 val / 4 test questions)."""
    root = tmp_path_factory.mktemp("prepared")
    assert main(prepare_argv(raw_vqa(root), root / "data")) == 0
    return root / "data"


def copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def predict_argv(model: Path, image: Path, question: str = "is there a mass?", *extra: str) -> list[str]:
    return ["predict", "--model", str(model), "--image", str(image), "--question", question, *extra]


# ----------------------------------------------------------------------------- the table
@dataclass
class Case:
    """One bad input: how to build it, and what the CLI must answer."""

    name: str
    build: Callable[[Path, dict], tuple[list[str], list[Path]]]
    """(tmp folder, fixtures) -> (argv, paths that must still exist afterwards)."""
    code: int = 2
    messages: tuple[str, ...] = ()
    """Substrings of stderr (case-insensitive): the file or option named, and the reason."""
    check: Callable[[Path], None] | None = None
    """Extra assertions on the tmp folder after the run (e.g. what summary.json counted)."""
    needs: tuple[str, ...] = field(default_factory=tuple)
    """Fixtures the build uses ("model", "prepared")."""


def _overwrite_user_folder(tmp, fx):
    out = tmp / "mine"
    keep = user_folder(out)
    return prepare_argv(raw_vqa(tmp), out, "--overwrite"), [keep]


def _overwrite_folder_holding_src(tmp, fx):
    raw = raw_vqa(tmp / "project")
    (tmp / "project" / ".m3ae-owned").write_text("")  # even a folder we wrote: it holds --src
    return prepare_argv(raw, tmp / "project", "--overwrite"), [raw / "train.csv", raw / "img0.png"]


def _overwrite_cwd(tmp, fx):
    raw = raw_vqa(tmp)
    (tmp / ".m3ae-owned").write_text("")
    os.chdir(tmp)
    return prepare_argv(raw, Path("."), "--overwrite"), [raw / "train.csv"]


def _overwrite_our_folder(tmp, fx):
    raw = raw_vqa(tmp)
    assert main(prepare_argv(raw, tmp / "data")) == 0
    return prepare_argv(raw, tmp / "data", "--overwrite"), [raw / "train.csv", tmp / "data" / "summary.json"]


def _stale_temp(tmp, fx):
    stale = tmp / ".data.tmp-999999999"  # a PID that cannot be alive: a killed run's leftovers
    stale.mkdir()
    (stale / "images-00000.arrow").write_bytes(b"partial")
    return prepare_argv(raw_vqa(tmp), tmp / "data"), []


def _thin_png(tmp, fx):
    raw = raw_vqa(tmp)
    Image.new("L", (1, 2_000_000)).save(raw / "img1.png")  # a few KB, passes the pixel guard
    return prepare_argv(raw, tmp / "data", "--image-size", "32"), [raw / "img1.png"]


def _bom_csv(tmp, fx):
    return prepare_argv(raw_vqa(tmp, bom=True), tmp / "data"), []


def _bom_jsonl(tmp, fx):
    raw = raw_vqa(tmp, {"val": vqa_rows(), "test": vqa_rows()})
    lines = "\n".join(json.dumps(r) for r in vqa_rows())
    (raw / "train.jsonl").write_text("\ufeff" + lines + "\n", encoding="utf-8")
    return prepare_argv(raw, tmp / "data"), []


def _string_ids(tmp, fx):
    rows = {s: [r | {"question_id": f"q{s}_{i}"} for i, r in enumerate(vqa_rows())] for s in ("train", "val", "test")}
    return prepare_argv(raw_vqa(tmp, rows), tmp / "data", "--on-error", "skip"), []


def _empty_answer(tmp, fx):
    rows = vqa_rows()
    rows[2]["answer"] = "  "
    return prepare_argv(raw_vqa(tmp, {"train": rows, "val": vqa_rows(), "test": vqa_rows()}), tmp / "data"), []


def _outside_src(tmp, fx):
    write_png(tmp / "secret.png")
    rows = vqa_rows()
    rows[0]["image"] = "../secret.png"
    return prepare_argv(raw_vqa(tmp, {"train": rows, "val": vqa_rows(), "test": vqa_rows()}), tmp / "data"), []


def _outside_src_allowed(tmp, fx):
    argv, keep = _outside_src(tmp, fx)
    return [*argv, "--allow-outside-src"], keep


def _jpeg_named_dcm(tmp, fx):
    raw = raw_vqa(tmp)
    Image.open(raw / "img0.png").convert("RGB").save(raw / "img0.dcm", format="JPEG")
    for split in ("train", "val", "test"):
        rows = vqa_rows()
        rows[0]["image"] = "img0.dcm"
        write_csv(raw / f"{split}.csv", rows)
    return prepare_argv(raw, tmp / "data"), []


def _long_question(tmp, fx):
    rows = vqa_rows()
    rows[1]["question"] = "is there " + "a very large mass " * 20 + "here?"
    return prepare_argv(raw_vqa(tmp, {"train": rows, "val": vqa_rows(), "test": vqa_rows()}), tmp / "data"), []


def _malformed_csv_line(tmp, fx):
    raw = raw_vqa(tmp)
    with open(raw / "train.csv", "a") as fh:
        fh.write("img0.png,only two\n")
    return prepare_argv(raw, tmp / "data"), []


def _missing_src(tmp, fx):
    return prepare_argv(tmp / "nope", tmp / "data"), []


def _finetune(fx, tmp, *overrides):
    return ["finetune", "--config", TINY_RECIPE, "--data", str(fx["prepared"]), "--out", str(tmp / "run"),
            "--train.max_steps", "2", "--train.max_epochs", "null", *QUIET, *overrides]


def _override(*pair):
    return lambda tmp, fx: (_finetune(fx, tmp, *pair), [])


def _model_file(mutate: Callable[[Path], None]):
    def build(tmp, fx):
        model = copy_model(fx["model"], tmp / "model")
        mutate(model)
        image = write_png(tmp / "x.png")
        return predict_argv(model, image), [model / "model.safetensors"]
    return build


def _truncate(model: Path) -> None:
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])


def _random_bytes(model: Path) -> None:
    (model / "model.safetensors").write_bytes(os.urandom(4096))


def _flip_bytes(model: Path) -> None:
    path = model / "model.safetensors"
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little") + 8
    data[header + 4 : header + 4 + 64] = b"\xff" * 64  # NaN bit patterns in the first tensor
    path.write_bytes(bytes(data))


def _nan_without_checksum(model: Path) -> None:
    """A folder of an m3ae without checksums whose weights hold NaN: the finite check catches it."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(model / "model.safetensors"))
    key = next(iter(state))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(model / "model.safetensors"))
    meta = json.loads((model / "config.json").read_text())
    meta.pop("weights_sha256")
    (model / "config.json").write_text(json.dumps(meta))


def _bad_config_type(model: Path) -> None:
    meta = json.loads((model / "config.json").read_text())
    meta["model"]["fusion"]["layers"] = "two"
    (model / "config.json").write_text(json.dumps(meta))


def _no_answers(model: Path) -> None:
    meta = json.loads((model / "config.json").read_text())
    meta.pop("answers")
    (model / "config.json").write_text(json.dumps(meta))


def _predict_multiframe(tmp, fx):
    frames = np.stack([np.full((32, 32), 100 * (k + 1)) for k in range(3)]).astype(np.uint16)
    (tmp / "cine.dcm").write_bytes(dicom_bytes(frames))
    return predict_argv(fx["model"], tmp / "cine.dcm", "is there a mass?", "--frame", "7"), []


def _predict_cuda(tmp, fx):
    return predict_argv(fx["model"], write_png(tmp / "x.png"), "is there a mass?", "--device", "cuda"), []


CASES = [
    # -- prepare: never lose data
    Case("overwrite a folder of user files", _overwrite_user_folder, messages=("mine", "not written by m3ae")),
    Case("overwrite the folder that holds --src", _overwrite_folder_holding_src, messages=("holds --src",)),
    Case("--out . with --overwrite", _overwrite_cwd, messages=("working directory",)),
    Case("overwrite a folder m3ae prepared", _overwrite_our_folder, code=0),
    Case("a killed run's temp folder is removed", _stale_temp, code=0,
         check=lambda tmp: _assert_absent(tmp / ".data.tmp-999999999")),
    # -- prepare: images
    Case("1 x 2,000,000 PNG with --image-size", _thin_png, messages=("img1.png", "aspect ratio")),
    Case("a JPEG named .dcm is read as a JPEG", _jpeg_named_dcm, code=0),
    # -- prepare: data files
    Case("UTF-8 BOM CSV (Excel)", _bom_csv, code=0, check=lambda tmp: _assert_examples(tmp / "data", "train", 4)),
    Case("UTF-8 BOM JSONL", _bom_jsonl, code=0, check=lambda tmp: _assert_examples(tmp / "data", "train", 4)),
    Case("string question ids with --on-error skip", _string_ids, code=0, check=lambda tmp: _assert_string_ids(tmp)),
    Case("an empty answer", _empty_answer, messages=("train.csv:4", "empty answer")),
    Case("an image path outside --src", _outside_src, messages=("train.csv:2", "--allow-outside-src")),
    Case("an outside path with --allow-outside-src", _outside_src_allowed, code=0),
    Case("a question over max_text_len is counted", _long_question, code=0,
         check=lambda tmp: _assert_long(tmp / "data")),
    Case("a malformed CSV line", _malformed_csv_line, messages=("train.csv:6", "wrong number of fields")),
    Case("a missing --src", _missing_src, messages=("--src", "does not exist")),
    # -- finetune: options checked before any work
    Case("--optim.lr -0.001", _override("--optim.lr", "-0.001"), messages=("optim.lr",), needs=("prepared",)),
    Case("--optim.lr nan", _override("--optim.lr", "nan"), messages=("optim.lr", "finite"), needs=("prepared",)),
    Case("--train.checkpoint_every 0", _override("--train.checkpoint_every", "0"),
         messages=("train.checkpoint_every",), needs=("prepared",)),
    Case("--eval.batch_size 0", _override("--eval.batch_size", "0"), messages=("eval.batch_size",),
         needs=("prepared",)),
    Case("--train.max_steps 0 without a pretrained model", _override("--train.max_steps", "0"),
         messages=("train.max_steps",), needs=("prepared",), check=lambda tmp: _assert_absent(tmp / "run" / "best")),
    Case("a typo in --eval.val_split", _override("--eval.val_split", "vall"), messages=("'vall'", "val_split"),
         needs=("prepared",), check=lambda tmp: _assert_absent(tmp / "run" / "best")),
    Case("an unknown override key", _override("--optim.lrr", "1"), messages=("lrr",), needs=("prepared",)),
    Case("--train.device cuda without CUDA", _override("--train.device", "cuda"), messages=("train.device", "cuda"),
         needs=("prepared",)),
    # -- model folders
    Case("truncated model.safetensors", _model_file(_truncate), messages=("model.safetensors",), needs=("model",)),
    Case("random bytes as model.safetensors", _model_file(_random_bytes), messages=("model.safetensors",),
         needs=("model",)),
    Case("flipped bytes after the header", _model_file(_flip_bytes), messages=("model.safetensors", "sha-256"),
         needs=("model",)),
    Case("NaN weights in a folder without checksum", _model_file(_nan_without_checksum),
         messages=("model.safetensors", "nan"), needs=("model",)),
    Case('"layers": "two" in config.json', _model_file(_bad_config_type), messages=("config.json", "invalid model"),
         needs=("model",)),
    Case("a VQA model without an answer list", _model_file(_no_answers), messages=("answers", "m3ae convert"),
         needs=("model",)),
    # -- predict
    Case("--frame beyond a multi-frame DICOM", _predict_multiframe, messages=("cine.dcm", "frame 7"), needs=("model",)),
    Case("predict --device cuda without CUDA", _predict_cuda, messages=("--device", "cuda"), needs=("model",)),
]


def _assert_absent(path: Path) -> None:
    assert not path.exists(), path


def _assert_examples(data: Path, split: str, n: int) -> None:
    assert json.loads((data / "summary.json").read_text())["splits"][split]["examples"] == n


def _assert_string_ids(tmp: Path) -> None:
    summary = json.loads((tmp / "data" / "summary.json").read_text())
    assert summary["splits"]["train"]["examples"] == 4 and not summary["splits"]["train"]["skipped"]
    ids = json.loads((tmp / "data" / "question_ids.json").read_text())
    assert "qtrain_0" in ids.values() and "qtest_3" in ids.values()


def _assert_long(data: Path) -> None:
    summary = json.loads((data / "summary.json").read_text())
    assert summary["splits"]["train"]["over_max_text_len"] == 1
    assert summary["splits"]["val"]["over_max_text_len"] == 0


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, capsys, monkeypatch, request):
    if "cuda" in case.name and torch.cuda.is_available():
        pytest.skip("checks the error when CUDA is absent")
    monkeypatch.chdir(tmp_path)  # a case may chdir; monkeypatch restores the directory
    fixtures = {"model": request.getfixturevalue("vqa_model")} if "model" in case.needs else {}
    if "prepared" in case.needs:
        fixtures["prepared"] = request.getfixturevalue("prepared")
    argv, keep = case.build(tmp_path, fixtures)
    capsys.readouterr()
    code = _run(argv)
    err = capsys.readouterr().err
    assert code == case.code, err
    assert "Traceback" not in err
    if case.code == 2:
        errors = [line for line in err.splitlines() if ": error: " in line]
        assert len(errors) == 1, err  # one line, however long the underlying message
        assert errors[0].startswith(f"m3ae {argv[0]}: error: ")
        for message in case.messages:
            assert message.lower() in errors[0].lower(), (message, errors[0])
    for path in keep:
        assert path.exists(), f"{path} was removed"
    if case.check is not None:
        case.check(tmp_path)


def _run(argv: list[str]) -> int:
    """main() as the console script runs it: argparse's own errors exit with code 2."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


# ------------------------------------------------------------------- cases beyond the table
def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    argv = prepare_argv(tmp_path / "nope", tmp_path / "data")
    monkeypatch.setenv("M3AE_DEBUG", "1")
    assert main(argv) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("M3AE_DEBUG")
    assert main([*argv, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def _hold_lock(lock_file: Path, folder: Path) -> subprocess.Popen:
    """A second, live process that holds ``folder``'s lock until it is killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from m3ae.guards import folder_lock
        with folder_lock({str(lock_file)!r}, {str(folder)!r}):
            print("locked", flush=True)
            time.sleep(120)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_prepare_into_one_out_is_refused_with_the_holders_pid(tmp_path, capsys):
    from m3ae.guards import sibling_lock_file

    out = tmp_path / "data"
    holder = _hold_lock(sibling_lock_file(out), out)
    try:
        assert main(prepare_argv(raw_vqa(tmp_path), out)) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert f"PID {holder.pid}" in err and str(out) in err
    assert main(prepare_argv(raw_vqa(tmp_path), out)) == 0  # the lock died with its process


def test_a_second_finetune_into_one_run_is_refused(prepared, tmp_path, capsys):
    from m3ae.guards import LOCK_NAME

    run = tmp_path / "run"
    holder = _hold_lock(run / LOCK_NAME, run)
    try:
        argv = _finetune({"prepared": prepared}, tmp_path)
        assert main(argv) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert f"PID {holder.pid}" in err and "Traceback" not in err
    assert not (run / "log.jsonl").exists()  # the refused run wrote nothing


@pytest.fixture(scope="module")
def finished_run(prepared, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("finished")
    assert main(_finetune({"prepared": prepared}, tmp, "--train.checkpoint_every", "1")) == 0
    return tmp / "run"


def test_resume_with_changed_hyperparameters_is_refused(prepared, finished_run, tmp_path, capsys):
    import shutil

    run = shutil.copytree(finished_run, tmp_path / "run")
    config = (run / "config.yaml").read_text()
    argv = _finetune({"prepared": prepared}, tmp_path, "--optim.lr", "0.5", "--train.seed", "7", "--resume")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and "train.seed" in err and "Traceback" not in err
    assert (run / "config.yaml").read_text() == config  # the record of the run still tells the truth


def test_resuming_a_finished_run_changes_nothing(prepared, finished_run, tmp_path, capsys):
    import shutil

    run = shutil.copytree(finished_run, tmp_path / "run")
    log = (run / "log.jsonl").read_text()
    assert main(_finetune({"prepared": prepared}, tmp_path, "--resume", "--train.log_every", "5")) == 0
    assert (run / "log.jsonl").read_text() == log  # no duplicate validation lines
    assert "complete" in capsys.readouterr().err


def test_predict_json_is_valid_and_truncation_is_said(vqa_model, tmp_path, capsys):
    image = write_png(tmp_path / "x.png")
    long = "is there " + "a very large mass " * 10 + "here?"
    assert main(predict_argv(vqa_model, image, long, "--json")) == 0
    captured = capsys.readouterr()
    answers = json.loads(captured.out)["answers"]  # strict JSON: NaN would not parse as a number here
    assert all(0.0 <= a["probability"] <= 1.0 for a in answers)
    assert "only the first 16" in captured.err


def test_predict_takes_the_middle_frame_of_a_multiframe_dicom_and_says_so(vqa_model, tmp_path, capsys):
    from m3ae.data import images

    frames = np.stack([np.full((32, 32), 10), np.tile(np.arange(32) * 10, (32, 1)),
                       np.full((32, 32), 30)]).astype(np.uint16)
    (tmp_path / "cine.dcm").write_bytes(dicom_bytes(frames))
    images._frame_note_shown = False
    assert main(predict_argv(vqa_model, tmp_path / "cine.dcm", "is there a mass?", "--json")) == 0
    assert "middle frame 1" in capsys.readouterr().err
    middle = np.asarray(images.read_image_file(tmp_path / "cine.dcm"))
    assert middle[0, 0, 0] < middle[0, -1, 0]  # frame 1 is the ramp, not a flat frame


def test_convert_answers_make_an_official_vqa_checkpoint_usable_by_predict(tmp_path, capsys):
    from helpers.upstream import tiny, write_upstream_ckpt

    ckpt = write_upstream_ckpt(tmp_path / "vqa.ckpt", tiny(("vqa",), num_answers=len(ANSWERS)))
    image = write_png(tmp_path / "x.png")
    assert main(["convert", str(ckpt), str(tmp_path / "plain")]) == 0
    assert "--answers" in capsys.readouterr().out  # says how to add the list
    assert main(predict_argv(tmp_path / "plain", image)) == 2
    assert "m3ae convert" in capsys.readouterr().err
    (tmp_path / "answers.json").write_text(json.dumps({a: i for i, a in enumerate(ANSWERS)}))
    assert main(["convert", str(ckpt), str(tmp_path / "named"), "--answers", str(tmp_path / "answers.json")]) == 0
    capsys.readouterr()
    assert main(predict_argv(tmp_path / "named", image, "is there a mass?", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["answers"][0]["answer"] in ANSWERS
    (tmp_path / "short.json").write_text(json.dumps(ANSWERS[:2]))
    assert main(["convert", str(ckpt), str(tmp_path / "bad"), "--answers", str(tmp_path / "short.json")]) == 2
    assert "2 answers" in capsys.readouterr().err


def test_convert_refuses_nan_weights(tmp_path, capsys):
    from helpers.upstream import tiny, write_upstream_ckpt

    model = tiny(("vqa",), num_answers=len(ANSWERS))
    with torch.no_grad():
        next(iter(model.parameters())).fill_(float("nan"))
    ckpt = write_upstream_ckpt(tmp_path / "nan.ckpt", model)
    assert main(["convert", str(ckpt), str(tmp_path / "out")]) == 2
    assert "NaN" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_from_pretrained_verify_false_skips_the_checksum(vqa_model, tmp_path):
    from m3ae.errors import CheckpointError
    from m3ae.models import M3AE

    model = copy_model(vqa_model, tmp_path / "m")
    meta = json.loads((model / "config.json").read_text())
    meta["weights_sha256"] = "0" * 64
    (model / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="SHA-256"):
        M3AE.from_pretrained(model)
    assert M3AE.from_pretrained(model, verify=False) is not None
