"""Time the ORIGINAL M3AE code (github.com/zhjohnchan/M3AE) on the same three jobs as `m3ae bench`.

The harness imports the original's own modules from ``--orig-src`` (a checkout of its repository)
and runs them unmodified: `M3AETransformerSS.__init__` builds the model (its CLIP ViT-B/16
`clip_model.CLIP`, a `transformers` RobertaModel, 6 + 6 `BertCrossLayer` co-attention layers, the
poolers, the MLM / MIM / ITM heads or the VQA head, `init_weights`), and a step is its own
`training_step` (`infer()` + `objectives.compute_mlm/mim/itm/vqa` and the weighted loss sum),
then backward, the optimizer built by its own `m3ae_utils.set_schedule` (AdamW with its 6 parameter
groups, betas 0.9/0.98, and its linear-decay scheduler) and ``zero_grad``, in the order that
pytorch-lightning 1.3 runs them. Inference is its `test_step` (`compute_vqa(test=True)`) under
``torch.no_grad()`` in eval mode.

Only what would need a download, a GPU cluster or a package we do not install is replaced, each
replacement named in `install_shims` below:
  * pretrained weights: `clip_model.build_model` (downloads CLIP) builds the same `CLIP` class
    with random weights, and `RobertaModel.from_pretrained("roberta-base")` becomes
    `RobertaModel(RobertaConfig(<roberta-base's sizes>))`, random weights, eager attention (the
    original's transformers 4.6 had no other);
  * pytorch_lightning: a stand-in `LightningModule` (an `nn.Module` with `save_hyperparameters`,
    a no-op `log` and `device`); the step loop below is what PL runs for one optimizer on CPU;
  * its metrics (`gadgets/my_metrics.py`, torchmetrics + sklearn): no-op callables (they only
    accumulate the loss / accuracy for epoch-end logging);
  * the Swin backbone modules (import timm; unused with the CLIP ViT): empty modules;
  * transformers 4.57 (the only 4.x the package index has) no longer re-exports
    `apply_chunking_to_forward`, `find_pruneable_heads_and_indices`, `prune_linear_layer` from
    `modeling_utils` (they moved to `pytorch_utils`, same code): re-exported; its docstring
    decorator `add_code_sample_docstrings` no longer takes ``tokenizer_class``: a pass-through (it
    only writes docstrings); `transformers.AdamW` was removed: ``torch.optim.AdamW(foreach=False)``,
    the same per-parameter update loop (the JSON names the optimizer used);
  * numpy >= 1.24 removed the alias ``np.float`` (the builtin float; the MIM decoder's sin-cos
    position table uses it): restored.

Shapes are the paper's (and `m3ae bench`'s): pre-training batch 4, 288 px, 64 tokens, 75% of the
image patches masked (its ``mim_prob``), 15% of the tokens masked for MLM, MIM at fusion layer 3
(``task_pretrain_m3ae``); VQA batch 4, 384 px, 32 tokens, 498 answers, BCE (``task_finetune_vqa_vqa_rad``);
inference batch 1, 384 px, 32 tokens. Each job runs in a fresh process (its own peak RSS, from
``resource.getrusage``), and prints the same JSON fields as ``m3ae bench --json``.

Run it with a Python that has the original's dependencies (torch + transformers 4.x + einops +
tqdm + numpy; NOT our library's venv, whose transformers 5 the original cannot import):

    python3 -m venv /work/orig-venv
    /work/orig-venv/bin/pip install torch==2.13.0 transformers==4.57.6 einops tqdm numpy
    git --git-dir=/work/.mirror/zhjohnchan+M3AE/repo archive HEAD | tar -x -C /tmp/m3ae-orig
    /work/orig-venv/bin/python benchmarks/bench_original.py --orig-src /tmp/m3ae-orig --job vqa \\
        --precision fp32 --threads 2 --steps 3 --json
    # a seconds-long check of the harness itself:
    /work/orig-venv/bin/python benchmarks/bench_original.py --orig-src /tmp/m3ae-orig --job pretrain \\
        --tiny --image-size 32 --text-len 8 --steps 1 --warmup 0

This file imports nothing from our library (the original's package is also called ``m3ae``); it loads
our dependency-free ``m3ae/experiments/bench_core.py`` by file path for the shapes and the measuring helpers.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import resource
import subprocess
import sys
import time
import types
from dataclasses import asdict, dataclass, fields
from pathlib import Path


def _load_bench_core() -> types.ModuleType:
    """Our `m3ae/experiments/bench_core.py` by file path: the shapes and the measuring and profile helpers are
    the very ones `m3ae bench` uses, while `import m3ae` stays free for the original's package."""
    path = Path(__file__).resolve().parents[1] / "m3ae" / "experiments" / "bench_core.py"
    spec = importlib.util.spec_from_file_location("m3ae_bench_core", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_core = _load_bench_core()
JOBS, PAPER_SHAPES, NUM_ANSWERS, PROFILE_TOP = _core.JOBS, _core.PAPER_SHAPES, _core.NUM_ANSWERS, _core.PROFILE_TOP
MASK_TOKEN_ID, BOS_ID, EOS_ID = _core.MASK_TOKEN_ID, _core.BOS_ID, _core.EOS_ID
cpu_seconds, load_avg, profile_steps, profile_markdown = (
    _core.cpu_seconds, _core.load_avg, _core.profile_steps, _core.profile_markdown)


@dataclass
class OrigSpec:
    """One run (what the child process receives as JSON); the fields of `m3ae bench`'s spec."""

    job: str = "infer"
    size: str = "original-base"
    """original-base (ViT-B/16 + RoBERTa-base + 6 fusion layers) or original-tiny (--tiny)."""
    batch: int | None = None
    steps: int = 3
    warmup: int = 1
    precision: str = "auto"
    """auto (bf16 autocast where the CPU has native bf16, else fp32, as `m3ae bench`), fp32, bf16."""
    threads: int = 0
    image_size: int | None = None
    text_len: int | None = None
    memory: str = "normal"
    compile: bool = False
    grad_checkpointing: bool = False
    device: str = "cpu"
    profile: int = 0
    orig_src: str = ""


# ------------------------------------------------------------------------------ configuration
def original_config(job: str, image_size: int, text_len: int, tiny: bool) -> dict:
    """The original's sacred config for the job: config.py's defaults + ``task_pretrain_m3ae`` or
    ``task_finetune_vqa_vqa_rad`` + ``clip16 text_roberta`` + the run scripts' overrides."""
    cfg = {
        "loss_names": {"mlm": 0, "mim": 0, "itm": 0, "vqa": 0, "cls": 0, "irtr": 0},
        "vit": "ViT-B/16", "patch_size": 16, "image_size": image_size, "max_text_len": text_len,
        "tokenizer": "roberta-base", "vocab_size": 50265, "mlm_prob": 0.15,
        "input_image_embed_size": 768, "input_text_embed_size": 768, "hidden_size": 768,
        "num_heads": 12, "num_layers": 6, "mlp_ratio": 4, "drop_rate": 0.1, "num_top_layer": 6,
        "mim_prob": 0.75, "mim_decoder_hidden_size": 384, "mim_decoder_num_layers": 4,
        "mim_decoder_num_heads": 6, "norm_pix_loss": True, "mim_layer": -1,
        "vqa_label_size": 3129, "optim_type": "adamw", "learning_rate": 1e-5, "weight_decay": 0.01,
        "decay_power": 1, "max_steps": 100000, "warmup_steps": 0.1, "end_lr": 0,
        "lr_multiplier_head": 5, "lr_multiplier_multi_modal": 5, "load_path": "", "test_only": False,
        "label_column_name": "", "melinda_label_size": {"i_meth": 85, "p_meth": 45, "i_meth_label": 15,
                                                        "p_meth_label": 7},
    }
    if job == "pretrain":
        cfg["loss_names"].update(mlm=1, mim=1, itm=1)
        cfg.update(mim_layer=3)
    else:
        cfg["loss_names"].update(vqa=1)
        cfg.update(vqa_label_size=NUM_ANSWERS, learning_rate=5e-6, lr_multiplier_head=50, max_steps=None)
    if tiny:
        cfg.update(vocab_size=1000, input_image_embed_size=64, input_text_embed_size=64, hidden_size=64,
                   num_heads=2, num_top_layer=2, mim_decoder_hidden_size=32, mim_decoder_num_layers=1,
                   mim_decoder_num_heads=2, mim_layer=1 if job == "pretrain" else -1)
    return cfg


def vision_sizes(tiny: bool) -> dict:
    """`CLIP.__init__` arguments of the released ViT-B/16 (what `build_model` reads off its state
    dict), or a tiny one."""
    if tiny:
        return dict(embed_dim=64, image_resolution=224, vision_layers=3, vision_width=64, vision_patch_size=16,
                    context_length=77, vocab_size=1000, transformer_width=64, transformer_heads=1,
                    transformer_layers=2)
    return dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
                context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                transformer_layers=12)


