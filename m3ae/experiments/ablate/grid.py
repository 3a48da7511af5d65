"""The ablation grid: cells of recipe overrides, the scales they run at (small on the bundled VQA-RAD,
paper on prepared ROCO/MedICaT), the built-in grids and YAML grid files, and each unit's two recipes."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3ae.errors import M3AEError

ABLATE_MARKER = ".m3ae-ablate"
"""Marks a folder `m3ae ablate` wrote (it never writes into or deletes anything else)."""
RESULT = "result.json"
"""A unit's finished marker and result."""
METRICS = ("open", "closed", "overall")


# ------------------------------------------------------------------------------------ grids
@dataclass(frozen=True)
class Cell:
    """One configuration of a grid.

    ``pretrain`` and ``finetune`` are nested overrides, deep-merged into the grid's recipes (e.g.
    ``{"task": {"mask_ratio": 0.5}}``; ``model.config`` takes the model's dotted keys, e.g.
    ``{"model": {"config": {"pixel_decoder.type": "mlp"}}}``). ``pretrain: None`` = no pre-training:
    fine-tune from the model before pre-training.
    """

    name: str
    label: str = ""
    """What differs from the default, in words."""
    pretrain: dict[str, Any] | None = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    expect: str = "worse"
    """The paper's direction for this cell against the default: "worse", "better" or "" (none)."""


@dataclass(frozen=True)
class Scale:
    """Where a grid's recipes come from and how long they train."""

    kind: str
    """"small": the demo's m3ae-small recipes on the bundled VQA-RAD; "paper": YAML recipes + user data."""
    pretrain_steps: int = 0
    finetune_epochs: float = 0.0
    finetune_max_steps: int | None = None
    subset_images: int | None = None
    """small: use only this many train images (the --quick grid)."""
    batch_size: int = 32
    pretrain_recipe: str = "configs/pretrain/m3ae.yaml"
    finetune_recipe: str = "configs/finetune/vqa_rad.yaml"


@dataclass(frozen=True)
class Grid:
    name: str
    description: str
    scale: Scale
    cells: tuple[Cell, ...]
    default: str = "default"
    """Name of the cell every other cell is compared with."""

    def __post_init__(self) -> None:
        names = [c.name for c in self.cells]
        if len(set(names)) != len(names):
            raise M3AEError(f"grid {self.name}: duplicate cell names {sorted({n for n in names if names.count(n) > 1})}")
        if self.default not in names:
            raise M3AEError(f"grid {self.name}: no cell named {self.default!r} to compare with (cells: {names})")


SMALL = Scale("small", pretrain_steps=50, finetune_epochs=4)
"""designs-small / steps-small: 50 pre-training steps (batch 32, 1,600 pairs) and 4 fine-tuning epochs
(344 steps) per unit: measured 53 s + 104 s on one core, so 14 cells x 3 seeds, two units at a time,
fit into an hour on a 2-core CPU (docs/ablation.md). The demo trains 6x / 2.5x longer."""
QUICK = Scale("small", pretrain_steps=2, finetune_epochs=1, finetune_max_steps=2, subset_images=16, batch_size=8)
PAPER = Scale("paper")


def design_cells(middle_layer: int) -> tuple[Cell, ...]:
    """The cells of the designs grids; ``middle_layer`` = the fusion layer MIM reads by default."""
    model = lambda **kw: {"model": {"config": kw}}  # noqa: E731
    return (
        Cell("default", "the M3AE recipe (image mask 0.75, text mask 0.15, MIM from the middle, "
                        "MLM from the last layer, transformer pixel decoder, MLP text decoder)", expect=""),
        *(Cell(f"image-mask-{r:g}", f"image mask ratio {r:g}", {"task": {"mask_ratio": r}}) for r in (0.15, 0.5, 0.9)),
        *(Cell(f"text-mask-{r:g}", f"text mask ratio {r:g}", {"data": {"mlm_probability": r}}) for r in (0.3, 0.5)),
        Cell("mim-last-layer", "MIM reads the last fusion layer", model(mim_layer=-1)),
        Cell("mlm-middle-layer", f"MLM reads fusion layer {middle_layer}", model(mlm_layer=middle_layer)),
        Cell("mlp-pixel-decoder", "an MLP pixel decoder instead of the transformer", model(**{"pixel_decoder.type": "mlp"})),
        Cell("transformer-text-decoder", "a transformer text decoder instead of the MLP",
             model(mlm_decoder="transformer")),
        Cell("no-mim", "without MIM", {"task": {"mim_weight": 0.0}}),
        Cell("no-mlm", "without MLM", {"task": {"mlm_weight": 0.0}}),
        Cell("no-itm", "without ITM", {"task": {"itm_weight": 0.0}}),
        Cell("no-pretraining", "no pre-training (the same fine-tune from the initial model)", None),
    )


