"""On a CUDA GPU under mixed_float16: keras-cxr's accelerated paths against Keras's own.

Checks what the CPU tests cannot: seeded random draws (`keras_cxr.accel.seeds`)
and the fused AdamW step (`keras_cxr.accel.adam`) on CUDA tensors, cuDNN
batch normalization on float16 activations (`keras_cxr.accel.batchnorm`),
for one layer (outputs, input gradients, moving statistics, inference) and
for EfficientNetV2-S (a marked model: `keras_cxr.accel.graph` walks its
graph) trained a few steps both ways. Each side runs with
`keras_cxr.accel.enable()` or with acceleration off (`accel.disable()`:
Keras's own code). Run it on a GPU machine:

    KERAS_BACKEND=torch python benchmarks/gpu_check.py

It first prints `accel.enable()`'s status: a patch skipped there (its
library versions outside the tested range, or its probe failed) runs Keras's
own code on both sides, so its comparison checks nothing.

Expected: seeded random draws equal Keras's exactly; the fused AdamW steps
agree with Keras's to float32 rounding; the layer's moving statistics agree
to float32 rounding (rel < 1e-5), its outputs and gradients to float16
rounding (rel < 2e-3); the model's losses and probabilities stay close
(their trajectories drift apart by float16 rounding).
"""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from keras_cxr import accel, models  # noqa: E402
from keras_cxr.losses import FocalLoss  # noqa: E402
from keras_cxr.precision import set_precision  # noqa: E402
from keras_cxr.seeding import set_seed  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def with_kernels(fast, fn):
    """`fn()` with `keras_cxr.accel` enabled (fast) or off (Keras's own code); acceleration is off afterwards."""
    accel.disable()
    if fast:
        accel.enable()
    try:
        return fn()
    finally:
        accel.disable()


def accel_status():
    """Print which patches `accel.enable()` applies here; the others run Keras's code on both sides."""
    status = accel.enable()
    accel.disable()
    off = {name: state for name, state in status.items() if state not in ("on", "waiting")}
    print("keras_cxr.accel:", "every patch on" if not off else f"NOT ON (Keras's code on both sides): {off}")


def batch_norm_layer():
    set_precision("mixed_float16")
    layer = keras.layers.BatchNormalization(momentum=0.9)
    layer.build((8, 24, 24, 32))
    set_precision("float32")
    x = (torch.randn(8, 24, 24, 32, device=DEVICE) * 3 + 1.5).half()
    # A random projection: the sum of squares of a batch norm's output is
    # constant, so its gradient would be rounding noise.
    w = torch.randn(8, 24, 24, 32, device=DEVICE)

    def run():
        layer.moving_mean.assign(np.zeros(32, "float32"))
        layer.moving_variance.assign(np.ones(32, "float32"))
        xi = x.clone().requires_grad_(True)
        out = layer(xi, training=True)
        (out.float() * w).sum().backward()
        with torch.no_grad():
            inference = layer(x, training=False)
        return [out.detach().float().cpu().numpy(), xi.grad.float().cpu().numpy(), layer.moving_mean.numpy(),
                layer.moving_variance.numpy(), inference.float().cpu().numpy()]

    keras_result, fast_result = with_kernels(False, run), with_kernels(True, run)
    for name, a, b in zip(["train output", "input gradient", "moving mean", "moving variance", "inference output"],
                          keras_result, fast_result):
        print(f"BatchNormalization {name}: max |diff| / max |Keras| = {np.abs(a - b).max() / np.abs(a).max():.2e}")


def efficientnet(steps=5):
    def run():
        set_seed(0)
        set_precision("mixed_float16")
        model = models.build("effv2_s", num_classes=4, image_size=128, dropout=0.0)
        set_precision("float32")
        model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=FocalLoss())
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (16, 128, 128, 3), dtype=np.uint8)
        y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 16)]
        losses = [float(model.train_on_batch(x, y)) for _ in range(steps)]
        with torch.no_grad():
            probs = keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float32)
        return losses, probs

    (keras_losses, keras_probs), (fast_losses, fast_probs) = with_kernels(False, run), with_kernels(True, run)
    print("EfficientNetV2-S losses, Keras:", np.round(keras_losses, 4), "fast:", np.round(fast_losses, 4))
    print(f"EfficientNetV2-S probabilities after {steps} steps: max |diff| {np.abs(keras_probs - fast_probs).max():.2e}")


def random_draws():
    """Seeded draws with `keras_cxr.accel.seeds` (host copy of the seed state) vs Keras's: must be equal."""
    def run():
        generator = keras.random.SeedGenerator(5)
        x = torch.ones(8, 4, 4, 3, device=DEVICE)
        out = [keras.random.uniform((3,), seed=generator),
               keras.random.dropout(x, 0.5, noise_shape=(8, 1, 1, 1), seed=generator)]
        generator.state.assign(np.array([11, 40], dtype=generator.state.dtype))  # an outside write
        out += [keras.random.normal((4,), seed=generator) for _ in range(3)]
        return [keras.ops.convert_to_numpy(t) for t in out] + [keras.ops.convert_to_numpy(generator.state.value)]

    fast, reference = with_kernels(True, run), with_kernels(False, run)
    same = all(np.array_equal(a, b) for a, b in zip(fast, reference))
    print(f"Seeded random draws equal to Keras's: {same}")


def adam_steps():
    """Fused Adam with the cached plan vs Keras's Adam, 10 steps on the GPU."""
    def run():
        rng = np.random.default_rng(0)
        variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in [(64, 32), (32,), (3, 3, 8, 16)]]
        optimizer = keras.optimizers.AdamW(1e-2, weight_decay=0.05)
        for _ in range(10):
            grads = [torch.tensor(rng.normal(size=v.shape).astype("float32"), device=DEVICE) for v in variables]
            optimizer.apply(grads, variables)
        return [v.numpy() for v in variables]

    fast, reference = with_kernels(True, run), with_kernels(False, run)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(fast, reference))
    print(f"AdamW after 10 steps: max |fast - Keras| = {diff:.2e}")


if __name__ == "__main__":
    print("device:", torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (float16 batch norm runs in float32)")
    accel_status()
    random_draws()
    adam_steps()
    batch_norm_layer()
    efficientnet()
