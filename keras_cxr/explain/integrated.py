"""Integrated gradients (Sundararajan et al., 2017) of a class logit with respect to the input pixels.

The attribution of pixel `i` is `x_i * mean_k grad_i(f)(a_k * x)` over
`steps` points `a_k = (k + 0.5) / steps` on the straight path from a black
image (all zeros, before the model's own normalisation) to the image: the
midpoint rule for the path integral. The attributions of one image sum to
`f(x) - f(black)` up to the rule's error ("completeness"), which is what
makes them comparable across images and models. Unlike a gradient-weighted
feature tensor they do not depend on how a network spreads evidence across
tokens, so they locate what a transformer used as well as what a CNN used
(see the README's pointing tests), at the price of `steps` forward and
backward passes.
"""

import numpy as np


def integrated_gradients(logits_of, images, targets, steps=16):
    """Per-pixel integrated gradients of each image's target logit, summed over colour channels.

    Args:
        logits_of: a callable from a float32 `(N, H, W, C)` torch tensor to
            `(N, classes)` logits (e.g. a keras-cxr model up to its
            ``logits`` layer).
        images: `(N, H, W, C)` images as the model takes them (0-255).
        targets: `(N,)` class ids.
        steps: points on the path (more: closer to the integral).

    Returns:
        `(N, H, W)` float32 torch tensor of attributions.

    Example:
    ```python
    cam_model, _ = keras_cxr.explain.feature_model(model)
    attributions = integrated_gradients(lambda x: cam_model(x)[1], images, targets=[2] * len(images))
    ```
    """
    import keras
    import torch

    x = keras.ops.convert_to_tensor(np.asarray(images, np.float32)).detach()
    chosen = torch.as_tensor(np.asarray(targets), device=x.device).long()[:, None]
    total = torch.zeros_like(x)
    for k in range(steps):
        point = (x * ((k + 0.5) / steps)).requires_grad_(True)
        with torch.enable_grad():
            score = logits_of(point).float().gather(1, chosen).sum()
            (grad,) = torch.autograd.grad(score, point)
        total += grad
    return (total * x / steps).sum(dim=-1)
