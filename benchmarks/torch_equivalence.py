"""Do converted PyTorch checkpoints give torch's features? torchvision / timm vs keras-cxr, eval mode.

For each layout (torchvision RGB -> `densenet121`; torchxrayvision's 1-channel
DenseNet with its 18-pathology classifier and `op_threshs` buffer ->
`densenet121_xrv`):

1. build torchvision's `densenet121(weights=None)` (for xrv: conv0 with one
   input channel, `Linear(1024, 18)`, an `op_threshs` buffer: the key layout
   of ``xrv.models.DenseNet``), randomise every BatchNorm's weight and bias,
   set its running statistics from a batch of random images (so features
   keep a trained model's scale) then perturb them, and save its `state_dict`;
2. `keras_cxr.models.build(name, weights=that_file)` converts it;
3. feed both the same 0-255 RGB images (torch gets keras-cxr's preprocessing
   done in numpy) and compare the pooled features: torch's
   ``adaptive_avg_pool2d(relu(features(x)))`` against the keras-cxr model's
   ``pool`` layer, with Keras's own code and with `keras_cxr.accel` on.

A third row, `swin_t`, does the same for timm's `swin_tiny_patch4_window7_224`
(random init, LayerNorms and biases randomised, eval mode) against
`swin_t`: timm's pooled ``forward_head(forward_features(x), pre_logits=True)``
against the keras-cxr ``pool`` layer. It needs timm beside torchvision
(`TIMM_INSTALL` below).

And timm's `tf_efficientnetv2_s` -> `effv2_s` (and `_b0` -> `effv2_b0`) the same way (statistics of 8
images, perturbed by 2 %; torch is fed keras.applications' ``x / 128 - 1``, ImageNet mean / std for B0;
features are timm's ``forward_head(..., pre_logits=True)``).

torchvision and timm are not keras-cxr dependencies (torchvision would
replace the CPU torch with a CUDA build). Install them beside the venv,
without touching it, and run (`--models effv2_s` for one row):

    .venv/bin/python -m pip download "torchvision==0.28.*" --no-deps -d /tmp/tvwheel   # torch 2.13
    .venv/bin/python -m pip install --no-deps --target /tmp/tvlib /tmp/tvwheel/*.whl timm
    PYTHONPATH=/tmp/tvlib KERAS_BACKEND=torch .venv/bin/python benchmarks/torch_equivalence.py

The wheel's C extension does not load against the CPU torch; only its
operator registrations need it, so this script stubs them out (model
definitions are pure Python).

ConvNeXt (`convnext_t` <- timm's `convnext_tiny`): timm's model with random
weights (its layer scales, LayerNorm affines and biases randomised too, as
timm initialises them to 1e-6, 1 and 0), eval mode, its `state_dict` through
`models.build("convnext_t", weights=that_file)`; compared are timm's
``forward_head(forward_features(x), pre_logits=True)`` (pooled, `head.norm`ed
768 features) and the keras-cxr backbone's output. Needs timm beside the venv
too (``pip install --no-deps --target /tmp/tvlib "timm==1.0.*"``).
"""

import argparse
import os
import pathlib
import sys
import tempfile
import types

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's keras_cxr, also from a git worktree


def import_torchvision():
    # The CUDA wheel's compiled ops do not load against a CPU torch, and its
    # meta registrations then fail at import; the models do not need them.
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import torchvision

    return torchvision


