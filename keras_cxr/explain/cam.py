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

For token features the same formulas run on the patch grid ("gradient-
weighted token maps"). Maps are upsampled bilinearly to the input size and
scaled to [0, 1] per image (all zeros when no location has positive evidence).
"""

import dataclasses

import numpy as np

from keras_cxr.explain.features import ExplainError, feature_model

METHODS = ("gradcam", "gradcam++")


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
        method: ``"gradcam"`` or ``"gradcam++"``.

    Example:
    ```python
    mapper = ClassActivationMapper(model, method="gradcam")
    result = mapper(images_uint8)             # maps of each image's predicted class
    result = mapper(images_uint8, targets=2)  # maps of class 2
    ```
    """

    def __init__(self, model, method="gradcam"):
        if method not in METHODS:
            raise ExplainError(f"{{method}} {method!r} is not one of {', '.join(METHODS)}", method="method")
        self.method = method
        self.model, self.layout = feature_model(model)
        self.image_size = tuple(model.input_shape[1:3])

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
        x.requires_grad_(True)  # gradients exist even when every weight is frozen
        with torch.enable_grad():
            features, logits = self.model(x, training=False)
            logits = logits.float()
            classes = logits.shape[1]
            if targets is None:
                chosen = logits.argmax(dim=1)
            else:
                chosen = torch.as_tensor(np.broadcast_to(np.asarray(targets), (len(x),)).copy(), device=logits.device)
                if int(chosen.min()) < 0 or int(chosen.max()) >= classes:
                    raise ExplainError(f"{{target}} class ids must be in 0..{classes - 1}, got {targets!r}",
                                       target="target")
            score = logits.gather(1, chosen[:, None].long()).sum()
            (grads,) = torch.autograd.grad(score, features)
        features = self._grid(features.detach().float())
        grads = self._grid(grads.float())
        weights = _weights(self.method, grads, features)
        cam = torch.relu((features * weights[:, None, None, :]).sum(dim=-1))
        cam = torch.nn.functional.interpolate(cam[:, None], size=self.image_size, mode="bilinear",
                                              align_corners=False)[:, 0]
        peak = cam.amax(dim=(1, 2), keepdim=True)
        cam = torch.where(peak > 0, cam / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(cam))
        probs = torch.softmax(logits.detach(), dim=1)
        return ActivationMaps(cam.cpu().numpy().astype(np.float32), probs.cpu().numpy(), chosen.cpu().numpy())
