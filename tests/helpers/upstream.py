"""An official-layout (Lightning) M3AE checkpoint of a tiny model, for the importer's tests."""
from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import torch

from m3ae.models import M3AE, ModelConfig
from m3ae.weights.upstream import to_upstream_state_dict

LEFTOVERS = {
    "vision_encoder.positional_embedding": (7, 8),
    "vision_encoder.token_embedding.weight": (10, 8),
    "vision_encoder.ln_final.weight": (8,),
    "vision_encoder.ln_final.bias": (8,),
}


def tiny(heads=("mlm", "mim", "itm"), **kw) -> M3AE:
    torch.manual_seed(0)
    return M3AE(ModelConfig.from_name("m3ae-tiny").with_heads(list(heads), **kw)).eval()


@contextlib.contextmanager
def pickled_as(cls: type, module: str) -> Iterator[None]:
    """Inside, pickle stores ``cls`` by reference as ``module.<name>``: fake modules stand for
    packages the test machine lacks (pytorch_lightning), just for a save."""
    parts = module.split(".")
    names = [".".join(parts[: i + 1]) for i in range(len(parts))]
    fakes = {name: types.ModuleType(name) for name in names}
    setattr(fakes[module], cls.__name__, cls)
    own = cls.__module__
    cls.__module__ = module
    sys.modules.update(fakes)
    try:
        yield
    finally:
        for name in names:
            del sys.modules[name]
        cls.__module__ = own


class ModelCheckpoint:  # stands for pytorch_lightning's callback class, pickled by reference
    pass


def write_upstream_ckpt(path: Path, model: M3AE, **extra_sd: torch.Tensor) -> Path:
    """An official-layout Lightning checkpoint of `model` (keys, leftovers, callbacks class ref)."""
    cfg = model.config
    sd = to_upstream_state_dict(model.state_dict(), cfg, leftover_shapes=LEFTOVERS) | extra_sd
    hp = {
        "config": {
            "image_size": cfg.vision.image_size,
            "num_heads": cfg.fusion.heads,
            "mim_layer": cfg.mim_layer,
            "mim_decoder_num_heads": cfg.pixel_decoder.heads,
            "mim_prob": 0.75,
            "drop_rate": 0.1,
        }
    }
    # pickle stores the class by reference; fake Lightning's modules just for the save
    with pickled_as(ModelCheckpoint, "pytorch_lightning.callbacks.model_checkpoint"):
        torch.save(
            {
                "epoch": 3,
                "global_step": 10,
                "pytorch-lightning_version": "1.3.2",
                "state_dict": sd,
                "hyper_parameters": hp,
                "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5)}},
            },
            path,
        )
    return path
