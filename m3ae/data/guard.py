"""The leakage guard: which images of one prepared folder are also images of another.

Pre-training on public VQA sets and then evaluating on VQA-RAD or SLAKE leaks answers when an
evaluation image (or a re-encoded copy of it) is among the pre-training images: 38 VQA-Med 2019
images are VQA-RAD images, 21 of them VQA-RAD test images. An image matches a reference image

* **by id**: the same `image_key` (MedPix images keep their ``synpicNNNNN`` id across datasets;
  other images are keyed by dataset and path, so SLAKE's many ``source.jpg`` never collide);
* **by exact pixels**: the same 64x64 grey thumbnail (the same picture, renamed or re-wrapped);
* **as a near duplicate**: 256-bit DCT perceptual hashes within `NEAR_THRESHOLD` bits (the same
  picture re-encoded, resized or slightly re-windowed). docs/data.md gives the calibration.

Everything is numpy on small thumbnails; JPEGs are decoded at reduced size (``Image.draft``), so
fingerprinting the ~5,000 benchmark images takes seconds.
"""
from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from m3ae.data.images import decode_image
from m3ae.data.storage import ImageStore, read_summary, read_table
from m3ae.errors import DataError

THUMB_SIZE = 64
"""Side of the grey thumbnail every image is reduced to (box filter) before hashing."""
PHASH_SIDE = 16
"""The pHash keeps the 16x16 lowest DCT frequencies of the thumbnail: 256 bits. The common 64-bit
pHash (8x8) cannot tell a re-encoded copy from the next CT slice of the same study."""
NEAR_THRESHOLD = 24
"""Largest Hamming distance (of 256 bits) between two pHashes called near duplicates. On the real
data the 38 VQA-Med/VQA-RAD twins (two independent 384 px re-encodings) lie at 0-16 bits; the
median distinct image's nearest neighbour is 86 bits away (docs/data.md, "The leakage guard")."""
HAMMING_BLOCK = 256
"""Rows per block of the all-pairs distance, so memory stays ~O(block x M) whatever the sizes."""
MEDPIX_ID = re.compile(r"synpic\d+")
CORPUS_DATASET = "corpus"
"""``summary.json`` "dataset" of a folder `m3ae corpus` wrote; its image ids already carry their source."""
REASONS = ("by_id", "exact_pixels", "near_duplicate")
"""Why an image matches, in the order they are tested (an image counts under the first that holds)."""


def image_key(dataset: str, image_id: str) -> str:
    """The identity of an image across folders: ``medpix:synpicNNNNN`` when the id holds a MedPix
    id, else ``<dataset>/<image_id>`` (image ids of a corpus already start with their dataset)."""
    found = MEDPIX_ID.search(image_id)
    if found:
        return f"medpix:{found.group(0)}"
    return image_id if dataset == CORPUS_DATASET else f"{dataset}/{image_id}"


def thumbnail(data: bytes, source: str) -> np.ndarray:
    """Encoded image -> [THUMB_SIZE, THUMB_SIZE] uint8 grey pixels (box filter).

    JPEGs are decoded at the smallest DCT scale still at least twice the thumbnail (``draft``),
    which is exact for the same file and ~10x faster than a full decode.
    """
    try:
        image = Image.open(io.BytesIO(data))
        if image.format == "JPEG":
            image.draft("L", (2 * THUMB_SIZE, 2 * THUMB_SIZE))
            image = image.convert("L")
        else:
            image = decode_image(data, source).convert("L")
        image = image.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX)
    except (OSError, ValueError) as err:
        raise DataError(f"{source}: cannot decode the image for the leakage guard ({err})") from err
    return np.asarray(image, dtype=np.uint8)


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix [n, n]: row k is the k-th cosine basis."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    return matrix


