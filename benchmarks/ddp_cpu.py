"""Training throughput of `keras-cxr fit` in one process against 2 data-parallel processes on this machine's CPUs.

Each setting trains `recipes/smoke.py` (64 px cxr_resnet, embedded data) for
a few epochs in a fresh process and reads `train_images_per_second` from its
metrics.json (training steps only, validation excluded). Prints the median
and the range over rounds, and the ratio to one process. On a CPU the
processes share the cores (torch threads = cores / processes), so this
measures the cost of the collectives and the duplicated work, not a speed-up;
on GPUs each process has its own device.

    python benchmarks/ddp_cpu.py [--rounds 3] [--epochs 3] [--batch-size 32]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

SETTINGS = {
    "1 process": [],
    "2 processes": ["--nproc", "2"],
    "2 processes, --sync-bn": ["--nproc", "2", "--sync-bn"],
}


def run(extra, epochs, batch_size):
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "keras_cxr", "fit", "recipes/smoke.py", "--epochs", str(epochs),
                   "--batch-size", str(batch_size), "--set", "swa.start_epoch=none", "--quiet", "--out", out, *extra]
        subprocess.run(command, check=True, capture_output=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        with open(os.path.join(out, "metrics.json")) as f:
            return json.load(f)["train_images_per_second"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    results = {name: [] for name in SETTINGS}
    for round_ in range(args.rounds):
        for name, extra in SETTINGS.items():  # interleaved, so a slow spell hits every setting
            results[name].append(run(extra, args.epochs, args.batch_size))
            print(f"round {round_ + 1}: {name}: {results[name][-1]:.1f} images/s", flush=True)
    reference = statistics.median(results["1 process"])
    print(f"\n{os.cpu_count()} CPU cores, {args.epochs} epochs of recipes/smoke.py, global batch {args.batch_size}, "
          f"{args.rounds} rounds")
    print(f"{'setting':26s} {'images/s (median)':>18s} {'range':>16s} {'vs 1 process':>13s}")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:26s} {median:18.1f} {min(values):7.1f}-{max(values):<8.1f} {median / reference:13.2f}")


if __name__ == "__main__":
    main()
