#!/usr/bin/env python3
"""Times the kernel issue's convolutions in PyTorch (2 threads) and in d2a, in one run, and prints
the ratio d2a / PyTorch for each (forward, and forward + both gradients).

    python3 bench/compare.py [--runs 20] [--d2a target/release/d2a]

PyTorch (CPU wheel) is installed into bench/.venv by this script the first time; build d2a first
with `cargo build --release -p d2a-cli`. Model-level comparisons (d2a-vgg-tiny, d2a-resnext50) need a
PyTorch D2A U-Net and are not here yet: `d2a bench --model ... --mode forward|train` gives d2a's side.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
OPS = {  # name -> (groups, dilation): batch 1, 128 -> 128 channels, 64x64, 3x3
    "conv-dense": (1, 1),
    "conv-grouped": (32, 1),
    "conv-dilated": (1, 5),
}


def ensure_torch():
    """Re-executes this script inside bench/.venv, creating it with torch (CPU) if needed."""
    python = VENV / "bin" / "python"
    if Path(sys.prefix) == VENV:
        return
    if not python.exists():
        venv.create(VENV, with_pip=True)
        # The CPU-only wheel where download.pytorch.org is reachable, else PyPI's (larger).
        cpu = [python, "-m", "pip", "install", "-q", "torch",
               "--index-url", "https://download.pytorch.org/whl/cpu"]
        if subprocess.call(cpu + ["--retries", "1", "--timeout", "15"]) != 0:
            subprocess.check_call([python, "-m", "pip", "install", "-q", "torch"])
    os.execv(python, [python, *sys.argv])


def time_torch(groups, dilation, train, runs):
    import torch
    torch.set_num_threads(2)
    x = torch.randn(1, 128, 64, 64, requires_grad=train)
    w = (torch.randn(128, 128 // groups, 3, 3) * 0.1).requires_grad_(train)

    def once():
        start = time.perf_counter()
        y = torch.nn.functional.conv2d(x, w, padding=dilation, dilation=dilation, groups=groups)
        if train:
            y.sum().backward()
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(runs))


def time_d2a(binary, op, train, runs):
    out = subprocess.check_output([binary, "bench", "--op", op, "--mode",
                                   "train" if train else "forward", "--runs", str(runs), "--json"])
    return json.loads(out)["median_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--d2a", default=str(HERE.parent / "target" / "release" / "d2a"))
    args = parser.parse_args()
    ensure_torch()
    print(f"{'op':<14} {'mode':<8} {'d2a ms':>9} {'torch ms':>9} {'ratio':>7}")
    for op, (groups, dilation) in OPS.items():
        for train in (False, True):
            ours = time_d2a(args.d2a, op, train, args.runs)
            theirs = time_torch(groups, dilation, train, args.runs)
            mode = "fwd+bwd" if train else "forward"
            print(f"{op:<14} {mode:<8} {ours * 1e3:9.2f} {theirs * 1e3:9.2f} {ours / theirs:7.2f}")


if __name__ == "__main__":
    main()
