"""Speed and memory options: int8 inference, torch.compile, the low-memory mode, `m3ae bench`.

Each test guards an invariant at m3ae-tiny size: an option changes how fast or how big a step is,
never what it computes (beyond the stated tolerance of int8).
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

from m3ae.models import M3AE, ModelConfig
from m3ae.train.config import OptimArgs
from m3ae.train.loop import train_step
from m3ae.train.memory import (OptimizerInBackward, enable_lean_memory, enable_low_memory,
                               optimizer_in_backward_blockers)
from m3ae.train.optim import build_optimizer
from m3ae.train.tasks import PretrainTask, VQATask

NUM_ANSWERS = 7


def _batch(job: str, config: ModelConfig, batch: int = 4, text_len: int = 12, seed: int = 0) -> dict:
    """A synthetic batch for ``job`` (pretrain or vqa) at the model's image size."""
    from m3ae.experiments.bench import synthetic_batch

    return synthetic_batch(job, config, batch, text_len, NUM_ANSWERS, torch.device("cpu"), seed=seed)


def _model(job: str, dropout: float | None = None) -> M3AE:
    torch.manual_seed(0)
    heads = ["mlm", "mim", "itm"] if job == "pretrain" else ["vqa"]
    config = ModelConfig.from_name("m3ae-tiny").with_heads(heads, num_answers=NUM_ANSWERS)
    if dropout is not None:
        config.text.dropout = config.fusion.dropout = dropout
    return M3AE(config).train()


# -------------------------------------------------------------------------------- low memory
# eps = 1 makes AdamW's update nearly linear in the gradient (g / (sqrt(v) + 1)), so parameters
# after a step differ only as much as the gradients do; with the default eps a gradient of ~0 has
# update ±lr whatever its sign, and rounding noise would look like a different step.
LINEAR_ADAM = OptimArgs(lr=1e-2, eps=1.0, weight_decay=0.01, warmup_steps=0, warmup_ratio=None)