def steps_cells(default_steps: int) -> tuple[Cell, ...]:
    """Pre-training length as a share of the default."""
    cells = []
    for share in (0.0, 0.25, 0.5, 1.0, 2.0):
        steps = round(default_steps * share)
        name = "default" if share == 1.0 else f"steps-{share:.0%}"
        expect = "" if share == 1.0 else ("better" if share > 1 else "worse")
        pretrain = None if steps == 0 else {"train": {"max_steps": steps}}
        cells.append(Cell(name, f"{share:.0%} of the pre-training steps ({steps})", pretrain, expect=expect))
    return tuple(cells)


def builtin_grids() -> dict[str, Grid]:
    return {
        "designs-small": Grid("designs-small", "the three designs and the objectives, m3ae-small on the bundled "
                                               "VQA-RAD (clean protocol)", SMALL, design_cells(1)),
        "steps-small": Grid("steps-small", "pre-training length, m3ae-small on the bundled VQA-RAD",
                            SMALL, steps_cells(SMALL.pretrain_steps)),
        "designs-paper": Grid("designs-paper", "the designs at paper scale: m3ae-base pre-trained on ROCO + MedICaT, "
                                               "fine-tuned on VQA-RAD (for a GPU cluster)", PAPER, design_cells(3)),
        "quick": Grid("quick", "two cells, a few steps on a data subset (CI)", QUICK,
                      (Cell("default", "the M3AE recipe", expect=""),
                       Cell("no-mim", "without MIM", {"task": {"mim_weight": 0.0}}))),
    }


