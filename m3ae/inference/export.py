"""ONNX export of a model folder: the VQA model (image, ids, mask -> logits) and the encoder
(image, ids, mask -> cls_feats), each with a dynamic batch and a dynamic text length, as ONNX
exports of text models are: a question is fed at its tokenised length, padded or not.
The text length is bounded by the position table (`max_text_len_of`); the limit is written into
each graph's metadata (``max_text_len``) and `run_graph` refuses a longer input by name.

Uses torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, which needs ``onnxscript``):
the TorchScript exporter traces the attention-mask handling of the text tower with the example
mask baked in and disagrees with torch by ~1e-2 on other masks. `check_parity` runs the exported
graph with ONNX Runtime on fresh inputs (other batch sizes, other padding) against torch.

``onnx``, ``onnxscript`` and ``onnxruntime`` are the optional ``onnx`` extra, imported here only.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from m3ae.errors import M3AEError

INPUT_NAMES = ("pixel_values", "input_ids", "attention_mask")
GRAPHS = ("vqa", "encoder")
OUTPUT_NAMES = {"vqa": "logits", "encoder": "cls_feats"}
OPSET = 18
EXAMPLE_BATCH = 2  # not 1: a batch of 1 lets the exporter specialise the batch dimension
PARITY_BATCH_SIZES = (1, 3)
MIN_TEXT_LEN = 2  # <s> </s>; the exporter specialises a dimension seen as 0 or 1
LIMIT_KEY = "max_text_len"
"""Graph metadata key: the longest text the graph's position table holds."""


def max_text_len_of(model: nn.Module) -> int:
    """Longest text the text tower's position table holds: RoBERTa numbers positions from
    ``pad_token_id + 1`` (514 rows -> 512 tokens), BERT from 0."""
    text = model.config.text
    offset = text.pad_token_id + 1 if text.model_type == "roberta" else 0
    return text.max_position_embeddings - offset


def check_text_len(text_len: int, limit: int, where: str) -> None:
    """A text longer than the position table would index past it: a clear error instead."""
    if not MIN_TEXT_LEN <= text_len <= limit:
        raise M3AEError(f"{where}: text length {text_len} is outside {MIN_TEXT_LEN}..{limit} "
                        f"(the text tower's position table holds {limit} tokens)")


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
    """Write one ONNX graph with a dynamic batch and a dynamic text length on every text input.

    ``text_len`` is the example length traced; the graph accepts any length up to
    `max_text_len_of` (recorded in the graph's metadata under ``max_text_len``).
    """
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise M3AEError("ONNX export needs the onnx extra: pip install 'm3ae[onnx]' "
                        "(onnx, onnxscript, onnxruntime)") from None
    limit = max_text_len_of(model)
    check_text_len(text_len, limit, "m3ae export")
    module = graph_module(model, graph)
    batch = torch.export.Dim("batch", min=1)
    # the traced example must not sit on the bound, or the exporter may specialise it
    example_len = min(max(text_len, MIN_TEXT_LEN + 1), limit - 1)
    seq = torch.export.Dim("text_len", min=MIN_TEXT_LEN, max=limit)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), torch.no_grad():  # the exporter reports each stage on stdout
        torch.onnx.export(module, example_inputs(model, EXAMPLE_BATCH, example_len), str(path),
                          input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAMES[graph]],
                          dynamic_shapes=({0: batch}, {0: batch, 1: seq}, {0: batch, 1: seq}),
                          opset_version=opset, dynamo=True, optimize=optimize, external_data=False)
    _write_limit(path, limit)
    return path


def _write_limit(path: Path, limit: int) -> None:
    """Record the text-length limit in the graph's metadata, where any ONNX consumer can read it."""
    import onnx

    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**props, LIMIT_KEY: str(limit)})
    onnx.save(proto, str(path))


def onnx_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session for an exported graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_graph(session, pixel_values, input_ids, attention_mask):
    """Run an exported graph on numpy (or torch) inputs; a text longer than the graph's
    ``max_text_len`` metadata is an M3AEError naming the limit, not an out-of-bounds Gather."""
    limit = session.get_modelmeta().custom_metadata_map.get(LIMIT_KEY)
    if limit is not None:
        check_text_len(int(input_ids.shape[1]), int(limit), "ONNX graph")
    feeds = {n: (t.numpy() if isinstance(t, torch.Tensor) else t)
             for n, t in zip(INPUT_NAMES, (pixel_values, input_ids, attention_mask))}
    return session.run(None, feeds)[0]


