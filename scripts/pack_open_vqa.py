"""Make the small copies of VQA-Med 2019 and SLAKE that ship in the repository (`data/vqa_med_2019/`,
`data/slake/`), so that `make corpus` rebuilds the open pre-training corpus with no download.

Both are CC BY 4.0. The text files are copied byte for byte, in the release layouts that
`m3ae prepare vqa-med-2019` and `m3ae prepare slake` read; every image is resized so that its
longest side is at most ``--max-side`` px (128: the open pre-training recipe's size) and
re-encoded as JPEG, greyscale when its channels are equal (`pack_vqa_rad.pack_image`). VQA-Med's
test *images* were never released; its test questions file is copied.

Usage::

    python scripts/pack_open_vqa.py --src ../shared/data --dst data
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pack_vqa_rad import pack_image  # same folder: one resize + re-encode rule for every bundled copy

MEDVQA_TEXT = ("*/All_QA_Pairs_*.txt", "*/QAPairsByCategory/C*_*.txt", "*/*_ImageIDs.txt",
               "VQAMed2019Test/VQAMed2019_Test_Questions_w_Ref_Answers.txt")
MEDVQA_IMAGES = "*/*_images/synpic*.jpg"
SLAKE_TEXT = ("train.json", "validate.json", "test.json")
SLAKE_IMAGES = "imgs/xmlab*/source.jpg"


def copy_text(src: Path, dst: Path, patterns: tuple[str, ...]) -> int:
    """Copy the matching files byte for byte (same relative paths); returns how many."""
    files = [p for pattern in patterns for p in sorted(src.glob(pattern))]
    for path in files:
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return len(files)


def pack_images(src: Path, dst: Path, pattern: str, max_side: int, quality: int) -> tuple[int, int, int, int]:
    """Resize + re-encode every matching image; (count, greyscale, bytes before, bytes after)."""
    images = sorted(src.glob(pattern))
    grey = 0
    for path in images:
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        grey += pack_image(path, target, max_side, quality)
    before = sum(p.stat().st_size for p in images)
    after = sum((dst / p.relative_to(src)).stat().st_size for p in images)
    return len(images), grey, before, after


def main(argv: list[str] | None = None) -> int:
    """Pack both copies; prints the sizes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="folder holding vqa_med_2019/ and slake/")
    parser.add_argument("--dst", type=Path, default=Path("data"), help="output folder")
    parser.add_argument("--max-side", type=int, default=128, help="longest side after resizing, px")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    args = parser.parse_args(argv)
    jobs = (("vqa_med_2019", MEDVQA_TEXT, MEDVQA_IMAGES), ("slake", SLAKE_TEXT, SLAKE_IMAGES))
    for name, text, images in jobs:
        src, dst = args.src / name, args.dst / name
        if not src.is_dir():
            sys.exit(f"error: {src} not found")
        copied = copy_text(src, dst, text)
        count, grey, before, after = pack_images(src, dst, images, args.max_side, args.quality)
        print(f"{name}: {copied} text files; {count} images ({grey} greyscale): "
              f"{before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
