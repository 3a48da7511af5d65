"""Data-pipeline throughput: images/s for decode + CLIP transform from prepared folders.

Measures, for image sizes 288 and 384, prepared data with original bytes and pre-resized bytes
(``m3ae prepare --image-size N``), through a DataLoader with 1 and 2 worker processes.
Not a test: run it by hand and copy the table into docs/benchmarks.md ("Data pipeline").

    HF_HUB_OFFLINE=1 python benchmarks/bench_data.py --src ../shared/data/vqa_rad --work /tmp/bench_data

The CPU may be shared with other jobs; the script prints the load average next to the figures.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from m3ae.data.images import ImageTransform, decode_image
from m3ae.data import prepare_dataset
from m3ae.data.storage import ImageStore


class ImagesOnly(Dataset):
    """Every stored image of a prepared folder, repeated ``repeat`` times: decode + transform only."""

    def __init__(self, folder: Path, size: int, repeat: int) -> None:
        self.store, self.transform = ImageStore(folder), ImageTransform(size, "clip")
        self.ids = self.store.image_ids() * repeat

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(decode_image(self.store.get_bytes(self.ids[i])))


def images_per_second(folder: Path, size: int, workers: int, repeat: int, batch_size: int = 32) -> float:
    """Throughput of one full pass (the first batch, i.e. worker start-up, is excluded)."""
    loader = DataLoader(ImagesOnly(folder, size, repeat), batch_size=batch_size, num_workers=workers)
    it = iter(loader)
    next(it)
    count, start = 0, time.perf_counter()
    for batch in it:
        count += batch.shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--src", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "vqa_rad")
    )
    parser.add_argument("--work", default="/tmp/m3ae_bench_data")
    parser.add_argument(
        "--repeat", type=int, default=2, help="passes over the 314 VQA-RAD images per measurement"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="0 = in the main process")
    parser.add_argument("--sizes", type=int, nargs="+", default=[288, 384])
    args = parser.parse_args()
    work = Path(args.work)
    folders = {"original": work / "original"}
    if not folders["original"].exists():
        prepare_dataset("vqa-rad", args.src, folders["original"])
    print(f"cpus={os.cpu_count()} loadavg={os.getloadavg()}")
    print("| image size | stored images | workers | images/s | images/s per worker |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        resized = work / f"resized{size}"
        if not resized.exists():
            prepare_dataset("vqa-rad", args.src, resized, image_size=size)
        for label, folder in (("original", folders["original"]), (f"pre-resized {size} (JPEG q95)", resized)):
            for workers in args.workers:
                rate = images_per_second(folder, size, workers, args.repeat)
                print(
                    f"| {size} | {label} | {workers} | {rate:.0f} | {rate / max(workers, 1):.0f} |",
                    flush=True,
                )
    print(f"loadavg after={os.getloadavg()}")


if __name__ == "__main__":
    main()
