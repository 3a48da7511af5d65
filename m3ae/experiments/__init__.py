"""Experiments that run the library end to end and measure it: the demo (``demo``: the whole
pipeline on the bundled VQA-RAD data in minutes), the paper's ablations as one grid (``ablate``),
speed and memory on this machine (``bench``, with ``bench_core``, the part the original's harness
shares) and the GPU check (``gpu_check``). Their commands are in ``m3ae.cli``."""
