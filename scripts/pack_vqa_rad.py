"""Make the small copy of VQA-RAD that ships in the repository (`data/vqa_rad/`).

The demo and the tests need a real medical VQA benchmark that works offline and out of a fresh
clone. VQA-RAD is CC0 and small (315 images, 3,515 questions), but its images total ~16 MB at
full size. M3AE never looks at more than 384 px (the fine-tuning size), so this script:

* resizes every image so that its *longest* side is at most ``--max-side`` px (bicubic,
  aspect ratio kept, never upscaled), and re-encodes it as JPEG at ``--quality``;
* stores images whose three channels are identical (nearly all radiographs) as 1-channel
  JPEG, which is a third of the size; every loader converts to RGB anyway;
* keeps every file name, and copies ``trainset.json`` / ``testset.json`` byte for byte, so the
  folder has the raw layout that ``m3ae prepare vqa-rad --src data/vqa_rad`` reads.

Usage::

    python scripts/pack_vqa_rad.py --src ../shared/data/vqa_rad --dst data/vqa_rad
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# The two split files of the MEVF split (what M3AE reads); the OSF release folder is not copied.
SPLIT_FILES = ("trainset.json", "testset.json")


def is_grey(image: Image.Image) -> bool:
    """True when an RGB image carries the same value in its three channels."""
    if image.mode == "L":
        return True
    pixels = np.asarray(image.convert("RGB"))  # [H, W, 3]
    return bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())


def shrink(image: Image.Image, max_side: int) -> Image.Image:
    """Resize so that the longest side is at most `max_side` px, keeping the aspect ratio."""
    width, height = image.size
    scale = max_side / max(width, height)
    if scale >= 1.0:  # never upscale: small images are kept at their size
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def pack_image(src: Path, dst: Path, max_side: int, quality: int) -> bool:
    """Write the resized JPEG copy of one image; returns whether it was stored as greyscale."""
    with Image.open(src) as image:
        image = image.convert("RGB")
        grey = is_grey(image)
        small = shrink(image.convert("L") if grey else image, max_side)
    small.save(dst, format="JPEG", quality=quality, optimize=True)
    return grey


def check_splits(src: Path) -> set[str]:
    """Read the split files and return the image names they reference (fails on a missing file)."""
    names: set[str] = set()
    for split_file in SPLIT_FILES:
        path = src / split_file
        if not path.is_file():
            sys.exit(f"error: {path} not found (expected the raw VQA-RAD release layout)")
        names.update(row["image_name"] for row in json.loads(path.read_text()))
    return names


def main(argv: list[str] | None = None) -> int:
    """Pack the VQA-RAD copy; prints the sizes before and after."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="raw VQA-RAD folder (images/, *set.json)")
    parser.add_argument("--dst", type=Path, default=Path("data/vqa_rad"), help="output folder")
    parser.add_argument("--max-side", type=int, default=384, help="longest side after resizing, px")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    args = parser.parse_args(argv)

    referenced = check_splits(args.src)
    (args.dst / "images").mkdir(parents=True, exist_ok=True)
    for split_file in SPLIT_FILES:  # unchanged, byte for byte
        shutil.copyfile(args.src / split_file, args.dst / split_file)

    sources = sorted((args.src / "images").glob("*.jpg"))
    missing = referenced - {p.name for p in sources}
    if missing:
        sys.exit(f"error: {len(missing)} images referenced by the splits are missing, "
                 f"e.g. {sorted(missing)[0]}")
    grey = sum(pack_image(p, args.dst / "images" / p.name, args.max_side, args.quality) for p in sources)
    before = sum(p.stat().st_size for p in sources)
    after = sum(p.stat().st_size for p in (args.dst / "images").glob("*.jpg"))
    print(f"{len(sources)} images ({grey} greyscale): {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