@pytest.mark.parametrize("mode", ["lean", "low"])
@pytest.mark.parametrize("job", ["pretrain", "vqa"])
def test_memory_modes_take_the_same_steps(job, mode):
    """Tower checkpointing (lean), or all checkpointing + optimizer step inside backward (low) = the
    normal step (two steps, AdamW state)."""
    task = PretrainTask() if job == "pretrain" else VQATask()
    normal = _model(job)
    low = copy.deepcopy(normal)
    (enable_lean_memory if mode == "lean" else enable_low_memory)(low)
    checkpointed = [low.vision_encoder.grad_checkpointing, low.fusion.grad_checkpointing]
    assert checkpointed == ([True, False] if mode == "lean" else [True, True])
    opt_normal, opt_low = build_optimizer(normal, LINEAR_ADAM), build_optimizer(low, LINEAR_ADAM)
    in_backward = OptimizerInBackward(opt_low) if mode == "low" else None
    cpu = torch.device("cpu")
    for step in range(2):
        batch = _batch(job, normal.config, seed=step)
        a = train_step(task, normal, opt_normal, [batch], step=step, seed=0, precision="fp32", device=cpu,
                       scaler=None, clip_grad_norm=None)
        b = train_step(task, low, opt_low, [batch], step=step, seed=0, precision="fp32", device=cpu,
                       scaler=None, clip_grad_norm=None, in_backward=in_backward)
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
        if in_backward is not None:
            trainable = sum(1 for p in low.parameters() if p.requires_grad)
            assert in_backward.steps == trainable  # every parameter was updated once, from its hook
            assert all(p.grad is None for p in low.parameters())  # and its gradient freed
    for (name, p), q in zip(normal.named_parameters(), low.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    # the optimizer state is the main optimizer's (what checkpoints save)
    assert len(opt_low.state) == len(opt_normal.state)


def test_memory_modes_drop_the_autocast_weight_cache_without_changing_the_step():
    """lean/low cast weights at each use (no bf16 copies kept through the step): the same losses, and
    the same update up to the order in which a weight's gradients from several uses are summed."""
    from m3ae.hardware import autocast_context
    from m3ae.train.memory import autocast_weight_cache

    assert [autocast_weight_cache(m) for m in ("normal", "lean", "low")] == [True, False, False]
    cpu = torch.device("cpu")
    with autocast_context("bf16", cpu, weight_cache=False):
        assert not torch.is_autocast_cache_enabled()
    cached = _model("pretrain")
    uncached = copy.deepcopy(cached)
    batch = _batch("pretrain", cached.config, seed=0)
    runs = [train_step(PretrainTask(), m, build_optimizer(m, LINEAR_ADAM), [batch], step=0, seed=0,
                       precision="bf16", device=cpu, scaler=None, clip_grad_norm=None, weight_cache=cache)
            for m, cache in ((cached, True), (uncached, False))]
    assert runs[0] == runs[1]
    for p, q in zip(cached.parameters(), uncached.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


FREED_PROBE = """
import json, torch, sys
from m3ae.allocator import set_malloc_policy
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
note = set_malloc_policy(sys.argv[1]) if sys.argv[1] != "default" else ""
warm = torch.ones(6 << 20); del warm  # a 24 MiB free: glibc's dynamic mmap threshold rises to 24 MiB
x = torch.ones(4 << 20); before = rss(); del x  # 16 MiB, touched: by default now on the heap
print(json.dumps({"note": note, "freed_mib": (before - rss()) / 2**20}))
"""


def _probe(policy: str, **env: str) -> dict:
    import os
    import subprocess

    environ = {k: v for k, v in os.environ.items() if k != "M3AE_MALLOC"} | env
    done = subprocess.run([sys.executable, "-c", FREED_PROBE, policy], capture_output=True, text=True,
                          check=True, timeout=120, env=environ)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_malloc_policies_keep_or_return_a_freed_block():
    """A freed 16 MiB activation-sized block: ``return`` (memory low) gives it back to the OS,
    ``keep`` holds it for the next step, and M3AE_MALLOC=system leaves glibc as it is."""
    runs = {policy: _probe(policy) for policy in ("default", "keep", "return")}
    print(runs)
    assert "returns freed blocks" in runs["return"]["note"] and runs["return"]["freed_mib"] > 12, runs
    assert "keeps freed blocks" in runs["keep"]["note"] and runs["keep"]["freed_mib"] < 1, runs
    assert "M3AE_MALLOC=system" in _probe("return", M3AE_MALLOC="system")["note"]
    from m3ae.allocator import set_malloc_policy

    with pytest.raises(ValueError, match="keep"):
        set_malloc_policy("hold")


def test_low_memory_blockers_name_each_reason():
    assert optimizer_in_backward_blockers(accum=1, clip_grad_norm=None, scaler=None, world_size=1) == []
    reasons = optimizer_in_backward_blockers(accum=2, clip_grad_norm=1.0, scaler=object(), world_size=2)
    assert len(reasons) == 4 and "accumulation" in reasons[0] and "clip_grad_norm" in reasons[1]


def test_train_memory_override_parses_and_rejects_unknown_modes():
    from m3ae.errors import M3AEError
    from m3ae.train.config import RunConfig, apply_overrides

    cfg = apply_overrides(RunConfig(), ["--train.memory", "low", "--train.compile", "true"])
    assert cfg.train.memory == "low" and cfg.train.compile is True
    assert apply_overrides(RunConfig(), ["--train.memory", "lean"]).train.memory == "lean"
    with pytest.raises(M3AEError, match="train.memory must be one of"):
        apply_overrides(RunConfig(), ["--train.memory", "tiny"])


def test_fit_with_memory_low_matches_normal_and_logs_why_it_falls_back(tmp_path):
    """`fit` with train.memory low: the same parameters as normal; with accumulation it keeps only
    checkpointing and says why in the run log."""
    from helpers.toy import ToyModel, ToyTask, toy_loaders

    from m3ae.train.config import EvalArgs, TrainArgs
    from m3ae.train.loop import fit
    from m3ae.train.runlog import read_log

    class OneGraphToyTask(ToyTask):
        def losses_one_graph(self, model, batch):
            loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
            return {"loss": loss, "mse": loss}

    params = {}
    for memory, per_device in (("normal", 4), ("low", 4), ("low", 2)):
        model = ToyModel()
        train = TrainArgs(batch_size=4, per_device_batch_size=per_device, max_steps=4, log_every=1,
                          progress=False, tensorboard=False, precision="fp32", memory=memory)
        run_dir = tmp_path / f"{memory}_{per_device}"
        fit(OneGraphToyTask(), model, toy_loaders(per_device), LINEAR_ADAM, train, EvalArgs(), run_dir=run_dir)
        params[(memory, per_device)] = torch.cat([p.detach().flatten() for p in model.parameters()])
        notes = [r["memory_note"] for r in read_log(run_dir, "run") if "memory_note" in r]
        if memory == "low":
            assert ("inside backward" in notes[0]) == (per_device == 4)
            assert per_device == 4 or "gradient accumulation" in notes[0]
    torch.testing.assert_close(params[("low", 4)], params[("normal", 4)], rtol=1e-5, atol=1e-6)


def test_memory_auto_measures_once_then_reads_its_cache_and_changes_no_step(tmp_path, monkeypatch):
    """train.memory auto (the default): the run times normal and lean on its first micro-batch, logs
    which it chose and why, trains exactly as normal does, and a second run of the same job on this
    machine reads the cached choice instead of measuring again."""
    from helpers.toy import ToyModel, ToyTask, toy_loaders

    from m3ae.train import memory as memory_module
    from m3ae.train.config import EvalArgs, TrainArgs
    from m3ae.train.loop import fit
    from m3ae.train.runlog import read_log

    monkeypatch.setenv("M3AE_CACHE_DIR", str(tmp_path / "cache"))
    assert TrainArgs().memory == "auto"
    params, notes = {}, {}
    for name, memory in (("normal", "normal"), ("auto", "auto"), ("again", "auto")):
        if name == "again":  # the cached choice: no more timing
            monkeypatch.setattr(memory_module, "time_forward_backward",
                                lambda *a, **k: pytest.fail("measured again despite the cache"))
        model = ToyModel()
        train = TrainArgs(batch_size=4, per_device_batch_size=4, max_steps=3, log_every=1, progress=False,
                          tensorboard=False, precision="fp32", memory=memory)
        fit(ToyTask(), model, toy_loaders(4), LINEAR_ADAM, train, EvalArgs(), run_dir=tmp_path / name)
        params[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
        notes[name] = [r for r in read_log(tmp_path / name, "run") if "memory_note" in r][0]
    for name in ("auto", "again"):
        assert notes[name]["memory_requested"] == "auto" and notes[name]["memory"] in ("normal", "lean")
        assert f"auto chose {notes[name]['memory']}" in notes[name]["memory_note"]
        assert " s lean vs " in notes[name]["memory_note"]  # the measured times, in the log
        torch.testing.assert_close(params[name], params["normal"], rtol=0, atol=0)
    assert "cached in" in notes["again"]["memory_note"] and "cached in" not in notes["auto"]["memory_note"]
    cache = json.loads((tmp_path / "cache" / "memory_modes.json").read_text())
    assert len(cache) == 1 and set(next(iter(cache.values()))["seconds"]) == {"normal", "lean"}


def test_memory_auto_picks_lean_only_when_it_is_not_slower(monkeypatch, tmp_path):
    """The rule itself, on m3ae-tiny with stubbed timings: lean up to 5% slower than normal, else normal."""
    from m3ae.train import memory as memory_module

    model = _model("vqa")
    batch = _batch("vqa", model.config)
    for i, (lean, normal, expected) in enumerate(((1.00, 1.00, "lean"), (1.04, 1.0, "lean"), (1.10, 1.0, "normal"))):
        monkeypatch.setenv("M3AE_CACHE_DIR", str(tmp_path / str(i)))
        seen = []

        def fake(task, model, batch, precision, device, weight_cache, repeats=2, lean=lean, normal=normal):
            on = model.vision_encoder.grad_checkpointing
            seen.append(on)
            return lean if on else normal

        monkeypatch.setattr(memory_module, "time_forward_backward", fake)
        mode, why = memory_module.choose_memory_mode(VQATask(), model, batch, "VQATask", "fp32", torch.device("cpu"))
        assert mode == expected and f"auto chose {expected}" in why
        assert seen == [False, True]  # normal timed without checkpointing, lean with it
        assert model.vision_encoder.grad_checkpointing is False  # the probe leaves the model as it was


# ------------------------------------------------------------------------------------- int8
def test_int8_logits_agree_with_fp32():
    """Dynamic int8 quantisation keeps the VQA answer of (nearly) every random input.

    Measured on m3ae-tiny (random weights, 64 inputs): argmax agreement 100%, max |logit
    difference| 0.008 for logits of magnitude up to 0.17; the bounds below leave room for
    other CPUs' int8 kernels.
    """
    from m3ae.inference.quantize import quantize_int8

    torch.manual_seed(0)
    config = ModelConfig.from_name("m3ae-tiny").with_heads(["vqa"], num_answers=NUM_ANSWERS)
    model = M3AE(config).eval()
    batch = _batch("vqa", config, batch=64, text_len=16, seed=1)
    task = VQATask()
    with torch.no_grad():
        ref = task.logits(model, batch)
        out = task.logits(quantize_int8(model), batch)
    assert type(model.fusion.text_layers[0].fc1).__name__ == "Linear"  # the dynamic int8 class
    assert "quantized" in type(model.fusion.text_layers[0].fc1).__module__
    assert "quantized" not in type(model.heads["vqa"].fc2).__module__  # heads stay fp32
    assert not any("quantized" in type(m).__module__ for m in model.text_encoder.modules())  # so does the text tower
    assert "quantized" not in type(model.text_proj).__module__
    agree = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree >= 0.9
    assert (out - ref).abs().max().item() < 0.05


def test_int8_is_inference_and_cpu_only():
    from m3ae.experiments.bench import BenchSpec, check_spec
    from m3ae.errors import M3AEError
    from m3ae.hardware import INFERENCE_PRECISIONS, PRECISIONS, resolve_inference_precision

    assert "int8" in INFERENCE_PRECISIONS and "int8" not in PRECISIONS
    assert resolve_inference_precision("int8", "cpu").name == "int8"
    with pytest.raises(M3AEError, match="CPU only"):
        resolve_inference_precision("int8", "cuda")
    with pytest.raises(M3AEError, match="--job infer only"):
        check_spec(BenchSpec(job="vqa", precision="int8"))


def test_bf16_inference_holds_bf16_weights_with_the_autocast_answers(tmp_path):
    """bf16 inference keeps its weight matrices in bf16 (half of fp32's memory; autocast over fp32
    weights kept both) and gives the answers autocast gave: a folder loaded at bf16 holds every
    Linear/Conv/vocabulary matrix in bf16, the rest in fp32, and its logits match autocast's.

    Measured on m3ae-tiny (random weights, 64 inputs): argmax agreement 100%, max |logit
    difference| 0.004.
    """
    from m3ae.inference.quantize import load_for_inference
    from m3ae.train.loop import autocast_context

    torch.manual_seed(0)
    config = ModelConfig.from_name("m3ae-tiny").with_heads(["vqa"], num_answers=NUM_ANSWERS)
    model = M3AE(config).eval()
    model.save_pretrained(tmp_path / "model")
    batch = _batch("vqa", config, batch=64, text_len=16, seed=1)
    cpu = torch.device("cpu")
    with torch.no_grad(), autocast_context("bf16", cpu):
        ref = VQATask().logits(model, batch).float()
    lean, precision = load_for_inference(tmp_path / "model", "bf16", cpu)
    assert precision.name == "bf16"
    from m3ae.models.io import low_precision_names

    low = low_precision_names(lean)
    dtypes = {name: p.dtype for name, p in lean.named_parameters()}
    assert {dtypes[n] for n in low} == {torch.bfloat16}  # the matrices: nearly all of the memory
    assert {d for n, d in dtypes.items() if n not in low} == {torch.float32}  # norms, biases, small tables
    assert "vision_encoder.patch_embed.weight" in low and "text_encoder.embeddings.word_embeddings.weight" in low
    assert "vision_encoder.pos_embed" not in low and "fusion.text_layers.0.fc1.bias" not in low
    share = sum(p.numel() for n, p in lean.named_parameters() if n in low) / sum(p.numel() for p in lean.parameters())
    assert share > 0.9
    assert not lean.training
    with torch.no_grad(), autocast_context("bf16", cpu):
        out = VQATask().logits(lean, batch).float()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean().item() >= 0.95
    assert (out - ref).abs().max().item() < 0.05
    fp32, _ = load_for_inference(tmp_path / "model", "fp32", cpu)  # fp32 and int8 load as stored
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}


def test_a_low_precision_load_still_refuses_non_finite_weights(tmp_path):
    """Reading a folder tensor by tensor (the bf16 path) checks each tensor before its cast."""
    from safetensors.torch import save_file

    from m3ae.errors import CheckpointError

    torch.manual_seed(0)
    config = ModelConfig.from_name("m3ae-tiny").with_heads(["vqa"], num_answers=NUM_ANSWERS)
    M3AE(config).save_pretrained(tmp_path / "model")
    path = tmp_path / "model" / "model.safetensors"
    from safetensors.torch import load_file

    state = load_file(str(path))
    state["heads.vqa.fc2.bias"][0] = float("nan")
    save_file(state, str(path))
    for dtype in (torch.bfloat16, torch.float16):
        with pytest.raises(CheckpointError, match="NaN/Inf"):
            M3AE.from_pretrained(tmp_path / "model", verify=False, dtype=dtype)


def test_auto_inference_precision_is_the_fastest_that_keeps_fp32s_answers():
    from m3ae.inference.quantize import pick_precision

    results = {"fp32": {"seconds": 0.6, "same_answer_pct": 100.0},
               "bf16": {"seconds": 0.35, "same_answer_pct": 100.0},
               "int8": {"seconds": 0.30, "same_answer_pct": 97.2}}
    name, why = pick_precision(results)
    assert name == "bf16" and "int8 300 ms (97%" in why  # int8 is faster but changes answers
    results["int8"]["same_answer_pct"] = 100.0
    assert pick_precision(results)[0] == "int8"
    results["fp32"]["seconds"] = 0.1
    assert pick_precision(results)[0] == "fp32"


def test_pipeline_precision_auto_measures_once_per_machine_and_model(tmp_path, monkeypatch):
    """`VQAPipeline.from_pretrained(precision="auto")` on a CPU times fp32 / bf16 / int8 on the bundled
    probe, keeps the fastest with fp32's answers, caches the choice, and reads it back next time."""
    from m3ae.inference import quantize
    from m3ae.data import load_tokenizer
    from m3ae.inference import VQAPipeline

    monkeypatch.setenv("M3AE_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    config = ModelConfig.from_name("m3ae-tiny").with_heads(["vqa"], num_answers=len(INT8_ANSWERS))
    M3AE(config).save_pretrained(tmp_path / "model", tokenizer=load_tokenizer(),
                                 extra={"answers": INT8_ANSWERS, "preprocessing": {"max_text_len": 16}})
    first = VQAPipeline.from_pretrained(tmp_path / "model", precision="auto")
    cache = json.loads((tmp_path / "cache" / "inference_precision.json").read_text())
    (entry,) = cache.values()
    assert first.precision.name == entry["precision"] and "fastest with" in first.precision.reason
    assert set(entry["results"]) >= {"fp32", "int8"} and entry["results"]["fp32"]["same_answer_pct"] == 100.0
    monkeypatch.setattr(quantize, "measure_precisions", lambda *a, **k: pytest.fail("measured again"))
    again = VQAPipeline.from_pretrained(tmp_path / "model", precision="auto")
    assert again.precision.name == first.precision.name and "cached" in again.precision.reason
    assert again(Path(quantize.__file__).parents[1] / "assets" / "probe" / "synpic27013.png", "is this a ct?", top_k=1)[0]["answer"] in INT8_ANSWERS


INT8_ANSWERS = ["yes", "no", "ct", "mri", "left", "right", "brain"]


def test_predict_cli_int8(tmp_path, capsys):
    from m3ae.cli import main
    from m3ae.data import load_tokenizer

    from PIL import Image

    torch.manual_seed(0)
    config = ModelConfig.from_name("m3ae-tiny").with_heads(["vqa"], num_answers=len(INT8_ANSWERS))
    M3AE(config).save_pretrained(tmp_path / "model", tokenizer=load_tokenizer(),
                                 extra={"answers": INT8_ANSWERS, "preprocessing": {"max_text_len": 16}})
    Image.new("L", (40, 40), 128).save(tmp_path / "scan.png")
    argv = ["predict", "--model", str(tmp_path / "model"), "--image", str(tmp_path / "scan.png"),
            "--question", "is this a ct?", "--json"]
    assert main([*argv, "--precision", "int8"]) == 0
    int8 = json.loads(capsys.readouterr().out)["answers"]
    assert main([*argv, "--precision", "fp32"]) == 0
    fp32 = json.loads(capsys.readouterr().out)["answers"]
    assert int8[0]["answer"] == fp32[0]["answer"]
    assert main([*argv, "--precision", "int8", "--explain", str(tmp_path / "h.png")]) == 2
    assert "int8" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- compile
def _compile_parity(backend: str, job: str, only_vision: bool = False) -> None:
    """Compiled and eager give the same outputs, and (training) the same gradients."""
    from m3ae.compiling import compile_model

    task = PretrainTask() if job == "pretrain" else VQATask()
    # no dropout: inductor draws its own random masks (a different stream from eager's), so with
    # dropout the two would differ by design, not by a bug
    eager = _model(job, dropout=0.0)
    compiled = copy.deepcopy(eager)
    if only_vision:
        for block in compiled.vision_encoder.blocks:
            block.compile(backend=backend, dynamic=None)
    else:
        compile_model(compiled, backend=backend)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # names unchanged
    batch = _batch(job, eager.config, batch=2, text_len=12)
    grads = []
    for model in (eager, compiled):
        torch.manual_seed(0)
        losses = task.forward_backward(model, batch, lambda loss: loss)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        grads[-1]["loss"] = losses["loss"]
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-5, msg=name)


def test_compiled_blocks_match_eager_traced():
    """Dynamo + AOTAutograd without code generation (seconds): every compiled block is wired exactly."""
    _compile_parity("aot_eager", "vqa")


@pytest.mark.slow
def test_compiled_blocks_match_eager_inductor():
    """Inductor's generated C++ kernels, forward and backward, for the ViT blocks only: each kind of
    block costs 20-35 s of gcc on a cold cache, and the traced test above covers the wiring of all."""
    _compile_parity("inductor", "vqa", only_vision=True)


# ------------------------------------------------------------------------------------ bench
def test_bench_cli_json_runs_the_job_in_a_fresh_process(capsys):
    from m3ae.cli import main

    tiny = ["--size", "m3ae-tiny", "--image-size", "32", "--text-len", "16", "--steps", "1", "--warmup", "0",
            "--threads", "1", "--json"]
    assert main(["bench", "--job", "infer", "--precision", "int8", *tiny]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("sec_per_step", "samples_per_s", "peak_rss_gib", "precision", "threads", "cpu_bf16",
                "load_avg", "batch", "image_size", "text_len"):
        assert key in result, key
    assert result["precision"] == "int8" and result["threads"] == 1 and isinstance(result["cpu_bf16"], bool)
    assert result["batch"] == 1 and result["image_size"] == 32  # the paper's batch, the size asked
    assert main(["bench", "--job", "vqa", "--precision", "int8", *tiny]) == 2
    assert "--job infer only" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")
def test_bench_names_the_signal_that_killed_a_run():
    """An out-of-memory kill leaves no error line; the message says what happened instead."""
    import subprocess

    from m3ae.experiments.bench import child_failure

    kill = "import os, signal, sys; print('a warning', file=sys.stderr); os.kill(os.getpid(), signal.SIGKILL)"
    killed = subprocess.run([sys.executable, "-c", kill], capture_output=True, text=True)
    assert "SIGKILL" in child_failure(killed) and "out of memory" in child_failure(killed)
    failed = subprocess.run([sys.executable, "-c", "raise SystemExit('no such model')"], capture_output=True, text=True)
    assert child_failure(failed) == "no such model"


def test_bench_training_step_in_process_low_memory():
    """The child side (`run_here`) of a pre-training step with memory low: the paper's batch of 4."""
    from m3ae.experiments.bench import BenchSpec, run_here

    result = run_here(BenchSpec(job="pretrain", size="m3ae-tiny", image_size=32, text_len=16, steps=1,
                                warmup=0, memory="low", precision="fp32"))
    assert result["batch"] == 4 and result["precision"] == "fp32" and result["sec_per_step"] > 0


def test_bench_flops_count_a_training_step_as_about_three_forwards():
    """Backward costs about two forwards (input and weight gradients; attention's backward counts a
    little more), so a VQA training step counts about 3x the FLOPs of inference at the same shapes
    (3.2x measured on m3ae-tiny). The count is of model FLOPs: memory low (checkpointing) counts
    the same as normal."""
    from m3ae.experiments.bench import BenchSpec, run_here

    shapes = dict(size="m3ae-tiny", image_size=32, text_len=16, batch=4, steps=1, warmup=0, precision="fp32",
                  flops=True)
    infer = run_here(BenchSpec(job="infer", **shapes))
    train = run_here(BenchSpec(job="vqa", memory="low", **shapes))
    assert infer["gflop_per_step"] > 0 and train["achieved_gflops"] > 0
    assert 2.5 <= train["gflop_per_step"] / infer["gflop_per_step"] <= 3.5
    assert run_here(BenchSpec(job="vqa", **shapes))["gflop_per_step"] == train["gflop_per_step"]