def text_config(tiny: bool):
    """roberta-base's config (or a tiny one), random weights, eager attention."""
    from transformers import RobertaConfig

    sizes = (dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=256) if tiny else
             dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072))
    cfg = RobertaConfig(**sizes, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2)
    cfg._attn_implementation = "eager"
    return cfg


# ------------------------------------------------------------------------------ the original
SHIMS: list[str] = []
"""What `install_shims` replaced (reported in the JSON)."""


def install_shims(orig_src: str, tiny: bool) -> types.SimpleNamespace:
    """Make the original importable here, then import its modules. Returns them.

    Each replacement below is there because of a download, a package we do not install, or an
    import that moved in transformers; none changes what a step computes.
    """
    import torch
    from torch import nn

    import transformers
    import transformers.modeling_utils as modeling_utils
    import transformers.optimization as optimization
    import transformers.pytorch_utils as pytorch_utils

    if not os.path.isfile(os.path.join(orig_src, "m3ae", "modules", "m3ae_module.py")):
        raise SystemExit(f"error: --orig-src {orig_src} has no m3ae/modules/m3ae_module.py "
                         "(give the root of a checkout of the original M3AE repository)")
    sys.path.insert(0, os.path.abspath(orig_src))

    # transformers >= 4.2x: these helpers moved to pytorch_utils (same functions).
    for name in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
        if not hasattr(modeling_utils, name):
            setattr(modeling_utils, name, getattr(pytorch_utils, name))
            SHIMS.append(f"transformers.modeling_utils.{name} = pytorch_utils.{name}")
    # numpy >= 1.24 removed the alias np.float (= the builtin float) that position_embeddings.py uses.
    import numpy as np

    if "float" not in np.__dict__:
        np.float = float
        SHIMS.append("numpy.float = float (alias removed in numpy 1.24)")
    # docstring decorator whose keywords changed (tokenizer_class -> processor_class): a pass-through.
    import transformers.file_utils as file_utils

    if "tokenizer_class" not in inspect.signature(file_utils.add_code_sample_docstrings).parameters:
        file_utils.add_code_sample_docstrings = lambda *args, **kwargs: (lambda fn: fn)
        SHIMS.append("transformers.file_utils.add_code_sample_docstrings: pass-through (docstrings only)")
    # transformers' own AdamW was removed; torch's single-tensor AdamW is the same per-parameter loop.
    if not hasattr(optimization, "AdamW"):
        class AdamW(torch.optim.AdamW):
            label = "torch.optim.AdamW(foreach=False), standing in for transformers.AdamW"

            def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, correct_bias=True):
                super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)
        optimization.AdamW = AdamW
        SHIMS.append("transformers.optimization.AdamW = torch.optim.AdamW(foreach=False)")

    # pytorch_lightning: only LightningModule is used by the modules; a plain nn.Module with the
    # three members the original's code calls.
    class LightningModule(nn.Module):
        def save_hyperparameters(self):
            self.hparams = types.SimpleNamespace(config=inspect.currentframe().f_back.f_locals["config"])

        def log(self, *args, **kwargs):
            pass

        @property
        def device(self):
            return next(self.parameters()).device

    pl = types.ModuleType("pytorch_lightning")
    pl.LightningModule = LightningModule
    sys.modules["pytorch_lightning"] = pl
    SHIMS.append("pytorch_lightning.LightningModule = nn.Module + save_hyperparameters/log/device")

    # its metrics (torchmetrics/sklearn, epoch-end logging only): no-op callables returning the value.
    class NoOpMetric:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, value=None, *args, **kwargs):
            return value

    metrics = types.ModuleType("m3ae.gadgets.my_metrics")
    metrics.Accuracy = metrics.Scalar = metrics.VQARADScore = NoOpMetric
    sys.modules["m3ae.gadgets.my_metrics"] = metrics
    SHIMS.append("m3ae.gadgets.my_metrics: no-op metrics")
    # the Swin backbone (imports timm) is not used with the CLIP ViT.
    for name in ("swin_transformer", "swin_helpers"):
        stub = types.ModuleType(f"m3ae.modules.vision_encoders.{name}")
        stub.swin_adapt_position_encoding = None
        sys.modules[stub.__name__] = stub
    SHIMS.append("m3ae.modules.vision_encoders.swin_*: empty (timm; Swin unused)")

    import m3ae.gadgets  # noqa: F401  (the real package, so the stub above is its submodule)
    from m3ae.modules import m3ae_module, m3ae_utils, objectives
    from m3ae.modules.vision_encoders import clip_model

    # pretrained weights -> random ones, same classes and sizes
    def random_clip(name, resolution_after=224, jit=False):
        return clip_model.CLIP(**vision_sizes(tiny), resolution_after=resolution_after)

    class RandomRoberta:
        @staticmethod
        def from_pretrained(name, *args, **kwargs):
            return transformers.RobertaModel(text_config(tiny))

    m3ae_module.build_model = random_clip
    m3ae_module.RobertaModel = RandomRoberta
    SHIMS.append("clip_model.build_model / RobertaModel.from_pretrained: same classes, random weights")
    return types.SimpleNamespace(module=m3ae_module, utils=m3ae_utils, objectives=objectives)


