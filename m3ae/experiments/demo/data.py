"""Stage 1 of the demo, the data: the raw VQA-RAD folder, its prepared copy (clean protocol), the
blank-image twin and the pre-training pairs of its train split; and the output folder the demo may replace."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from m3ae.errors import M3AEError
from m3ae.experiments.demo.sizes import DemoSizes

REPO_DATA = Path(__file__).resolve().parents[3] / "data" / "vqa_rad"
SPLIT_FILES = ("trainset.json", "testset.json")
BLANK_GREY = 0  # the blank baseline's images are black: no pixel information at all
DEMO_MARKER = ".m3ae-demo"  # marks a folder the demo may replace


def find_src(src: Path | None) -> Path:
    """The raw VQA-RAD folder: `--src`, else ./data/vqa_rad, else the copy next to the package."""
    candidates = [src] if src is not None else [Path("data/vqa_rad"), REPO_DATA]
    for path in candidates:
        if path is not None and all((path / f).is_file() for f in SPLIT_FILES) and (path / "images").is_dir():
            return path
    raise M3AEError(f"VQA-RAD raw folder not found (looked in {', '.join(map(str, candidates))}); "
                    "give --src DIR with trainset.json, testset.json and images/")


def prepare(dataset: str, src: Path, out: Path, image_size: int, seed: int, **options: Any) -> None:
    """Prepare one folder (clean protocol, pre-resized, replacing a previous one) and print its counts,
    as `m3ae prepare` would."""
    from m3ae.data.specs import format_summary, prepare_dataset

    print(f"$ m3ae prepare {dataset} --src {src} --out {out}", flush=True)
    summary = prepare_dataset(dataset, src, out, protocol="clean", seed=seed, image_size=image_size,
                              overwrite=True, **options)
    print(format_summary(summary, out), flush=True)


def clear_out(out: Path) -> None:
    """Empty the output folder; refuse to delete a non-empty folder that no demo wrote."""
    if out.exists():
        if any(out.iterdir()) and not (out / DEMO_MARKER).is_file():
            raise M3AEError(f"{out} exists and was not written by `m3ae demo` (no {DEMO_MARKER}); "
                            "choose another --out or remove it yourself")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / DEMO_MARKER).write_text("written by `m3ae demo`; the next demo run into this folder replaces it\n")


# ------------------------------------------------------------------------------ stage 1: data
def subset_raw(src: Path, dst: Path, train_images: int) -> Path:
    """A raw VQA-RAD folder with the questions of the first `train_images` train images (and half as
    many test images); for --quick."""
    (dst / "images").mkdir(parents=True, exist_ok=True)
    for split_file, count in (("trainset.json", train_images), ("testset.json", max(2, train_images // 2))):
        rows = json.loads((src / split_file).read_text())
        keep = sorted({r["image_name"] for r in rows})[:count]
        (dst / split_file).write_text(json.dumps([r for r in rows if r["image_name"] in set(keep)]))
        for name in keep:
            shutil.copyfile(src / "images" / name, dst / "images" / name)
    return dst


def blank_raw(src: Path, dst: Path) -> Path:
    """The same raw folder with every image replaced by a black image of the same size."""
    (dst / "images").mkdir(parents=True, exist_ok=True)
    for split_file in SPLIT_FILES:
        shutil.copyfile(src / split_file, dst / split_file)
    for path in sorted((src / "images").glob("*")):
        with Image.open(path) as image:
            size = image.size
        Image.new("L", size, BLANK_GREY).save(dst / "images" / path.name, format="JPEG")
    return dst


def caption_csv(vqa_dir: Path, raw_images: Path, out_csv: Path) -> int:
    """Image-text pairs for pre-training from the *train* split only: caption = question + answer.

    These are not real captions (VQA-RAD has none); they are the only text paired with these
    images that the clean protocol lets pre-training see.

    Returns:
        The number of pairs written.
    """
    from m3ae.data.storage import read_table

    rows = read_table(vqa_dir / "train.arrow").to_pylist()
    with out_csv.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "split"])
        for row in rows:
            image = (raw_images / row["image_id"]).resolve()
            writer.writerow([str(image), f"{row['question']} {row['answer']}", "train"])
    return len(rows)


def prepare_vqa_and_pairs(raw: Path, out: Path, image_size: int, seed: int) -> dict[str, Path]:
    """Prepare VQA-RAD (clean protocol) from a raw folder into ``out/data/vqa_rad``, and the
    pre-training pairs of its train split into ``out/data/pretrain`` (`m3ae demo`, `m3ae ablate`)."""
    dirs = {"vqa": out / "data" / "vqa_rad", "pretrain": out / "data" / "pretrain"}
    prepare("vqa-rad", raw, dirs["vqa"], image_size, seed)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    pairs = caption_csv(dirs["vqa"], raw / "images", out / "raw" / "pretrain_pairs.csv")
    print(f"pre-training pairs: {pairs} (caption = question + ' ' + answer, from the train split only; "
          "these are NOT real captions)")
    # the pairs point at the raw VQA-RAD images, outside the folder of the CSV itself
    prepare("custom", out / "raw" / "pretrain_pairs.csv", dirs["pretrain"], image_size, seed, allow_outside_src=True)
    return dirs


def prepare_all(src: Path, out: Path, sizes: DemoSizes, image_size: int, seed: int) -> dict[str, Path]:
    """Prepare VQA-RAD (clean protocol), its blank-image twin and the pre-training pairs."""
    raw = subset_raw(src, out / "raw" / "vqa_rad", sizes.subset_images) if sizes.subset_images else src
    dirs = prepare_vqa_and_pairs(raw, out, image_size, seed)
    dirs["blank"] = out / "data" / "vqa_rad_blank"
    blank = blank_raw(raw, out / "raw" / "vqa_rad_blank")
    prepare("vqa-rad", blank, dirs["blank"], image_size, seed)
    return dirs
