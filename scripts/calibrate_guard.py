"""Calibrate the leakage guard's near-duplicate threshold on prepared folders (docs/data.md).

Prints, for the 256-bit pHash of `m3ae.data.guard`:

* the distances between *twins*: images with the same key in two folders (the 38 MedPix images
  in both VQA-Med 2019 and VQA-RAD, each folder holding its own resize and JPEG encoding);
* the distribution of each image's distance to its nearest *different* image (another key), over
  every folder, and how many such pairs fall at or under each candidate threshold, by folder pair.

Usage::

    python scripts/calibrate_guard.py prepared/vqa_med_2019 prepared/vqa_rad prepared/slake
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from m3ae.data.guard import NEAR_THRESHOLD, hamming, images_fingerprints

SPLITS = ("train", "val", "test")


def main(argv: list[str] | None = None) -> int:
    """Print the twin distances, the nearest-different-image distances and the pairs per threshold."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="prepared folders")
    parser.add_argument("--thresholds", default="8,12,16,20,24,28,32", help="candidate thresholds")
    args = parser.parse_args(argv)
    keys, names, hashes = [], [], []
    for folder in args.folders:
        prints = images_fingerprints(folder, SPLITS)
        keys += prints.keys
        names += [folder.name] * len(prints)
        hashes.append(prints.phashes)
    distances = hamming(np.concatenate(hashes), np.concatenate(hashes)).astype(int)  # [N, N]
    keys_arr, names_arr = np.array(keys), np.array(names)
    same_key = keys_arr[:, None] == keys_arr[None, :]
    twins = np.triu(same_key & (names_arr[:, None] != names_arr[None, :]), 1)
    twin_d = sorted(distances[twins].tolist())
    print(f"twins (same key, two folders): {len(twin_d)}; distances: {dict(sorted(Counter(twin_d).items()))}")
    different = np.where(same_key, 10_000, distances)
    nearest = different.min(axis=1)
    print(f"nearest different image, {len(nearest)} images: percentiles 1/5/25/50 = "
          f"{np.percentile(nearest, [1, 5, 25, 50]).tolist()}")
    upper = np.triu(np.ones_like(same_key), 1) & ~same_key
    for t in (int(x) for x in args.thresholds.split(",")):
        close = np.argwhere(upper & (distances <= t))
        by_pair = Counter("+".join(sorted((names[a], names[b]))) for a, b in close)
        mark = " (NEAR_THRESHOLD)" if t == NEAR_THRESHOLD else ""
        print(f"threshold {t}{mark}: twins caught {sum(d <= t for d in twin_d)}/{len(twin_d)}; different-image "
              f"pairs at or under it {len(close)} ({dict(by_pair)}); images with one {(nearest <= t).sum()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
