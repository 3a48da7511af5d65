"""Hub conventions: model folders are Hub repositories, Hub ids resolve through a local cache
laid out as huggingface_hub lays it out (made here), nothing downloads, `m3ae push` sends the
folder's model files and nothing else."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from m3ae.cli import main
from m3ae.errors import M3AEError
from m3ae.reports.model_card import write_model_card
from m3ae.models import M3AE, ModelConfig

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _vqa_folder(tmp: Path) -> tuple[Path, M3AE]:
    from m3ae.data import load_tokenizer

    torch.manual_seed(0)
    model = M3AE(ModelConfig.from_name("m3ae-tiny").with_heads(["vqa"], num_answers=3)).eval()
    folder = tmp / "model"
    model.save_pretrained(folder, tokenizer=load_tokenizer(), extra={"answers": ["yes", "no", "left"]})
    write_model_card(folder, {"name": "tiny vqa", "task": "vqa", "base_model": "org/m3ae-base",
                              "data": {"dataset": "vqa-rad", "protocol": "clean"},
                              "metrics": {"overall": 30.2, "open": 5.6, "closed": 46.3}, "metrics_split": "test"})
    return folder, model


def _hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """models--org--name/{refs/main, blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in folder.iterdir():
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", blob.name))
    return snapshot


@pytest.fixture()
def cached(tmp_path, monkeypatch):
    folder, model = _vqa_folder(tmp_path)
    cache = tmp_path / "hub"
    snapshot = _hub_cache(cache, "m3ae-org/tiny-vqa", folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return folder, model, snapshot


def test_saved_folder_is_a_hub_model_repository(tmp_path):
    from safetensors import safe_open

    folder, _ = _vqa_folder(tmp_path)
    for name in ("config.json", "model.safetensors", "README.md", "tokenizer_config.json"):
        assert (folder / name).is_file(), name
    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        assert fh.metadata() == {"format": "pt"}
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "m3ae" and meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "visual-question-answering"
    assert meta["datasets"] == ["vqa-rad"] and meta["base_model"] == "org/m3ae-base"
    assert "medical" in meta["tags"] and meta["metrics"] == ["closed", "open", "overall"]
    results = meta["model-index"][0]["results"][0]
    assert results["dataset"]["split"] == "test"
    assert {m["name"]: m["value"] for m in results["metrics"]} == {"overall": 30.2, "open": 5.6, "closed": 46.3}


def test_local_base_model_is_not_written_as_a_hub_id(tmp_path):
    from m3ae.reports.model_card import front_matter

    (tmp_path / "runs" / "pt").mkdir(parents=True)
    assert "base_model" not in front_matter({"base_model": str(tmp_path / "runs" / "pt")})
    assert "base_model" not in front_matter({"base_model": "m3ae-tiny"})


def test_hub_id_loads_offline_from_the_cache(cached):
    from m3ae import VQAPipeline

    _, model, snapshot = cached
    loaded = M3AE.from_pretrained("m3ae-org/tiny-vqa")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    pipe = VQAPipeline.from_pretrained("m3ae-org/tiny-vqa")
    assert pipe.answers == ["yes", "no", "left"]
    import numpy as np

    answers = pipe(np.zeros((40, 40, 3), dtype=np.uint8), "is there a mass?", top_k=3)
    assert sorted(a["answer"] for a in answers) == ["left", "no", "yes"]


def test_create_model_takes_a_cached_hub_id_as_pretrained(cached):
    from m3ae import create_model

    model = create_model(pretrained="m3ae-org/tiny-vqa", heads=["vqa", "itc"])
    assert "itc" in model.heads and model.load_report.missing_allowed  # new head, fresh init


def test_uncached_hub_id_is_a_clear_error_and_never_a_download(cached, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):  # pragma: no cover - failing here is the bug
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(huggingface_hub.file_download, "get_hf_file_metadata", no_network)
    with pytest.raises(M3AEError, match="not in the Hugging Face cache"):
        M3AE.from_pretrained("m3ae-org/not-cached")


def test_missing_local_folder_is_not_taken_for_a_hub_id(tmp_path):
    from m3ae.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not an m3ae model folder"):
        M3AE.from_pretrained(tmp_path / "nope")


class RecordingApi:
    """Stands in for HfApi: records the calls push_to_hub makes instead of sending them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return "https://huggingface.co/org/x/commit/abc"


def test_push_sends_the_model_files_and_nothing_else(tmp_path):
    from huggingface_hub.utils import filter_repo_objects

    from m3ae.weights.hub import plan_push, push_to_hub

    folder, _ = _vqa_folder(tmp_path)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "step_1.pt").write_bytes(b"junk")
    (folder / "log.jsonl").write_text("{}\n")
    api = RecordingApi()
    push_to_hub(folder, "org/m3ae-tiny-vqa", private=True, api=api)
    (name, repo), (name2, upload) = api.calls
    assert name == "create_repo" and repo == {"repo_id": "org/m3ae-tiny-vqa", "repo_type": "model",
                                              "private": True, "exist_ok": True}
    assert name2 == "upload_folder" and upload["repo_id"] == "org/m3ae-tiny-vqa"
    assert upload["folder_path"] == str(folder) and upload["repo_type"] == "model"
    # huggingface_hub's own filter with our patterns picks exactly the files the plan lists
    on_disk = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    sent = sorted(filter_repo_objects(on_disk, allow_patterns=upload["allow_patterns"]))
    assert sent == list(plan_push(folder, "org/m3ae-tiny-vqa").files)
    assert {"config.json", "model.safetensors", "README.md"} <= set(sent)
    assert "log.jsonl" not in sent and not any(s.startswith("checkpoints") for s in sent)


def test_push_cli_checks_the_folder_and_dry_runs(tmp_path, capsys):
    folder, _ = _vqa_folder(tmp_path)
    assert main(["push", str(folder), "org/x", "--dry-run"]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    (folder / "README.md").unlink()
    assert main(["push", str(folder), "org/x", "--dry-run"]) == 2
    assert "missing ['README.md']" in capsys.readouterr().err
    shutil.copy(folder / "config.json", folder / "README.md")
    assert main(["push", str(folder), "not a repo id", "--dry-run"]) == 2


@pytest.mark.parametrize("entry", ["/venv/bin/m3ae", "/src/m3ae/cli/__main__.py"])
def test_card_records_the_command_as_typed(entry: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from m3ae.reports.model_card import current_command

    # the console script and `python -m m3ae.cli` (torchrun) both read back as `m3ae ...`
    monkeypatch.setattr("sys.argv", [entry, "finetune", "--out", "runs/a b"])
    assert current_command() == "m3ae finetune --out 'runs/a b'"