def phash(thumbs: np.ndarray) -> np.ndarray:
    """[N, T, T] uint8 thumbnails -> [N, 4] uint64 perceptual hashes (256 bits).

    Bit j is set when the j-th of the 16x16 lowest 2-D DCT coefficients exceeds their median (the
    DC term is left out of the median: it only says how bright the image is).
    """
    if len(thumbs) == 0:
        return np.zeros((0, PHASH_SIDE * PHASH_SIDE // 64), dtype=np.uint64)
    d = _dct_matrix(thumbs.shape[-1])
    coeffs = d @ thumbs.astype(np.float64) @ d.T  # [N, T, T]: 2-D DCT, rows then columns
    low = coeffs[:, :PHASH_SIDE, :PHASH_SIDE].reshape(len(thumbs), -1)  # [N, 256]
    bits = low > np.median(low[:, 1:], axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(np.uint64)  # [N, 256] bool -> [N, 32] uint8 -> [N, 4]


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, W] and [M, W] uint64 hashes -> [N, M] Hamming distances (uint16), in row blocks."""
    out = np.empty((len(a), len(b)), dtype=np.uint16)
    for start in range(0, len(a), HAMMING_BLOCK):
        block = a[start:start + HAMMING_BLOCK, None, :] ^ b[None, :, :]  # [n, M, W]
        out[start:start + HAMMING_BLOCK] = np.bitwise_count(block).sum(axis=-1, dtype=np.uint16)
    return out


@dataclass
class Fingerprints:
    """What the guard knows about a set of images, one entry per image."""

    image_ids: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    exact: list[str] = field(default_factory=list)
    """Hex digest of the thumbnail pixels."""
    phashes: np.ndarray = field(default_factory=lambda: phash(np.zeros((0, THUMB_SIZE, THUMB_SIZE))))
    """[N, 4] uint64: one 256-bit `phash` per image."""

    def __len__(self) -> int:
        return len(self.image_ids)

    def subset(self, image_ids: set[str]) -> Fingerprints:
        """The entries whose image id is in ``image_ids``."""
        rows = [i for i, image_id in enumerate(self.image_ids) if image_id in image_ids]
        return Fingerprints([self.image_ids[i] for i in rows], [self.keys[i] for i in rows],
                            [self.exact[i] for i in rows], self.phashes[rows])


def fingerprint(images: list[tuple[str, str, bytes]], where: str) -> Fingerprints:
    """(image id, key, encoded bytes) triples -> their `Fingerprints`; ``where`` names the folder."""
    thumbs = np.stack([thumbnail(data, f"{where} image {image_id}") for image_id, _, data in images]) \
        if images else np.zeros((0, THUMB_SIZE, THUMB_SIZE), dtype=np.uint8)
    exact = [hashlib.blake2b(t.tobytes(), digest_size=8).hexdigest() for t in thumbs]
    return Fingerprints([i for i, _, _ in images], [k for _, k, _ in images], exact, phash(thumbs))


def split_image_ids(folder: Path, splits: tuple[str, ...]) -> dict[str, list[str]]:
    """Distinct image ids of each split table of a prepared folder (absent splits: none)."""
    out = {}
    for split in splits:
        path = folder / f"{split}.arrow"
        if path.exists():
            out[split] = list(dict.fromkeys(read_table(path).column("image_id").to_pylist()))
    return out


def check_prepared(folder: Path, what: str) -> dict[str, Any]:
    """The summary of a folder `m3ae prepare` (or `m3ae corpus`) wrote; one clear line otherwise."""
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} folder not found")
    return read_summary(folder)


def _fingerprint_folder(folder: Path, splits: tuple[str, ...]) -> tuple[Fingerprints, dict[str, list[str]]]:
    """`Fingerprints` of the distinct images of ``splits`` (each decoded once), and each split's ids."""
    dataset = str(check_prepared(folder, "prepared").get("dataset"))
    ids = split_image_ids(folder, splits)
    store = ImageStore(folder)
    distinct = list(dict.fromkeys(i for split_ids in ids.values() for i in split_ids))
    return fingerprint([(i, image_key(dataset, i), store.get_bytes(i)) for i in distinct], str(folder)), ids


def folder_fingerprints(folder: Path, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, Fingerprints]:
    """`Fingerprints` of the images of each split of a prepared folder."""
    prints, ids = _fingerprint_folder(folder, splits)
    return {split: prints.subset(set(split_ids)) for split, split_ids in ids.items()}


def images_fingerprints(folder: Path, splits: tuple[str, ...]) -> Fingerprints:
    """`Fingerprints` of every image used by any of ``splits`` of a prepared folder."""
    return _fingerprint_folder(folder, splits)[0]


def match(candidates: Fingerprints, reference: Fingerprints, threshold: int = NEAR_THRESHOLD) -> list[str | None]:
    """Per candidate image, the first of `REASONS` that ties it to some reference image, or None."""
    if not len(candidates) or not len(reference):
        return [None] * len(candidates)
    keys, exact = set(reference.keys), set(reference.exact)
    near = (hamming(candidates.phashes, reference.phashes) <= threshold).any(axis=1)
    reasons: list[str | None] = []
    for i in range(len(candidates)):
        hits = (candidates.keys[i] in keys, candidates.exact[i] in exact, bool(near[i]))
        reasons.append(next((r for r, hit in zip(REASONS, hits) if hit), None))
    return reasons


def count_reasons(reasons: list[str | None]) -> dict[str, int]:
    """{reason: n} over `REASONS` (zeros included, so summaries always show the three)."""
    counts = Counter(r for r in reasons if r)
    return {reason: counts.get(reason, 0) for reason in REASONS}


def overlap_report(folders: list[Path], threshold: int = NEAR_THRESHOLD) -> list[dict[str, Any]]:
    """Images shared by every two (folder, split) groups of the given prepared folders.

    Returns one row per pair: ``a``, ``b`` ("folder/split"), ``images_a`` and, per reason, how many
    images of ``a`` match an image of ``b``, plus ``total``.
    """
    groups = [(f"{folder}/{split}", prints) for folder in dict.fromkeys(map(Path, folders))
              for split, prints in folder_fingerprints(folder).items() if len(prints)]
    rows = []
    for (name_a, a), (name_b, b) in combinations(groups, 2):
        counts = count_reasons(match(a, b, threshold))
        rows.append({"a": name_a, "b": name_b, "images_a": len(a), **counts, "total": sum(counts.values())})
    return rows


def format_overlaps(rows: list[dict[str, Any]]) -> str:
    """The overlap report as text, one line per pair with at least one shared image."""
    shared = [r for r in rows if r["total"]]
    lines = [f"overlap check: {len(rows)} pairs of folder splits compared, {len(shared)} share images"]
    lines += [f"  {r['a']} ({r['images_a']} images) x {r['b']}: {r['total']} shared "
              f"({r['by_id']} by id, {r['exact_pixels']} exact pixels, {r['near_duplicate']} near duplicates)"
              for r in shared]
    return "\n".join(lines)