def grid_from_file(path: Path) -> Grid:
    """A user's grid: YAML with ``cells`` (name, label, pretrain, finetune, expect) and optionally
    ``base`` (a built-in grid whose scale and recipes it uses; default designs-small), ``name`` and
    ``default`` (the cell to compare with)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise M3AEError(f"{path}: cannot read the grid ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cells"), list) or not doc["cells"]:
        raise M3AEError(f"{path}: a grid file needs a non-empty list `cells`")
    grids = builtin_grids()
    base = doc.get("base", "designs-small")
    if base not in grids:
        raise M3AEError(f"{path}: base {base!r} is not a built-in grid ({sorted(grids)})")
    cells = []
    for i, item in enumerate(doc["cells"], start=1):
        if not isinstance(item, dict) or "name" not in item:
            raise M3AEError(f"{path}: cell {i} needs a `name`")
        unknown = set(item) - {f.name for f in dataclasses.fields(Cell)}
        if unknown:
            raise M3AEError(f"{path}: cell {item['name']!r} has unknown keys {sorted(unknown)}")
        for key in ("pretrain", "finetune"):
            if item.get(key) is not None and not isinstance(item[key], dict):
                raise M3AEError(f"{path}: cell {item['name']!r}: `{key}` must be a mapping of overrides")
        item = {"pretrain": {}, "finetune": {}, **item}
        cells.append(Cell(**{**item, "name": str(item["name"]), "finetune": item["finetune"] or {}}))
    return Grid(str(doc.get("name", path.stem)), str(doc.get("description", f"grid from {path}")),
                grids[base].scale, tuple(cells), str(doc.get("default", cells[0].name)))


def find_grid(name: str) -> Grid:
    grids = builtin_grids()
    if name in grids:
        return grids[name]
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise M3AEError(f"{path}: grid file not found")
        return grid_from_file(path)
    raise M3AEError(f"unknown grid {name!r}; built-in: {', '.join(grids)}; or give a YAML file")


# ---------------------------------------------------------------------------------- recipes
def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``overrides`` merged in (nested mappings merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Inputs:
    """Prepared data and recipe sources of a run."""

    pretrain_data: list[str]
    finetune_data: str
    text_dir: str | None = None
    """small: the frozen MiniLM text tower folder."""


def base_recipes(scale: Scale, inputs: Inputs, seed: int, pretrained: str | None) -> tuple[dict, dict]:
    """The grid's pre-training and fine-tuning recipes (as dicts) for one seed, before cell overrides.

    ``pretrained``: the pre-trained folder the fine-tune starts from, or None (no pre-training).
    """
    if scale.kind == "small":
        from m3ae.experiments import demo

        sizes = dataclasses.replace(demo.FULL, pretrain_steps=scale.pretrain_steps,
                                    finetune_epochs=scale.finetune_epochs, finetune_max_steps=scale.finetune_max_steps,
                                    batch_size=scale.batch_size, finetune_batch_size=scale.batch_size,
                                    subset_images=scale.subset_images)
        text = Path(inputs.text_dir)
        pre = demo.pretrain_config(sizes, seed, text)
        fine = demo.finetune_config(sizes, seed, text, Path(pretrained) if pretrained else None)
        for recipe in (pre, fine):
            recipe["train"]["progress"] = False
        return pre, fine
    import yaml

    recipes = []
    for path in (scale.pretrain_recipe, scale.finetune_recipe):
        if not Path(path).is_file():
            raise M3AEError(f"{path}: recipe not found (run from the repository root, where configs/ is)")
        recipes.append(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
    pre, fine = recipes
    pre = deep_merge(pre, {"train": {"seed": seed}})
    fine = deep_merge(fine, {"train": {"seed": seed}})
    if pretrained:
        fine["model"]["pretrained"] = pretrained
    else:  # the same towers as pre-training starts from, no fusion weights
        fine["model"].update(pretrained=None, vision_weights=pre["model"].get("vision_weights"),
                             text_weights=pre["model"].get("text_weights"))
    return pre, fine


def unit_recipes(grid: Grid, cell: Cell, inputs: Inputs, seed: int, folder: Path) -> dict[str, dict | None]:
    """Both recipes of one unit with the cell's overrides applied; "pretrain" is None without pre-training."""
    pretrained = None if cell.pretrain is None else str(folder / "pretrain" / "best")
    pre, fine = base_recipes(grid.scale, inputs, seed, pretrained)
    return {"pretrain": None if cell.pretrain is None else deep_merge(pre, cell.pretrain),
            "finetune": deep_merge(fine, cell.finetune)}


def check_recipes(grid: Grid, inputs: Inputs) -> None:
    """Every cell's recipes parse (a typo in a grid fails before hours of training, naming the cell)."""
    from m3ae.train.config import config_from_dict

    for cell in grid.cells:
        for stage, recipe in unit_recipes(grid, cell, inputs, 0, Path("unit")).items():
            if recipe is not None:
                config_from_dict(recipe, where=f"grid {grid.name}, cell {cell.name!r}, {stage} recipe")


# ------------------------------------------------------------------------------------ units
def unit_dir(out: Path, cell: str, seed: int) -> Path:
    return out / "cells" / cell / f"seed_{seed}"


def list_grids() -> str:
    lines = []
    for grid in builtin_grids().values():
        scale = grid.scale
        length = (f"{scale.pretrain_steps} pre-training steps, {scale.finetune_epochs:g} fine-tuning epochs"
                  if scale.kind == "small" else f"recipes {scale.pretrain_recipe} + {scale.finetune_recipe}")
        lines.append(f"{grid.name}: {grid.description} ({length})")
        lines += [f"  {c.name:<26} {c.label}" for c in grid.cells]
    return "\n".join(lines)


