"""How often each map's peak falls inside the mark that decides the class (the README's pointing numbers).

Trains the pointing tests' models (tests/explain/test_cam.py: cxr_resnet 3
epochs, tiny Swin 15 epochs, 640 synthetic 96 px images) and scores, on the
100 held-out images, keras-cxr's methods and the alternatives tried for
token models: integrated gradients from other baselines, input occlusion
(Zeiler and Fergus, 2014),
plain input gradients and SmoothGrad, all read on the model's map grid.

    KERAS_BACKEND=torch .venv/bin/python benchmarks/pointing.py [--models tiny_swin cxr_resnet]

About 3 minutes on 2 CPU cores.
"""

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras_cxr  # noqa: E402,F401  (backend check before Keras)
import keras  # noqa: E402
import torch  # noqa: E402

from keras_cxr.explain import ClassActivationMapper  # noqa: E402
from keras_cxr.explain.integrated import integrated_gradients  # noqa: E402
from tests.explain.marks import grown_boxes, marked_images, pointing_rate  # noqa: E402
from tests.explain.test_cam import _train  # noqa: E402

EPOCHS = {"cxr_resnet": 3, "tiny_swin": 15}


def _on_grid(values, grid, size):
    """Per-pixel values `(N, H, W)` averaged per grid cell and upsampled as keras-cxr's maps are."""
    cells = torch.nn.functional.adaptive_avg_pool2d(torch.as_tensor(values).float()[:, None], grid)
    return torch.nn.functional.interpolate(cells, size=size, mode="bilinear")[:, 0].numpy()


def _alternatives(model, grid, x, targets):
    """{name: maps} of the methods keras-cxr does not ship, read on `grid`."""
    size = x.shape[1:3]
    logits = keras.Model(model.inputs, model.get_layer("logits").output)
    chosen = torch.as_tensor(targets).long()[:, None]
    images = keras.ops.convert_to_tensor(x.astype(np.float32))

    def score(batch):
        return logits(batch).float().gather(1, chosen)[:, 0]

    def ig_from(baseline, steps=16):
        base = keras.ops.convert_to_tensor(baseline.astype(np.float32))
        shifted = integrated_gradients(lambda t: logits(t + base), x - baseline, targets, steps)
        return _on_grid(torch.relu(shifted), grid, size)

    blurred = torch.nn.functional.avg_pool2d(images.permute(0, 3, 1, 2), 31, stride=1, padding=15,
                                             count_include_pad=False).permute(0, 2, 3, 1).numpy()
    found = {
        "integrated gradients from mean grey": ig_from(np.broadcast_to(x.mean(axis=(1, 2, 3), keepdims=True),
                                                                       x.shape).astype(np.float32)),
        "integrated gradients from a 31 px blur": ig_from(blurred),
    }
    point = images.clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(score(point).sum(), point)
    found["input gradient, absolute"] = _on_grid(grad.abs().sum(-1), grid, size)
    noisy = torch.zeros_like(images)
    for _ in range(16):
        point = (images + torch.randn_like(images) * 15).requires_grad_(True)
        with torch.enable_grad():
            noisy += torch.autograd.grad(score(point).sum(), point)[0].abs()
    found["SmoothGrad (16 samples, sigma 15)"] = _on_grid(noisy.sum(-1), grid, size)
    with torch.no_grad():
        base = score(images)
        stride = size[0] // grid[0]
        for patch in (stride, 2 * stride):
            drops = torch.zeros(len(x), *grid)
            for r in range(grid[0]):
                for c in range(grid[1]):
                    covered = images.clone()
                    top = max(0, r * stride + stride // 2 - patch // 2)
                    left = max(0, c * stride + stride // 2 - patch // 2)
                    covered[:, top:top + patch, left:left + patch] = float(x.mean())
                    drops[:, r, c] = base - score(covered)
            found[f"input occlusion, {patch} px grey patch"] = _on_grid(torch.relu(drops), grid, size)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny_swin", "cxr_resnet"], choices=sorted(EPOCHS))
    args = parser.parse_args()
    x, y, boxes = marked_images(100, 96, mark_size=24, seed=1)
    grown = grown_boxes(boxes, 8, 96)
    print("| model | method | peak inside the mark | within 8 px |\n| --- | --- | --- | --- |")
    for name in args.models:
        model = _train(name, 96, epochs=EPOCHS[name])
        mappers = {method: ClassActivationMapper(model, method)
                   for method in ("gradcam", "gradcam++", "integrated-gradients")}
        results = {method: mapper(x) for method, mapper in mappers.items()}
        targets = results["gradcam"].targets  # every method explains the predicted class
        correct = targets == y
        maps = {method: result.maps for method, result in results.items()}
        maps.update(_alternatives(model, mappers["gradcam"].layout.grid, x, targets))
        for method, found in maps.items():
            inside, counted = pointing_rate(found, boxes, correct)
            near, _ = pointing_rate(found, grown, correct)
            print(f"| {name} (accuracy {correct.mean():.2f}, {counted} marked correct) | {method} | {inside:.2f} "
                  f"| {near:.2f} |", flush=True)


if __name__ == "__main__":
    main()