def synthetic_batch(job: str, cfg: dict, batch: int, text_len: int, device, seed: int = 0) -> dict:
    """A batch in the original's collate format (random values, fixed seed): ``image`` is a list of
    one tensor, MLM ids/labels mask 15% of the inner tokens, pre-training has ``false_image_0`` for
    ITM, VQA has one answer per question with score 1."""
    import torch

    g = torch.Generator().manual_seed(seed)
    size = cfg["image_size"]
    ids = torch.randint(3, min(1000, cfg["vocab_size"]), (batch, text_len), generator=g)
    ids[:, 0], ids[:, -1] = BOS_ID, EOS_ID
    out = {"image": [torch.randn(batch, 3, size, size, generator=g).to(device)],
           "text": ["synthetic"] * batch, "text_ids": ids.to(device),
           "text_masks": torch.ones(batch, text_len, dtype=torch.long, device=device),
           "text_labels": torch.full((batch, text_len), -100, device=device)}
    if job == "pretrain":
        inner = torch.zeros(batch, text_len, dtype=torch.bool)
        inner[:, 1:-1] = torch.rand(batch, text_len - 2, generator=g) < cfg["mlm_prob"]
        inner[:, 1] |= ~inner.any(dim=1)  # at least one masked token a row
        out["text_ids_mlm"] = torch.where(inner, MASK_TOKEN_ID % cfg["vocab_size"], ids).to(device)
        out["text_labels_mlm"] = torch.where(inner, ids, -100).to(device)
        out["false_image_0"] = [torch.randn(batch, 3, size, size, generator=g).to(device)]
    else:
        out["vqa_labels"] = [[i % NUM_ANSWERS] for i in range(batch)]
        out["vqa_scores"] = [[1.0] for _ in range(batch)]
        out["answer_types"] = [i % 2 for i in range(batch)]
    return out


