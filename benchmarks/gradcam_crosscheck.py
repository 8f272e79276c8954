"""Cross-check keras-cxr's Grad-CAM against the grad-cam package (pytorch-grad-cam) on the same model.

pytorch-grad-cam needs torchvision, so it is not a keras-cxr dependency; run
this in the benchmark environment (`bash benchmarks/run` makes .venv-bench):

    .venv-bench/bin/pip install grad-cam && .venv-bench/bin/python benchmarks/gradcam_crosscheck.py

A Keras model on the torch backend is a `torch.nn.Module` and its layers'
forward hooks run, so the package works on it given two adapters: a module
that takes NCHW input (the package reads the image size from the last two
input axes) and a `reshape_transform` that turns Keras's channels-last
activations (or tokens) into NCHW. The script prints the largest and mean difference
between the two maps per CNN family (the logit of class 1, random weights).
"""

import numpy as np

from keras_cxr import models  # noqa: F401  (selects the torch backend before keras loads)


def main():
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from keras_cxr.explain import ClassActivationMapper
    from keras_cxr.seeding import set_seed

    import keras

    class ChannelsFirstLogits(torch.nn.Module):
        """NCHW in, the class logits out (keras-cxr's Grad-CAM differentiates the logit, not the probability)."""

        def __init__(self, model):
            super().__init__()
            self.logits = keras.Model(model.inputs, model.get_layer("logits").output)

        def forward(self, x):
            return self.logits(x.permute(0, 2, 3, 1), training=False)

    for name in ("cxr_resnet", "tiny_effv2", "tiny_effv2_rw"):
        set_seed(0)
        model = models.build(name, image_size=64)
        images = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
        ours = ClassActivationMapper(model)(images, targets=1).maps
        ours = (ours - ours.min(axis=(1, 2), keepdims=True)) / np.maximum(np.ptp(ours, axis=(1, 2), keepdims=True), 1e-7)
        layer = model.get_layer("backbone").layers[-1]  # whose output is the backbone's feature map
        cam = GradCAM(model=ChannelsFirstLogits(model), target_layers=[layer],
                      reshape_transform=lambda t: t.permute(0, 3, 1, 2))
        theirs = cam(input_tensor=torch.tensor(images).permute(0, 3, 1, 2), targets=[ClassifierOutputTarget(1)] * 4)
        # Both maps rescaled to [0, 1] by min and max (keras-cxr divides by the maximum only); the package
        # upsamples with OpenCV, keras-cxr with torch's bilinear interpolation.
        gap = np.abs(ours - theirs)
        print(f"{name:14s} layer {layer.name!r}: |keras-cxr - grad-cam| max {gap.max():.4f}, mean {gap.mean():.4f}")


if __name__ == "__main__":
    main()
