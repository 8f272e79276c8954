"""Batch-level Mixup and CutMix producing soft targets.

One lambda and one permutation per batch, as in the source recipe. Mixing
the targets (``lam * y + (1 - lam) * y[perm]``) is equivalent to mixing the
losses of the two label sets, for any loss linear in its targets.
"""

import dataclasses
import math

import numpy as np

from keras_cxr.config import Config, ConfigError


def mixup(x, y, w, lam, perm):
    """Blend each image with `x[perm]` by `lam`; uint8 images are rounded back."""
    mixed = lam * x.astype(np.float32) + (1.0 - lam) * x[perm].astype(np.float32)
    if x.dtype == np.uint8:
        mixed = np.rint(np.clip(mixed, 0, 255)).astype(np.uint8)
    return mixed, _mix(y, lam, perm), _mix(w, lam, perm)


def cutmix(x, y, w, lam, perm, rng):
    """Paste a box of `x[perm]` into each image; returns the box-area lambda too.

    The box has sides ``sqrt(1 - lam)`` of the image's, a uniform random
    centre, and is clipped to the image; the returned lambda is the
    unpasted fraction of the image after clipping.
    """
    h, w_px = x.shape[1:3]
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * ratio), int(w_px * ratio)
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w_px))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, h)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, w_px)
    out = x.copy()
    out[:, top:bottom, left:right] = x[perm, top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / (h * w_px)
    return out, _mix(y, lam, perm), _mix(w, lam, perm), lam


def _mix(values, lam, perm):
    if values is None:
        return None
    values = np.asarray(values, dtype=np.float32)
    return (lam * values + (1.0 - lam) * values[perm]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Mixing(Config):
    """Per-batch Mixup or CutMix with soft targets.

    For each batch: Mixup with probability `mixup_p`; otherwise CutMix with
    probability `cutmix_p`. So with the recipe's 0.6 and 0.5, 60% of batches
    get Mixup, 20% CutMix and 20% neither.

    Args:
        mixup_p: probability of Mixup for a batch.
        mixup_alpha: Mixup lambda ~ Beta(alpha, alpha).
        cutmix_p: probability of CutMix for a batch that got no Mixup.
        cutmix_alpha: CutMix lambda ~ Beta(alpha, alpha).

    Example:

    ```python
    mixing = Mixing(mixup_p=0.6, mixup_alpha=1.2, cutmix_p=0.5, cutmix_alpha=1.0)
    x, y, w = mixing.apply(x, y, None, np.random.default_rng(0))
    ```
    """

    mixup_p: float = 0.0
    mixup_alpha: float = 1.2
    cutmix_p: float = 0.0
    cutmix_alpha: float = 1.0

    def validate(self):
        for field in ("mixup_p", "cutmix_p"):
            if not 0 <= getattr(self, field) <= 1:
                raise ConfigError(f"Mixing.{field}: must be a probability in [0, 1], got {getattr(self, field)!r}")
        for field in ("mixup_alpha", "cutmix_alpha"):
            if not getattr(self, field) > 0:
                raise ConfigError(f"Mixing.{field}: must be > 0, got {getattr(self, field)!r}")

    @property
    def enabled(self):
        return self.mixup_p > 0 or self.cutmix_p > 0

    def apply(self, x, y, w, rng):
        """Mix one batch.

        Args:
            x: `(B, H, W, C)` images (uint8 or float).
            y: `(B, K)` float targets.
            w: `(B,)` sample weights, or `None`.
            rng: a `np.random.Generator`.

        Returns:
            `(x, y, w)`: new arrays (the inputs are not modified), y float32
            rows still summing to what they summed to; `w` stays `None` if
            it was.
        """
        if len(x) < 2:
            return x, y, w
        if self.mixup_p and rng.random() < self.mixup_p:
            lam = rng.beta(self.mixup_alpha, self.mixup_alpha)
            return mixup(x, y, w, lam, rng.permutation(len(x)))
        if self.cutmix_p and rng.random() < self.cutmix_p:
            lam = rng.beta(self.cutmix_alpha, self.cutmix_alpha)
            x, y, w, _ = cutmix(x, y, w, lam, rng.permutation(len(x)), rng)
            return x, y, w
        return x, y, w
