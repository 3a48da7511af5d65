"""`m3ae export --format onnx`: both graphs with a dynamic batch and a dynamic text length, equal
to torch within 1e-4 under onnxruntime on inputs other than the export's (other batch sizes, other
padding, texts shorter and longer than the training length up to the position table's limit); a
longer text is a clear error at export and at run time."""
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
    assert report["inputs"]["input_ids"] == ["batch", "text_len"]
    assert report["outputs"]["cls_feats"] == ["batch", 64]
    # m3ae-tiny: 66 position rows, RoBERTa numbers them from pad_token_id + 1 = 2 -> 64 tokens
    assert report["max_text_len"] == 64 and report["checked_text_lens"] == [3, 12, 24, 64]
    assert report["checked_batch_sizes"] == [1, 3]
    assert all(0 <= d < 1e-4 for d in report["max_abs_diff"].values()), report["max_abs_diff"]


@pytest.mark.parametrize("graph", ["vqa", "encoder"])
def test_graph_declares_symbolic_batch_and_text_axes_and_its_limit(exported, graph):
    import onnx

    tmp, _ = exported
    proto = onnx.load(str(tmp / "out" / f"{graph}.onnx"))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in proto.graph.input}
    assert isinstance(dims["input_ids"][0], str) and isinstance(dims["input_ids"][1], str)
    assert dims["attention_mask"][:2] == dims["input_ids"][:2] and dims["pixel_values"][1:] == [3, 32, 32]
    assert {p.key: p.value for p in proto.metadata_props}["max_text_len"] == "64"


@pytest.mark.parametrize("graph,batch,length", [("vqa", 1, 12), ("vqa", 5, 5), ("vqa", 2, 40), ("vqa", 3, 64),
                                                ("encoder", 4, 12), ("encoder", 1, 2), ("encoder", 2, 64)])
def test_onnx_graph_has_dynamic_batch_and_length_and_matches_torch(exported, graph, batch, length):
    from m3ae.inference.export import example_inputs, graph_module, onnx_session, run_graph

    tmp, model = exported
    inputs = example_inputs(model, batch, length, seed=7 + batch + length)
    got = run_graph(onnx_session(tmp / "out" / f"{graph}.onnx"), *inputs)
    with torch.no_grad():
        ref = graph_module(model, graph)(*inputs).numpy()
    assert got.shape == ref.shape == (batch, 4 if graph == "vqa" else 64)
    assert abs(got - ref).max() < 1e-4


def test_a_tokenised_question_is_fed_at_its_own_length(exported):
    from m3ae.data import load_tokenizer
    from m3ae.inference.export import onnx_session, run_graph

    tmp, model = exported
    tokens = load_tokenizer()(["Is there a fracture?"], return_tensors="np")
    assert tokens["input_ids"].shape[1] != 12  # not the training length
    pixels = torch.zeros(1, 3, 32, 32)
    got = run_graph(onnx_session(tmp / "out" / "vqa.onnx"), pixels.numpy(), tokens["input_ids"],
                    tokens["attention_mask"])
    with torch.no_grad():
        ref = model.heads["vqa"](model.encode(pixels, torch.from_numpy(tokens["input_ids"]),
                                              torch.from_numpy(tokens["attention_mask"])).cls_feats)
    assert abs(got - ref.numpy()).max() < 1e-4


def test_a_text_past_the_position_table_is_a_clear_error(exported, capsys):
    from m3ae.errors import M3AEError
    from m3ae.inference.export import example_inputs, onnx_session, run_graph

    tmp, model = exported
    with pytest.raises(M3AEError, match="position table holds 64 tokens"):
        run_graph(onnx_session(tmp / "out" / "encoder.onnx"), *example_inputs(model, 1, 65))
    assert main(["export", str(tmp / "o65"), "--model", str(tmp / "model"), "--text-len", "65"]) == 2
    assert "text length 65 is outside 2..64" in capsys.readouterr().err


def test_export_of_a_model_without_vqa_head_is_a_clear_error(tmp_path, capsys):
    M3AE(ModelConfig.from_name("m3ae-tiny").with_heads(["irtr"])).save_pretrained(tmp_path / "m")
    assert main(["export", str(tmp_path / "o"), "--model", str(tmp_path / "m"), "--graphs", "vqa"]) == 2
    assert "no vqa head" in capsys.readouterr().err
