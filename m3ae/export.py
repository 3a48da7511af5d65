"""ONNX export of a model folder: the VQA model (image, ids, mask -> logits) and the encoder
(image, ids, mask -> cls_feats), each with a dynamic batch dimension.

Uses torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, which needs ``onnxscript``):
the TorchScript exporter traces the attention-mask handling of the text tower with the example
mask baked in and disagrees with torch by ~1e-2 on other masks. `check_parity` runs the exported
graph with ONNX Runtime on fresh inputs (other batch sizes, other padding) against torch.

``onnx``, ``onnxscript`` and ``onnxruntime`` are the optional ``onnx`` extra, imported here only.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from m3ae.errors import M3AEError

INPUT_NAMES = ("pixel_values", "input_ids", "attention_mask")
GRAPHS = ("vqa", "encoder")
OUTPUT_NAMES = {"vqa": "logits", "encoder": "cls_feats"}
OPSET = 18
EXAMPLE_BATCH = 2  # not 1: a batch of 1 lets the exporter specialise the batch dimension


class VQAGraph(nn.Module):
    """What `vqa.onnx` computes: [B, 3, H, W], [B, L_t], [B, L_t] -> answer logits [B, A]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model.encode(pixel_values, input_ids, attention_mask)
        return self.model.heads["vqa"](out.cls_feats)


class EncoderGraph(nn.Module):
    """What `encoder.onnx` computes: the same inputs -> joint features ``cls_feats`` [B, 2D]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode(pixel_values, input_ids, attention_mask).cls_feats


GRAPH_MODULES = {"vqa": (VQAGraph, "vqa"), "encoder": (EncoderGraph, None)}
"""graph -> (the wrapper module, the head it needs or None)."""


def graph_module(model: nn.Module, graph: str) -> nn.Module:
    """The wrapper module for ``graph`` ("vqa" or "encoder"), in eval mode."""
    if graph not in GRAPHS:
        raise M3AEError(f"unknown graph {graph!r}; choose among {list(GRAPHS)}")
    wrapper, head = GRAPH_MODULES[graph]
    if head is not None and head not in model.heads:
        raise M3AEError(f"the model has no {head} head: export the encoder only (--graphs encoder)")
    return wrapper(model).eval()


def example_inputs(model: nn.Module, batch: int, text_len: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random pixel values, token ids and a mask with padding in some rows. -> ([B,3,H,W], [B,L_t], [B,L_t])"""
    g = torch.Generator().manual_seed(seed)
    size = model.config.vision.image_size
    pixel_values = torch.randn(batch, 3, size, size, generator=g)
    vocab = model.config.text.vocab_size
    input_ids = torch.randint(5, min(vocab, 1000), (batch, text_len), generator=g)
    attention_mask = torch.ones(batch, text_len, dtype=torch.long)
    for row in range(0, batch, 2):  # every other row padded after a random length
        attention_mask[row, int(torch.randint(2, text_len + 1, (1,), generator=g)):] = 0
    return pixel_values, input_ids, attention_mask


def export_graph(model: nn.Module, graph: str, path: str | Path, text_len: int, opset: int = OPSET,
                 optimize: bool = False) -> Path:
    """Write one ONNX graph with a dynamic batch dimension on every input and the output."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise M3AEError("ONNX export needs the onnx extra: pip install 'm3ae[onnx]' "
                        "(onnx, onnxscript, onnxruntime)") from None
    module = graph_module(model, graph)
    batch = torch.export.Dim("batch", min=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), torch.no_grad():  # the exporter reports each stage on stdout
        torch.onnx.export(module, example_inputs(model, EXAMPLE_BATCH, text_len), str(path),
                          input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAMES[graph]],
                          dynamic_shapes=({0: batch}, {0: batch}, {0: batch}), opset_version=opset,
                          dynamo=True, optimize=optimize, external_data=False)
    return path


def onnx_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session for an exported graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def check_parity(model: nn.Module, graph: str, path: str | Path, text_len: int,
                 batch_sizes: tuple[int, ...] = (1, 3)) -> float:
    """Largest |onnxruntime - torch| over fresh inputs at each batch size (not the export inputs)."""
    module, session = graph_module(model, graph), onnx_session(path)
    worst = 0.0
    for k, batch in enumerate(batch_sizes):
        inputs = example_inputs(model, batch, text_len, seed=100 + k)
        ref = module(*inputs).float().numpy()
        got = session.run(None, {n: t.numpy() for n, t in zip(INPUT_NAMES, inputs)})[0]
        if got.shape != ref.shape:
            raise M3AEError(f"{path}: output shape {got.shape} differs from torch's {ref.shape}")
        worst = max(worst, float(abs(got - ref).max()))
    return worst


@dataclass
class ExportReport:
    """What `export_onnx` wrote; saved as ``export.json`` next to the graphs."""

    graphs: dict[str, str]
    """graph name -> file name."""
    inputs: dict[str, list]
    """input name -> shape (``batch`` is dynamic)."""
    outputs: dict[str, list]
    """output name -> shape."""
    max_abs_diff: dict[str, float]
    """graph name -> largest |onnxruntime - torch| on fresh inputs (empty when not checked)."""
    opset: int = OPSET


def export_onnx(model_dir: str | Path, out_dir: str | Path, graphs: tuple[str, ...] | None = None,
                text_len: int | None = None, check: bool = True) -> ExportReport:
    """Export a model folder (or cached Hub id) to ``out_dir/{vqa,encoder}.onnx`` + ``export.json``.

    Args:
        model_dir: a folder written by `save_pretrained`, or a Hub id in the local cache.
        out_dir: where the graphs go.
        graphs: which graphs (default: vqa when the model has a vqa head, and encoder).
        text_len: L_t of the exported inputs (default: the folder's recorded max_text_len).
        check: compare with torch through onnxruntime (the ``max_abs_diff`` of the report).
    """
    import json

    from m3ae.models import M3AE
    from m3ae.models.io import read_preprocessing, resolve_model_dir

    folder = resolve_model_dir(model_dir)
    model = M3AE.from_pretrained(folder).eval()
    pre = read_preprocessing(folder)
    text_len = text_len or pre.max_text_len
    graphs = graphs or tuple(g for g in GRAPHS if GRAPH_MODULES[g][1] in (None, *model.heads))
    out_dir = Path(out_dir)
    size = model.config.vision.image_size
    width = {"vqa": model.config.num_answers, "encoder": 2 * model.config.width}
    report = ExportReport(graphs={}, max_abs_diff={},
                          inputs={"pixel_values": ["batch", 3, size, size], "input_ids": ["batch", text_len],
                                  "attention_mask": ["batch", text_len]},
                          outputs={OUTPUT_NAMES[g]: ["batch", width[g]] for g in graphs})
    for graph in graphs:
        path = export_graph(model, graph, out_dir / f"{graph}.onnx", text_len)
        report.graphs[graph] = path.name
        if check:
            report.max_abs_diff[graph] = check_parity(model, graph, path, text_len)
    (out_dir / "export.json").write_text(json.dumps({**asdict(report), "preprocessing": pre.to_dict()}, indent=2) + "\n")
    return report