# ------------------------------------------------------------------------------ measuring
def cpu_bf16() -> bool:
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name)()) for name in checks if hasattr(cpu, name))


def resolve_shapes(spec: OrigSpec) -> tuple[int, int, int]:
    batch, image, text_len = PAPER_SHAPES[spec.job]
    return spec.batch or batch, spec.image_size or image, spec.text_len or text_len


def resolve_precision(requested: str, device) -> tuple[str, str]:
    if requested == "auto":
        if device.type == "cpu" and cpu_bf16():
            return "bf16", "auto: this CPU has native bf16 (AVX512-BF16/AMX)"
        return "fp32", "auto: no native bf16 on this CPU" if device.type == "cpu" else "auto: fp32 on CUDA"
    if requested not in ("fp32", "bf16"):
        raise SystemExit(f"error: --precision {requested}: the original runs fp32 or bf16 autocast only")
    return requested, f"{requested} requested"


def run_here(spec: OrigSpec) -> dict:
    """Build the original's model for the job and time its steps in this process."""
    import torch

    if spec.job not in JOBS:
        raise SystemExit(f"error: --job must be one of {JOBS}")
    load_start = load_avg()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    precision, reason = resolve_precision(spec.precision, device)
    tiny = spec.size == "original-tiny"
    orig = install_shims(spec.orig_src, tiny)
    batch_size, image, text_len = resolve_shapes(spec)
    cfg = original_config(spec.job, image, text_len, tiny)
    torch.manual_seed(0)
    model = orig.module.M3AETransformerSS(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    batch = synthetic_batch(spec.job, cfg, batch_size, text_len, device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else \
        (lambda: torch.autocast(device.type, enabled=False))
    optimizer_name = "-"
    if spec.job == "infer":
        model.eval()

        def step() -> None:
            with torch.no_grad(), autocast():
                model.test_step(batch, 0)  # set_task + compute_vqa(test=True)
    else:
        model.train()
        model.trainer = types.SimpleNamespace(max_steps=cfg["max_steps"] or 1000)  # read by set_schedule
        (opt,), (sched,) = orig.utils.set_schedule(model)
        optimizer_name = getattr(type(opt), "label", f"{type(opt).__module__}.{type(opt).__name__}")
        scheduler = sched["scheduler"]

        def step() -> None:  # pytorch-lightning 1.3's automatic optimisation, one optimizer
            with autocast():
                loss = model.training_step(batch, 0)
            loss.backward()
            opt.step()
            scheduler.step()
            opt.zero_grad()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(spec.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    times, cpu_times = [], []
    for _ in range(spec.steps):
        t0, c0 = time.perf_counter(), cpu_seconds()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(cpu_seconds() - c0)
    sec = sorted(times)[len(times) // 2]
    import transformers

    result = {
        **asdict(spec), "batch": batch_size, "image_size": image, "text_len": text_len,
        "num_answers": NUM_ANSWERS if spec.job != "pretrain" else None,
        "precision_requested": spec.precision, "precision": precision, "precision_reason": reason,
        "sec_per_step": sec, "cpu_sec_per_step": sorted(cpu_times)[len(cpu_times) // 2],
        "samples_per_s": batch_size / sec, "warmup_s": warmup_s, "step_times": times,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "params_m": n_params / 1e6, "threads": torch.get_num_threads(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_bf16": cpu_bf16(), "load_avg": load_start, "load_avg_end": load_avg(), "torch": torch.__version__,
        "implementation": "original", "transformers": transformers.__version__, "optimizer": optimizer_name,
        "shims": SHIMS,
    }
    if device.type == "cuda":
        result["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if spec.profile:
        result["profile_ops"] = profile_steps(step, spec.profile, sync)
    return result


def run_job(spec: OrigSpec) -> dict:
    """``spec`` in a fresh Python process (this interpreter): its own peak RSS."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(asdict(spec))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit code {proc.returncode}"]
        raise SystemExit(f"error: the original's {spec.job} benchmark failed: {lines[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_result(r: dict) -> str:
    return (f"ORIGINAL {r['job']} {r['size']} batch {r['batch']} ({r['image_size']} px, {r['text_len']} tokens), "
            f"{r['precision']}: {r['sec_per_step']:.3f} s/step (CPU {r['cpu_sec_per_step']:.2f} s), "
            f"{r['samples_per_s']:.2f} samples/s, peak RSS {r['peak_rss_gib']:.2f} GiB | {r['threads']} thread(s), "
            f"CPU bf16 {'yes' if r['cpu_bf16'] else 'no'}, load avg {r['load_avg']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orig-src", required=True, help="root of a checkout of the original M3AE repository")
    p.add_argument("--job", required=True, choices=JOBS)
    p.add_argument("--tiny", action="store_true",
                   help="shrink widths and layers (64 wide, 2 fusion layers) for a seconds-long check")
    p.add_argument("--batch", type=int)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--image-size", type=int, help="multiple of 16 (default: 288 pretrain, 384 vqa/infer)")
    p.add_argument("--text-len", type=int, help="tokens per text (default: 64 pretrain, 32 vqa/infer)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help=f"after the timed steps, profile N more and print the top {PROFILE_TOP} ops by self CPU time")
    p.add_argument("--profile-out", metavar="FILE", help="with --profile: also write the Markdown table here")
    p.add_argument("--json", action="store_true", help="print one JSON line (the fields of `m3ae bench --json`)")
    args = p.parse_args(argv)
    if args.image_size is not None and args.image_size % 16:
        p.error("--image-size must be a multiple of the patch size 16")
    if args.text_len is not None and args.text_len < 3:
        p.error("--text-len must be at least 3")
    names = {f.name for f in fields(OrigSpec)}
    spec = OrigSpec(**{k: v for k, v in vars(args).items() if k in names})
    spec.size = "original-tiny" if args.tiny else "original-base"
    spec.orig_src = os.path.abspath(args.orig_src)
    result = run_job(spec)
    print(json.dumps(result) if args.json else format_result(result), flush=True)
    if result.get("profile_ops"):
        title = (f"ORIGINAL {result['job']} {result['size']}, batch {result['batch']}, {result['image_size']} px, "
                 f"{result['text_len']} tokens, {result['precision']}, {result['threads']} thread(s): top "
                 f"{len(result['profile_ops'])} ops by self CPU time, {spec.profile} profiled step(s), "
                 f"load avg {result['load_avg']}")
        table = profile_markdown(result["profile_ops"], title)
        if not args.json:
            print(table, flush=True)
        if args.profile_out:
            with open(args.profile_out, "w") as f:
                f.write(table + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        print(json.dumps(run_here(OrigSpec(**json.loads(sys.argv[2])))), flush=True)
        sys.exit(0)
    sys.exit(main())
