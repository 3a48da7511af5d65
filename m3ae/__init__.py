"""m3ae: multi-modal masked autoencoders for medical vision-and-language pre-training.

The model package imports with torch, transformers and safetensors only; data preparation and
training code live in `m3ae.data` and `m3ae.train` and are imported on first use.
"""
from __future__ import annotations

import sys

from m3ae._lazy import MovedModules, lazy_getattr
from m3ae._version import __version__

# public name -> module that defines it; resolved on first access (PEP 562) so that
# `import m3ae` stays light and never imports training extras.
_LAZY = {
    "M3AE": "m3ae.models.m3ae",
    "ModelConfig": "m3ae.models.config",
    "create_model": "m3ae.weights.factory",
    "list_models": "m3ae.models.config",
    "load_upstream": "m3ae.weights.upstream",
    "VQAPipeline": "m3ae.inference.pipeline",
    "metrics": "m3ae.metrics",
}

__all__ = ["__version__", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())

# old module path -> its new home (docs/architecture.md, "Layout"): importing the old path gives the
# new module with a DeprecationWarning. These are names only: nothing here is imported until asked.
_MOVED = {
    "m3ae.demo": "m3ae.experiments.demo",
    "m3ae.ablate": "m3ae.experiments.ablate",
    "m3ae.bench": "m3ae.experiments.bench",
    "m3ae.bench_core": "m3ae.experiments.bench_core",
    "m3ae.gpu_check": "m3ae.experiments.gpu_check",
    "m3ae.explain": "m3ae.inference.explain",
    "m3ae.quantize": "m3ae.inference.quantize",
    "m3ae.export": "m3ae.inference.export",
    "m3ae.embed": "m3ae.inference.embed",
    "m3ae.serve": "m3ae.inference.server",
    "m3ae.serve.app": "m3ae.inference.server.app",
    "m3ae.model_card": "m3ae.reports.model_card",
    "m3ae.viz": "m3ae.reports.viz",
    "m3ae.serve.cli": "m3ae.cli.serve",
    "m3ae.inference_cli": "m3ae.cli.predict",
    "m3ae.convert_cli": "m3ae.cli.convert",
    "m3ae.export_cli": "m3ae.cli.export",
    "m3ae.hub_cli": "m3ae.cli.push",
    "m3ae.data.prepare_cli": "m3ae.cli.prepare",
    "m3ae.data.corpus_cli": "m3ae.cli.corpus",
    "m3ae.train.cli_pretrain": "m3ae.cli.pretrain",
    "m3ae.train.cli_finetune": "m3ae.cli.finetune",
    "m3ae.train.cli_evaluate": "m3ae.cli.evaluate",
    "m3ae.train._cli_common": "m3ae.cli._recipe",
}
# the old modules that were also scripts: `python -m m3ae.bench ...` runs the command, as before
_RUN_AS = {"m3ae.bench": "m3ae.cli.bench", "m3ae.gpu_check": "m3ae.cli.gpu_check"}
if not any(isinstance(f, MovedModules) for f in sys.meta_path):
    sys.meta_path.insert(0, MovedModules(_MOVED, _RUN_AS))  # first: a moved package's folder must not
    # load an old child path (m3ae.serve.app) from its file a second time