def calibrate(model, x, mean_shift, var_factor):
    """Random BatchNorm weights; running statistics of batch `x`'s activations, then perturbed; eval mode.

    Statistics of real activations (as a trained checkpoint has them) keep the
    features at a trained model's scale; the perturbation (means moved by
    `mean_shift` standard deviations at most about, variances scaled by a
    factor in `var_factor`) makes them differ from any batch's own.
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.2)
            norm.momentum = None  # a cumulative average: the statistics of the batch below
        model.train()(torch.from_numpy(x))
        for norm in norms:
            norm.running_mean.add_(torch.randn_like(norm.running_mean) * mean_shift * norm.running_var.sqrt())
            norm.running_var.mul_(torch.empty_like(norm.running_var).uniform_(*var_factor))
            norm.momentum = 0.1
    return model.eval()


def torch_densenet(xrv, seed, image_size):
    import torch

    torchvision = import_torchvision()
    torch.manual_seed(seed)
    model = torchvision.models.densenet121(weights=None)
    if xrv:
        model.features.conv0 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        torch.nn.init.kaiming_normal_(model.features.conv0.weight)
        model.classifier = torch.nn.Linear(1024, 18)
        model.register_buffer("op_threshs", torch.rand(18))
    images = np.random.RandomState(seed + 1).randint(0, 256, (4, image_size, image_size, 3)).astype("uint8")
    return calibrate(model, torch_input(images, "xrv" if xrv else "imagenet"), 0.1, (0.7, 1.3))


def torch_effv2(seed, image_size, variant="s"):
    """timm's tf_efficientnetv2_<variant> (s, b0, ...). Statistics from 8 images (2 overfit the last stages' few
    pixels), perturbed by 2 %: larger perturbations compound over its 40 blocks (10 %: features up to ~50, where
    float32 torch itself is 1e-3 from float64 torch)."""
    import torch

    timm = import_timm()
    torch.manual_seed(seed)
    model = timm.create_model(f"tf_efficientnetv2_{variant}", pretrained=False)
    images = np.random.RandomState(seed + 1).randint(0, 256, (8, image_size, image_size, 3)).astype("uint8")
    return calibrate(model, torch_input(images, effv2_preprocessing(variant)), 0.02, (0.98, 1.02))


def effv2_preprocessing(variant):
    """keras.applications' EfficientNetV2 input scaling: ImageNet mean / std for B0-B3, ``x / 128 - 1`` for S/M/L."""
    return "imagenet" if variant.startswith("b") else "effv2"


def torch_input(images, preprocessing):
    """0-255 NHWC images as the torch model takes them: keras-cxr's preprocessing for the name, in numpy."""
    x = images.astype("float64")
    if preprocessing == "xrv":
        x = x.mean(axis=-1, keepdims=True) * (2048.0 / 255.0) - 1024.0
    elif preprocessing == "effv2":  # keras.applications EfficientNetV2's Rescaling
        x = x / 128.0 - 1.0
    else:
        x = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype="float32")


def keras_difference(name, reference, images, expected):
    """`models.build(name, weights=<reference's state_dict as a .pt>)`'s pooled features on `images` against
    `expected` (torch's), with Keras's own code and with keras_cxr.accel on; prints a row, returns the worst."""
    import keras
    import torch

    import keras_cxr.accel
    from keras_cxr import models

    batch, image_size = images.shape[:2]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"{name}.pt")
        torch.save(reference.state_dict(), path)
        model = models.build(name, image_size=image_size, weights=path)
    pooled = keras.Model(model.inputs, model.get_layer("head_dropout").input)  # the backbone's pooled output
    results = {}
    for mode, context in (("keras", keras_cxr.accel.disabled), ("accel", keras_cxr.accel.enabled)):
        with context():
            got = keras.ops.convert_to_numpy(pooled({"images": images.astype("float32")}, training=False))
        results[mode] = float(np.abs(got - expected).max())
    scale = float(np.abs(expected).max())
    print(f"{name:16s} {image_size}px batch {batch}: max |keras - torch| = {results['keras']:.2e} (Keras), "
          f"{results['accel']:.2e} (accel on); features up to {scale:.3f}, {expected.shape[1]} channels")
    return max(results.values())


