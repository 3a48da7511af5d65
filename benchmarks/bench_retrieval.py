"""Retrieval cost benchmark: the original's full cross-encoder protocol vs two-stage retrieval.

For each pool, the full protocol scores all N_i x N_t pairs through the fusion; two-stage ranks
every candidate with the dual encoder (heads.itc) and re-ranks each query's top K with the
cross-encoder, i.e. at most K * (N_i + N_t) pairs. Reported per row: cross-encoder pairs, wall
seconds, R@1/5/10 both ways.

Pools:
- synthetic (default): random images and token ids at each --pool-sizes N (one caption per
  image). With the default random-weight model the recalls are chance level: these rows measure
  cost (pairs, seconds) and how it grows with N (N^2 vs N*K), not quality.
- real: --data PREPARED [--split test] with a trained --model (e.g. ROCO's 2,000-pair pool:
  prepared/roco_retrieval and a model fine-tuned with --task.itc_weight 1).

Usage:
    python benchmarks/bench_retrieval.py --pool-sizes 128 256 512 --top-k 16 64 128
    python benchmarks/bench_retrieval.py --model runs/roco_irtr/best --data prepared/roco_retrieval
    python benchmarks/bench_retrieval.py --pool-sizes 16 32 --top-k 4 --preset m3ae-tiny   # smoke run

A benchmark, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402


class SyntheticImages(Dataset):
    """N random images [3, S, S] (CLIP-normalised scale)."""

    def __init__(self, n: int, size: int, seed: int) -> None:
        self.pix = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.pix)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.pix[i]}


class SyntheticTexts(Dataset):
    """N random captions of L tokens, some padded."""

    def __init__(self, n: int, length: int, vocab: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed + 1)
        self.ids = torch.randint(5, min(vocab, 1000), (n, length), generator=g)
        self.mask = torch.ones(n, length, dtype=torch.long)
        self.mask[::2, length // 2:] = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i]}


def load_model(args):
    from m3ae.models import M3AE, ModelConfig

    if args.model:
        return M3AE.from_pretrained(args.model).eval()
    torch.manual_seed(0)
    return M3AE(ModelConfig.from_name(args.preset).with_heads(["irtr", "itc"])).eval()


def real_pool(args, model):
    from m3ae.data import DataConfig, load_tokenizer, make_retrieval_pool
    from m3ae.weights.io import read_metadata

    meta = read_metadata(args.model) if args.model else {}
    cfg = DataConfig.from_dict(meta["data"]) if "data" in meta else DataConfig(
        image_size=model.config.vision.image_size, patch_size=model.config.vision.patch_size)
    has_tok = args.model and any((Path(args.model) / f).is_file() for f in ("tokenizer.json", "vocab.json", "vocab.txt"))
    return make_retrieval_pool(args.data, args.split, cfg, load_tokenizer(args.model if has_tok else None))


def run_pool(name: str, model, pool, top_ks: list[int], args) -> list[dict]:
    from m3ae.train import evaluation as E

    n_i, n_t = len(pool[0]), len(pool[1])
    rows = []
    if n_i * n_t <= args.max_full_pairs:
        start = time.perf_counter()
        metrics, _ = E.evaluate_retrieval(model, pool, args.image_batch, args.text_batch)
        rows.append({"pool": name, "n_images": n_i, "n_texts": n_t, "protocol": "full", "k": "-",
                     "pairs": n_i * n_t, "seconds": time.perf_counter() - start, **metrics})
    for k in top_ks:
        start = time.perf_counter()
        metrics, _ = E.evaluate_retrieval_two_stage(model, pool, k, args.image_batch, args.text_batch)
        rows.append({"pool": name, "n_images": n_i, "n_texts": n_t, "protocol": "two-stage", "k": k,
                     "pairs": metrics["pairs_scored"], "seconds": time.perf_counter() - start, **metrics})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a trained retrieval model folder (default: random weights, cost only)")
    parser.add_argument("--preset", default="m3ae-small", help="preset of the random-weight model")
    parser.add_argument("--data", help="a prepared retrieval folder (real pool) instead of synthetic pools")
    parser.add_argument("--split", default="test")
    parser.add_argument("--pool-sizes", nargs="+", type=int, default=[128, 256, 512])
    parser.add_argument("--top-k", nargs="+", type=int, default=[16, 64, 128])
    parser.add_argument("--text-len", type=int, default=32, help="synthetic caption length")
    parser.add_argument("--image-batch", type=int, default=8)
    parser.add_argument("--text-batch", type=int, default=64)
    parser.add_argument("--max-full-pairs", type=int, default=10**7, help="skip the full protocol above this")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args)
    if args.data:
        rows = run_pool(f"{Path(args.data).name}/{args.split}", model, real_pool(args, model), args.top_k, args)
    else:
        size, vocab = model.config.vision.image_size, model.config.text.vocab_size
        rows = [r for n in args.pool_sizes
                for r in run_pool(f"synthetic {n}", model, (SyntheticImages(n, size, n),
                                  SyntheticTexts(n, args.text_len, vocab, n), torch.arange(n)), args.top_k, args)]
    print(f"model {args.model or args.preset + ' (random weights)'}, threads {args.threads}\n")
    print("| pool | N_i x N_t | protocol | K | cross-encoder pairs | seconds | i2t R@1/5/10 | t2i R@1/5/10 |")
    print("|---|---|---|---:|---:|---:|---|---|")
    for r in rows:
        i2t = "/".join(f"{r[f'i2t_r{k}']:.1f}" for k in (1, 5, 10))
        t2i = "/".join(f"{r[f't2i_r{k}']:.1f}" for k in (1, 5, 10))
        print(f"| {r['pool']} | {r['n_images']} x {r['n_texts']} | {r['protocol']} | {r['k']} | {r['pairs']:,} | "
              f"{r['seconds']:.1f} | {i2t} | {t2i} |")


if __name__ == "__main__":
    main()
