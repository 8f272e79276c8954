"""Where a keras-cxr training step's host and GPU time go on a CUDA GPU.

EfficientNetV2-S, 384 px, batch 32, mixed_float16, the step `model.fit` runs
per batch (as `speed.py` times it for its "ours" contender: the process calls
`keras_cxr.accel.keep_freed_memory()` and `keras_cxr.accel.enable()` before
building, as the `keras-cxr` command does), three steps under the torch
profiler. `--plain` profiles Keras's own code instead (acceleration off).
Prints the ops by host time, kernel launches, stream synchronisations and
host-device copies per step, and the GPU kernel time per step (see
`RESULTS-gpu.md` for what it showed). Run it on a GPU machine:

    KERAS_BACKEND=torch python benchmarks/gpu_profile.py [--plain]
"""

import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("KERAS_TORCH_DEVICE", "cuda")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import speed  # noqa: E402

STEPS = 3


def main():
    torch.backends.cudnn.benchmark = True
    if "--plain" not in sys.argv[1:]:
        from keras_cxr import accel

        accel.keep_freed_memory()
        status = accel.enable()
        off = {name: state for name, state in status.items() if state not in ("on", "waiting")}
        print("keras_cxr.accel:", "every patch on" if not off else f"NOT ON (Keras's code runs for them): {off}")
    else:
        print("keras_cxr.accel: off (Keras's own code)")
    train, _, _ = speed.keras_steps("effv2_s", 384, 32, precision="mixed_float16")
    for _ in range(5):
        train()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(STEPS):
            train()
        torch.cuda.synchronize()
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=45))
    for key in ("cudaLaunchKernel", "cudaStreamSynchronize", "cudaMemcpyAsync"):
        found = [e for e in events if e.key == key]
        calls = found[0].count / STEPS if found else 0
        host_ms = found[0].self_cpu_time_total / 1000 / STEPS if found else 0
        print(f"{key}: {calls:.0f} calls per step, {host_ms:.1f} ms host time per step")
    gpu_ms = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA") / 1000 / STEPS
    print(f"GPU kernel time: {gpu_ms:.1f} ms per step")


if __name__ == "__main__":
    main()
