"""Class-activation maps (Grad-CAM, Grad-CAM++) by torch autograd on a keras-cxr model.

A Keras model on the torch backend runs eagerly as torch operations, so the
gradient of a class logit with respect to the feature tensor that
`feature_model` exposes is one `torch.autograd.grad` call. (The grad-cam
package gives the same maps on keras-cxr models with an NCHW adapter, see
benchmarks/gradcam_crosscheck.py, but needs torchvision: see the README.)

- Grad-CAM (Selvaraju et al., 2017): channel weights are the spatial mean
  of the gradients; the map is ReLU(sum_c weight_c * A_c).
- Grad-CAM++ (Chattopadhay et al., 2018): channel weights are
  sum_ij alpha_ij * ReLU(grad_ij) with alpha = g^2 / (2 g^2 + sum_ij(A) g^3),
  which spreads the map over several instances of a class.
- Integrated gradients (see `keras_cxr.explain.integrated`): the positive
  per-pixel attributions averaged over each cell of the same grid (each
  token's patch for Swin and DINOv2, each cell of the last conv stage for
  CNNs), so the map has the layout of a Grad-CAM map.

For token features the Grad-CAM formulas run on the patch grid ("gradient-
weighted token maps"). They locate evidence only to within about a token:
attention spreads it over neighbouring tokens before the mapped tensor, so
``"auto"`` (the default) maps transformers by integrated gradients and
CNNs by Grad-CAM. Maps are upsampled bilinearly to the input size and
scaled to [0, 1] per image (all zeros when no location has positive evidence).
"""

import dataclasses

import numpy as np

from keras_cxr.explain.features import ExplainError, feature_model
from keras_cxr.explain.integrated import integrated_gradients

METHODS = ("gradcam", "gradcam++", "integrated-gradients")


@dataclasses.dataclass(frozen=True, eq=False)
class ActivationMaps:
    """Maps for a batch of images.

    Attributes:
        maps: `(N, H, W)` float32 in [0, 1], at the model's input size.
        probs: `(N, C)` class probabilities of the same forward pass.
        targets: `(N,)` the class each map explains.
    """

    maps: np.ndarray
    probs: np.ndarray
    targets: np.ndarray


def _weights(method, grads, features):
    """Channel weights `(N, C)` from gradients and features `(N, h, w, C)`."""
    import torch

    if method == "gradcam":
        return grads.mean(dim=(1, 2))
    grads2 = grads.pow(2)
    denominator = 2 * grads2 + features.sum(dim=(1, 2), keepdim=True) * grads.pow(3)
    alpha = grads2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    return (alpha * torch.relu(grads)).sum(dim=(1, 2))


class ClassActivationMapper:
    """Computes class-activation maps of one keras-cxr model.

    Args:
        model: a keras-cxr Keras model (see `feature_model` for which
            tensor each family is mapped at).
        method: ``"gradcam"``, ``"gradcam++"``, ``"integrated-gradients"``
            or ``"auto"`` (integrated gradients for token models, Grad-CAM
            for the others); `self.method` is the one used.
        steps: path points of integrated gradients.

    Example:
    ```python
    mapper = ClassActivationMapper(model, method="gradcam")
    result = mapper(images_uint8)             # maps of each image's predicted class
    result = mapper(images_uint8, targets=2)  # maps of class 2
    ```
    """

    def __init__(self, model, method="auto", steps=16):
        if method != "auto" and method not in METHODS:
            raise ExplainError(f"{{method}} {method!r} is not one of auto, {', '.join(METHODS)}", method="method")
        if int(steps) < 1:
            raise ExplainError(f"{{steps}} must be at least 1, got {steps!r}", steps="steps")
        self.model, self.layout = feature_model(model)
        if method == "auto":
            method = "integrated-gradients" if self.layout.kind == "tokens" else "gradcam"
        self.method, self.steps = method, int(steps)
        self.image_size = tuple(model.input_shape[1:3])

    @property
    def source(self):
        """What the maps are read from, in words (for reports)."""
        if self.method != "integrated-gradients":
            return self.layout.source
        h, w = self.layout.grid
        return f"the input pixels, averaged over the {h}x{w} grid of {self.layout.source}"

    def _grid(self, features):
        if self.layout.kind == "map":
            return features
        n, _, channels = features.shape
        h, w = self.layout.grid
        return features[:, self.layout.prefix_tokens:].reshape(n, h, w, channels)

    def __call__(self, images, targets=None):
        """Maps for `images` (`(N, H, W, 3)`, 0-255) of class `targets`.

        Args:
            images: a batch as the model takes it.
            targets: None (each image's predicted class), one class id for
                all, or `(N,)` class ids.

        Returns:
            `ActivationMaps`.
        """
        import keras
        import torch

        x = keras.ops.convert_to_tensor(np.asarray(images, np.float32))
        gradcam = self.method != "integrated-gradients"
        x.requires_grad_(gradcam)  # gradients exist even when every weight is frozen
        with torch.enable_grad() if gradcam else torch.no_grad():
            features, logits = self.model(x, training=False)
            logits = logits.float()
            chosen = self._targets(logits, targets, len(x))
            if gradcam:
                score = logits.gather(1, chosen[:, None]).sum()
                (grads,) = torch.autograd.grad(score, features)
        if gradcam:
            features = self._grid(features.detach().float())
            weights = _weights(self.method, self._grid(grads.float()), features)
            cam = torch.relu((features * weights[:, None, None, :]).sum(dim=-1))
        else:
            attributions = integrated_gradients(lambda t: self.model(t, training=False)[1], images, chosen,
                                                self.steps)
            cam = torch.nn.functional.adaptive_avg_pool2d(torch.relu(attributions)[:, None], self.layout.grid)[:, 0]
        cam = torch.nn.functional.interpolate(cam[:, None], size=self.image_size, mode="bilinear",
                                              align_corners=False)[:, 0]
        peak = cam.amax(dim=(1, 2), keepdim=True)
        cam = torch.where(peak > 0, cam / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(cam))
        probs = torch.softmax(logits.detach(), dim=1)
        return ActivationMaps(cam.cpu().numpy().astype(np.float32), probs.cpu().numpy(), chosen.cpu().numpy())

    @staticmethod
    def _targets(logits, targets, count):
        import torch

        if targets is None:
            return logits.argmax(dim=1)
        chosen = torch.as_tensor(np.broadcast_to(np.asarray(targets), (count,)).copy(), device=logits.device).long()
        classes = logits.shape[1]
        if int(chosen.min()) < 0 or int(chosen.max()) >= classes:
            raise ExplainError(f"{{target}} class ids must be in 0..{classes - 1}, got {targets!r}", target="target")
        return chosen
