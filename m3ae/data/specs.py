"""Datasets are data: one ``DatasetSpec`` per benchmark in the ``DATASETS`` registry.

A spec says which task a benchmark serves, how its raw release is read, where upstream's .arrow
files are named, and the recipe defaults the original used. The generic dataset class and
``m3ae prepare`` are driven entirely by these entries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from m3ae.data import sources
from m3ae.errors import M3AEError


@dataclass(frozen=True)
class DatasetSpec:
    """A benchmark as the library sees it."""

    name: str
    task: str
    """pretrain | vqa | cls | irtr."""
    reader: Callable | None
    """``reader(src, protocol, seed, issues, **options)`` -> splits; None for ``custom``."""
    layout: str
    """The raw layout ``--src`` must point at (shown in ``m3ae prepare --help`` and errors)."""
    max_text_len: int
    """Text length the original recipe used; ``m3ae prepare`` counts the texts longer than it."""
    paper_num_answers: int | None = None
    """Answer/class count the original config expects under the paper protocol."""
    options: dict[str, str] = field(default_factory=dict)
    """Reader keyword -> the ``prepare_dataset`` argument that fills it (e.g. MELINDA's
    ``label_column``; ``pool_size`` of ROCO retrieval comes from ``eval_size``)."""


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "roco",
            "pretrain",
            sources.read_roco,
            "{train,val,test}/radiology/{images/,captions.txt,dlinks.txt} [+ references/roco_*_references.jsonl]",
            64,
            options={"references": "references"},
        ),
        DatasetSpec(
            "medicat",
            "pretrain",
            sources.read_medicat,
            "release/s2_full_figures_oa_nonroco_combined_medical_top4_public.jsonl + release/figures/",
            64,
            options={"eval_size": "eval_size"},
        ),
        DatasetSpec(
            "vqa-rad",
            "vqa",
            sources.read_vqa_rad,
            "trainset.json, testset.json [, valset.json], images/",
            32,
            498,
        ),
        DatasetSpec(
            "slake", "vqa", sources.read_slake, "train.json, validate.json, test.json, imgs/", 32, 222
        ),
        DatasetSpec(
            "vqa-med-2019",
            "vqa",
            sources.read_medvqa_2019,
            "{train,val,test}/QA/{Modality,Organ,Plane}.csv + {train,val,test}/images/ (the original code's), "
            "or <Split>/QAPairsByCategory/C*_<split>.txt + <Split>/<Split>_images/ [+ VQAMed2019Test/] "
            "(the organisers')",
            32,
            79,
            options={"categories": "categories"},
        ),
        DatasetSpec(
            "melinda",
            "cls",
            sources.read_melinda,
            "train.csv, dev.csv, test.csv, melinda_images/",
            128,
            7,
            options={"label_column": "label_column"},
        ),
        DatasetSpec(
            "roco-retrieval",
            "irtr",
            sources.read_roco_retrieval,
            "{train,val,test}/radiology/{images/,captions.txt}",
            40,
            options={"pool_size": "eval_size"},
        ),
        DatasetSpec(
            "custom",
            "custom",
            None,
            "a .csv/.jsonl (with a split column) or a folder of {train,val,test}.{csv,jsonl}; columns image + "
            "caption | question + answer [+ answer_type] | text + label",
            32,
        ),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """The spec registered under ``name``; unknown names list the known ones."""
    try:
        return DATASETS[name]
    except KeyError as err:
        raise M3AEError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from err
