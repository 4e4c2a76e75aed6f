#!/usr/bin/env python3
"""Times three convolutions and two models in PyTorch (2 threads) and in d2a, in one run,
and prints the ratio d2a / PyTorch for each.

    python3 bench/compare.py [--ops] [--models] [--runs 20] [--model-runs 3] [--d2a target/release/d2a]

Ops: batch 1, 128 -> 128 channels, 64x64, 3x3: dense, 32 groups, dilation 5; forward, and forward +
both gradients. Models (the PyTorch D2A U-Net of bench/d2a_unet.py, equal parameter counts):
forward at 1x1x512x512 and a training step (forward, Dice + BCE, backward, Adam) at 2x1x448x448,
for d2a-vgg-tiny and d2a-resnext50, each side in its own process so that peak RSS is its own.
With neither flag, both. PyTorch (with torchvision) is installed into bench/.venv by this script
the first time; build d2a first with `cargo build --release -p d2a-cli`.

With `--device cuda` both sides run on GPU 0 (d2a built with `--features cuda`; the PyTorch of
the running interpreter, which must see the GPU): the training step at 6x1x448x448, times only
(no memory columns). `scripts/gpu-check` runs it on a GPU machine.
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


def ensure_torch(device):
    """Re-executes this script inside bench/.venv, creating it with torch (CPU) if needed; on a
    GPU, checks that this interpreter's torch sees it instead."""
    if device != "cpu":
        import torch
        if not torch.cuda.is_available():
            sys.exit(f"compare.py: --device {device} but this PyTorch sees no GPU")
        return
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
        # torchvision for the ResNeXt-50 encoder; --no-deps keeps the torch just installed.
        subprocess.check_call([python, "-m", "pip", "install", "-q", "--no-deps", "torchvision"])
        subprocess.check_call([python, "-m", "pip", "install", "-q", "numpy", "pillow"])
    os.execv(python, [python, *sys.argv])


def sync(device):
    """Waits for the GPU's queued work (timings would otherwise stop at the launch)."""
    if device != "cpu":
        import torch
        torch.cuda.synchronize()


def torch_device(device):
    return "cuda:0" if device == "cuda" else device


def time_torch(groups, dilation, train, runs, device):
    import torch
    torch.set_num_threads(2)
    dev = torch_device(device)
    x = torch.randn(1, 128, 64, 64, device=dev, requires_grad=train)
    w = (torch.randn(128, 128 // groups, 3, 3, device=dev) * 0.1).requires_grad_(train)

    def once():
        start = time.perf_counter()
        y = torch.nn.functional.conv2d(x, w, padding=dilation, dilation=dilation, groups=groups)
        if train:
            y.sum().backward()
        sync(device)
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(runs))


def time_d2a(binary, op, train, runs, device):
    out = subprocess.check_output([binary, "bench", "--op", op, "--mode",
                                   "train" if train else "forward", "--runs", str(runs), "--json",
                                   "--device", device])
    return json.loads(out)["median_s"]


MODELS = [  # (model, mode, size, batch)
    ("d2a-vgg-tiny", "forward", 512, 1),
    ("d2a-vgg-tiny", "train", 448, 2),
    ("d2a-resnext50", "forward", 512, 1),
    ("d2a-resnext50", "train", 448, 2),
]
BATCH_ON_GPU = {"train": 6, "forward": 1}  # the paper's training batch


def torch_model_child(name, mode, size, batch, runs, device):
    """In a fresh process: times the PyTorch model, prints {median_s, peak_rss_mib} as JSON."""
    import resource
    import torch
    sys.path.insert(0, str(HERE))
    from d2a_unet import build, dice_bce
    torch.set_num_threads(2)
    torch.manual_seed(0)
    dev = torch_device(device)
    model = build(name).to(dev)
    x = torch.rand(batch, 1, size, size, device=dev)
    y = (torch.rand(batch, 1, size, size, device=dev) > 0.7).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)

    def once():
        start = time.perf_counter()
        if mode == "forward":
            model.eval()
            with torch.no_grad():
                model(x)
        else:
            model.train()
            loss = dice_bce(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
        return time.perf_counter() - start

    once()
    median = statistics.median(once() for _ in range(runs))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device != "cpu":
        peak = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps({"median_s": median, "peak_rss_mib": peak}))