def compare(name, image_size, batch, seed):
    import torch

    if name in ("swin_t", "convnext_t"):
        return {"swin_t": compare_swin, "convnext_t": compare_convnext}[name](image_size, batch, seed)
    images = np.random.RandomState(seed).randint(0, 256, (batch, image_size, image_size, 3)).astype("uint8")
    if name.startswith("effv2_"):
        variant = name.removeprefix("effv2_")
        reference = torch_effv2(seed, image_size, variant)
        with torch.no_grad():
            x = reference.forward_features(torch.from_numpy(torch_input(images, effv2_preprocessing(variant))))
            expected = reference.forward_head(x, pre_logits=True).numpy()
    else:
        xrv = name == "densenet121_xrv"
        reference = torch_densenet(xrv, seed, image_size)
        with torch.no_grad():
            features = reference.features(torch.from_numpy(torch_input(images, "xrv" if xrv else "imagenet")))
            expected = torch.nn.functional.adaptive_avg_pool2d(torch.relu(features), 1).flatten(1).numpy()
    return keras_difference(name, reference, images, expected)


def torch_convnext(seed):
    import torch

    timm = import_timm()
    torch.manual_seed(seed)
    model = timm.create_model("convnext_tiny", pretrained=False)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):  # timm's LayerNorm2d too
                module.weight.uniform_(0.5, 1.5)
            if isinstance(getattr(module, "bias", None), torch.nn.Parameter):
                module.bias.normal_(0.0, 0.1)
            if isinstance(getattr(module, "gamma", None), torch.nn.Parameter):  # a block's layer scale
                module.gamma.uniform_(0.5, 1.5)
    return model.eval()


def compare_convnext(image_size, batch, seed, name="convnext_t"):
    import torch

    reference = torch_convnext(seed)
    images = np.random.RandomState(seed).randint(0, 256, (batch, image_size, image_size, 3)).astype("uint8")
    with torch.no_grad():
        x = torch.from_numpy(torch_input(images, "imagenet"))
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True).numpy()
    return keras_difference(name, reference, images, expected)


# --- Swin-T: timm's swin_tiny_patch4_window7_224 -> swin_t --------------------------------------------------------

TIMM_INSTALL = ".venv/bin/python -m pip install --no-deps --target /tmp/tvlib 'timm==1.0.*' 'torchvision==0.28.*'"


def import_timm():
    """timm (no keras-cxr dependency), after the torchvision stub above; ImportError when it is not installed."""
    import_torchvision()
    import timm

    return timm


def torch_swin(seed, image_size):
    """timm's Swin-T, random init, eval mode; LayerNorms and biases randomised so every tensor's mapping shows."""
    import torch

    timm = import_timm()
    torch.manual_seed(seed)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=image_size)
    with torch.no_grad():
        for key, tensor in model.named_parameters():
            if "norm" in key:
                tensor.add_(torch.randn_like(tensor) * 0.2)
            elif key.endswith(".bias") or key.endswith("relative_position_bias_table"):
                tensor.normal_(0.0, 0.2)
    return model.eval()


def compare_swin(image_size, batch, seed):
    """timm Swin-T against `models.build("swin_t", weights=PATH.pt)`: pooled 768 features, max abs difference."""
    import torch

    reference = torch_swin(seed, image_size)
    images = np.random.RandomState(seed).randint(0, 256, (batch, image_size, image_size, 3)).astype("uint8")
    with torch.no_grad():
        tokens = reference.forward_features(torch.from_numpy(torch_input(images, "imagenet")))
        expected = reference.forward_head(tokens, pre_logits=True).numpy()
    return keras_difference("swin_t", reference, images, expected)


MODELS = ("densenet121", "densenet121_xrv", "swin_t", "convnext_t", "effv2_s", "effv2_b0")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = parser.parse_args(argv)
    worst = max(compare(name, args.image_size, args.batch, args.seed) for name in args.models)
    print(f"{'PASS' if worst <= args.tolerance else 'FAIL'}: worst {worst:.2e} (tolerance {args.tolerance:g})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