@torch.no_grad()
def check_parity(model: nn.Module, graph: str, path: str | Path, text_len: int,
                 batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
                 text_lens: tuple[int, ...] | None = None) -> float:
    """Largest |onnxruntime - torch| over fresh inputs (not the export inputs) at each batch size
    and text length (default `parity_lengths`: shorter, equal and longer than ``text_len``, and
    the position table's limit)."""
    module, session = graph_module(model, graph), onnx_session(path)
    worst = 0.0
    lengths = text_lens or parity_lengths(text_len, max_text_len_of(model))
    for k, (batch, length) in enumerate((b, n) for b in batch_sizes for n in lengths):
        inputs = example_inputs(model, batch, length, seed=100 + k)
        ref = module(*inputs).float().numpy()
        got = run_graph(session, *inputs)
        if got.shape != ref.shape:
            raise M3AEError(f"{path}: output shape {got.shape} differs from torch's {ref.shape}")
        worst = max(worst, float(abs(got - ref).max()))
    return worst


def parity_lengths(text_len: int, limit: int) -> tuple[int, ...]:
    """Text lengths a parity check covers: a short one, the training length, a longer one, the limit."""
    return tuple(sorted({MIN_TEXT_LEN + 1, text_len, min(2 * text_len, limit), limit}))


@dataclass
class ExportReport:
    """What `export_onnx` wrote; saved as ``export.json`` next to the graphs."""

    graphs: dict[str, str]
    """graph name -> file name."""
    inputs: dict[str, list]
    """input name -> shape (``batch`` and ``text_len`` are dynamic)."""
    outputs: dict[str, list]
    """output name -> shape."""
    max_abs_diff: dict[str, float]
    """graph name -> largest |onnxruntime - torch| on fresh inputs (empty when not checked)."""
    max_text_len: int = 0
    """Longest text the graphs accept (the position table's limit)."""
    checked_text_lens: list[int] = field(default_factory=list)
    """Text lengths of the parity check; its batch sizes are ``checked_batch_sizes``."""
    checked_batch_sizes: list[int] = field(default_factory=list)
    opset: int = OPSET


def export_onnx(model_dir: str | Path, out_dir: str | Path, graphs: tuple[str, ...] | None = None,
                text_len: int | None = None, check: bool = True) -> ExportReport:
    """Export a model folder (or cached Hub id) to ``out_dir/{vqa,encoder}.onnx`` + ``export.json``.

    Args:
        model_dir: a folder written by `save_pretrained`, or a Hub id in the local cache.
        out_dir: where the graphs go.
        graphs: which graphs (default: vqa when the model has a vqa head, and encoder).
        text_len: the training text length (default: the folder's recorded max_text_len); the
            graphs accept any length up to the position table's limit, and parity is checked
            around this one.
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
    limit = max_text_len_of(model)
    text_shape = ["batch", "text_len"]
    report = ExportReport(graphs={}, max_abs_diff={}, max_text_len=limit,
                          inputs={"pixel_values": ["batch", 3, size, size], "input_ids": text_shape,
                                  "attention_mask": text_shape},
                          outputs={OUTPUT_NAMES[g]: ["batch", width[g]] for g in graphs})
    if check:
        report.checked_text_lens = list(parity_lengths(text_len, limit))
        report.checked_batch_sizes = list(PARITY_BATCH_SIZES)
    for graph in graphs:
        path = export_graph(model, graph, out_dir / f"{graph}.onnx", text_len)
        report.graphs[graph] = path.name
        if check:
            report.max_abs_diff[graph] = check_parity(model, graph, path, text_len, PARITY_BATCH_SIZES,
                                                      tuple(report.checked_text_lens))
    (out_dir / "export.json").write_text(json.dumps({**asdict(report), "preprocessing": pre.to_dict()}, indent=2) + "\n")
    return report
