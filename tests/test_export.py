"""`m3ae export --format onnx`: both graphs with a dynamic batch, equal to torch within 1e-4 under
onnxruntime on inputs other than the export's (other batch sizes, other padding)."""
from __future__ import annotations

import json

import pytest
import torch

from m3ae.cli import main
from m3ae.models import M3AE, ModelConfig

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = M3AE(ModelConfig.from_name("m3ae-tiny").with_heads(["vqa"], num_answers=4)).eval()
    model.save_pretrained(tmp / "model", extra={"answers": list("abcd"), "preprocessing": {"max_text_len": 12}})
    assert main(["export", "--model", str(tmp / "model"), "--format", "onnx", str(tmp / "out")]) == 0
    return tmp, model


def test_export_writes_both_graphs_within_tolerance(exported):
    tmp, _ = exported
    report = json.loads((tmp / "out" / "export.json").read_text())
    assert report["graphs"] == {"vqa": "vqa.onnx", "encoder": "encoder.onnx"}
    assert report["inputs"]["input_ids"] == ["batch", 12] and report["outputs"]["cls_feats"] == ["batch", 64]
    assert all(0 <= d < 1e-4 for d in report["max_abs_diff"].values()), report["max_abs_diff"]


@pytest.mark.parametrize("graph,batch", [("vqa", 1), ("vqa", 5), ("encoder", 4)])
def test_onnx_graph_has_a_dynamic_batch_and_matches_torch(exported, graph, batch):
    from m3ae.export import INPUT_NAMES, example_inputs, graph_module, onnx_session

    tmp, model = exported
    inputs = example_inputs(model, batch, 12, seed=7 + batch)
    assert int(inputs[2].sum()) < inputs[2].numel()  # some padding, unlike a plain all-ones mask
    got = onnx_session(tmp / "out" / f"{graph}.onnx").run(None, {n: t.numpy() for n, t in zip(INPUT_NAMES, inputs)})[0]
    with torch.no_grad():
        ref = graph_module(model, graph)(*inputs).numpy()
    assert got.shape == ref.shape == (batch, 4 if graph == "vqa" else 64)
    assert abs(got - ref).max() < 1e-4


def test_export_of_a_model_without_vqa_head_is_a_clear_error(tmp_path, capsys):
    M3AE(ModelConfig.from_name("m3ae-tiny").with_heads(["irtr"])).save_pretrained(tmp_path / "m")
    assert main(["export", str(tmp_path / "o"), "--model", str(tmp_path / "m"), "--graphs", "vqa"]) == 2
    assert "no vqa head" in capsys.readouterr().err