def time_models(binary, runs, device):
    print(f"\n{'model':<14} {'mode':<8} {'input':<12} {'d2a s':>8} {'torch s':>8} {'ratio':>6}"
          + ("" if device != "cpu" else f" {'d2a MiB':>8} {'torch MiB':>9} {'ratio':>6}"))
    for name, mode, size, batch in MODELS:
        if device != "cpu":
            batch = BATCH_ON_GPU[mode]
        ours = json.loads(subprocess.check_output(
            [binary, "bench", "--model", name, "--mode", mode, "--size", str(size),
             "--batch", str(batch), "--runs", str(runs), "--json", "--device", device]))
        theirs = json.loads(subprocess.check_output(
            [sys.executable, __file__, "--torch-model", name, "--mode", mode, "--size", str(size),
             "--batch", str(batch), "--model-runs", str(runs), "--device", device],
            stderr=subprocess.DEVNULL))
        shape = f"{batch}x1x{size}x{size}"
        if device != "cpu":
            print(f"{name:<14} {mode:<8} {shape:<12} {ours['median_s']:8.3f}"
                  f" {theirs['median_s']:8.3f} {ours['median_s'] / theirs['median_s']:6.2f}",
                  flush=True)
            continue
        ours_mib = ours.get("peak_rss_mib") or float("nan")
        print(f"{name:<14} {mode:<8} {shape:<12} {ours['median_s']:8.3f} {theirs['median_s']:8.3f}"
              f" {ours['median_s'] / theirs['median_s']:6.2f} {ours_mib:8.0f}"
              f" {theirs['peak_rss_mib']:9.0f} {ours_mib / theirs['peak_rss_mib']:6.2f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per op")
    parser.add_argument("--model-runs", type=int, default=3, help="timed runs per model")
    parser.add_argument("--d2a", default=str(HERE.parent / "target" / "release" / "d2a"))
    parser.add_argument("--ops", action="store_true", help="only the convolutions")
    parser.add_argument("--models", action="store_true", help="only the models")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where both sides run (cuda: GPU 0)")
    parser.add_argument("--torch-model", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    ensure_torch(args.device)
    if args.torch_model:
        torch_model_child(args.torch_model, args.mode, args.size, args.batch, args.model_runs,
                          args.device)
        return
    print(machine(args.device), flush=True)
    both = not (args.ops or args.models)
    if args.ops or both:
        time_ops(args.d2a, args.runs, args.device)
    if args.models or both:
        time_models(args.d2a, args.model_runs, args.device)


def machine(device):
    """The CPU model, its vector extensions that matter to the kernels, the date and the
    threads, as one line that heads every table (ratios differ by CPU kind)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    simd = sorted(f for f in flags if f in ("avx2", "fma") or f.startswith("avx512"))
    if device != "cpu":
        import torch
        return (f"# {torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA "
                f"{torch.version.cuda}); host {model}; {time.strftime('%Y-%m-%d')}")
    return (f"# {model}; {' '.join(simd) or 'no AVX2'}; {os.cpu_count()} logical CPUs, "
            f"2 threads each side; {time.strftime('%Y-%m-%d')}")


def time_ops(binary, runs, device):
    print(f"{'op':<14} {'mode':<8} {'d2a ms':>9} {'torch ms':>9} {'ratio':>7}")
    for op, (groups, dilation) in OPS.items():
        for train in (False, True):
            ours = time_d2a(binary, op, train, runs, device)
            theirs = time_torch(groups, dilation, train, runs, device)
            mode = "fwd+bwd" if train else "forward"
            print(f"{op:<14} {mode:<8} {ours * 1e3:9.2f} {theirs * 1e3:9.2f} {ours / theirs:7.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
