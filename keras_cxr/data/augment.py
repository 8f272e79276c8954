"""Per-image augmentation on uint8 arrays, seeded by an explicit Generator.

`Augmentation.preprocess` is the deterministic part (optional CLAHE and
unsharp masking), applied in training and evaluation alike.
`Augmentation.apply` is the random part, applied in training only. Both take
and return `(H, W, 3)` uint8 arrays; nothing here touches global RNG state,
so a batch is reproducible from its generator alone.
"""

import dataclasses
import math

import numpy as np
from PIL import Image, ImageFilter

from keras_cxr.config import Config, ConfigError

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale (ColorJitter contrast).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def affine_matrix(size, angle=0.0, translate=(0.0, 0.0), scale=1.0, shear=0.0):
    """Forward 3x3 affine of a rotation/translation/scale/shear about the centre.

    Maps input pixel coordinates (x right, y down, pixel centres at +0.5) to
    output coordinates: ``T(centre + translate) R(angle) Sh(shear) S(scale)
    T(-centre)``. Positive `angle` turns the image counter-clockwise on
    screen; `shear` is an x-shear in degrees (torchvision's single-value
    shear).

    Args:
        size: `(width, height)` of the image.
        angle: rotation in degrees.
        translate: `(dx, dy)` shift in pixels.
        scale: zoom factor (> 1 enlarges).
        shear: x-shear angle in degrees.
    """
    cx, cy = size[0] / 2.0, size[1] / 2.0
    a = math.radians(angle)
    rotate = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]])
    shear_x = np.array([[1, math.tan(math.radians(shear)), 0], [0, 1, 0], [0, 0, 1]])
    zoom = np.diag([scale, scale, 1.0])
    to_origin = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
    back = np.array([[1, 0, cx + translate[0]], [0, 1, cy + translate[1]], [0, 0, 1]])
    return back @ rotate @ shear_x @ zoom @ to_origin


# Pixel centres sit at +0.5 in `affine_matrix`'s coordinates, at integers in OpenCV's.
_TO_OPENCV = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
_FROM_OPENCV = np.linalg.inv(_TO_OPENCV)


def warp_affine(image, matrix):
    """Apply a forward 3x3 `matrix` to a uint8 `(H, W, C)` image (C = 1 or 3).

    One bilinear resampling with OpenCV's `warpAffine` (12x faster than
    Pillow's `transform` on a 384 px grayscale image, and within half a
    gray level of it on average); areas mapped from outside the image are
    filled with 0. OpenCV runs single-threaded here: parallelism comes from
    the data loader's workers.
    """
    import cv2

    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    inverse = _TO_OPENCV @ np.linalg.inv(matrix) @ _FROM_OPENCV  # output -> input pixel indices
    h, w = image.shape[:2]
    out = cv2.warpAffine(
        np.ascontiguousarray(image), inverse[:2], (w, h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )
    return out.reshape(image.shape)


def _clahe(image, clip, grid):
    import cv2  # only needed when CLAHE is on

    clahe = cv2.createCLAHE(clipLimit=clip, tileGridSize=(grid, grid))
    if image.shape[-1] == 1:
        return clahe.apply(np.ascontiguousarray(image[..., 0]))[..., None]
    if np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]):
        gray = clahe.apply(np.ascontiguousarray(image[..., 0]))
        return np.repeat(gray[..., None], 3, axis=-1)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


@dataclasses.dataclass(frozen=True)
class Augmentation(Config):
    """Random geometric and photometric augmentation, plus optional CLAHE.

    Args:
        rotation: maximum rotation in degrees, drawn from U(-rotation, rotation).
        translate: maximum shift as a fraction of width/height, per axis.
        scale: zoom range `(low, high)`, drawn uniformly.
        shear: maximum x-shear in degrees, drawn from U(-shear, shear).
        brightness: pixel values multiplied by U(1 - b, 1 + b).
        contrast: pixels blended with the image's mean luma by U(1 - c, 1 + c)
            (torchvision ColorJitter semantics).
        erasing_p: probability of erasing one rectangle with uniform noise.
        erasing_scale: range of the erased area as a fraction of the image;
            the aspect ratio is log-uniform in (0.3, 3.3).
        clahe: deterministic CLAHE (OpenCV) in training and evaluation.
        clahe_clip: CLAHE clip limit.
        clahe_grid: CLAHE tiles per side.
        unsharp: deterministic unsharp mask (Pillow defaults: radius 2,
            150%, threshold 3) after CLAHE, in training and evaluation.
        hflip: random horizontal flip with probability 0.5. Off by default:
            the heart is on the left of a chest X-ray.

    Example:

    ```python
    aug = Augmentation(rotation=18, translate=0.12, scale=(0.88, 1.12))
    rng = np.random.default_rng(0)
    x = aug.apply(aug.preprocess(load_image(path, 384)), rng)
    ```
    """

    rotation: float = 10.0
    translate: float = 0.08
    scale: tuple[float, float] = (0.92, 1.08)
    shear: float = 12.0
    brightness: float = 0.2
    contrast: float = 0.2
    erasing_p: float = 0.35
    erasing_scale: tuple[float, float] = (0.02, 0.12)
    clahe: bool = False
    clahe_clip: float = 2.5
    clahe_grid: int = 8
    unsharp: bool = False
    hflip: bool = False

    def validate(self):
        def check(ok, field, rule):
            if not ok:
                raise ConfigError(f"Augmentation.{field}: {rule}, got {getattr(self, field)!r}")

        check(0 <= self.rotation <= 180, "rotation", "must be in [0, 180] degrees")
        check(0 <= self.translate < 1, "translate", "must be in [0, 1) (a fraction of the size)")
        check(0 < self.scale[0] <= self.scale[1], "scale", "must be (low, high) with 0 < low <= high")
        check(0 <= self.shear < 90, "shear", "must be in [0, 90) degrees")
        check(0 <= self.brightness <= 1, "brightness", "must be in [0, 1]")
        check(0 <= self.contrast <= 1, "contrast", "must be in [0, 1]")
        check(0 <= self.erasing_p <= 1, "erasing_p", "must be a probability in [0, 1]")
        lo, hi = self.erasing_scale
        check(0 < lo <= hi < 1, "erasing_scale", "must be (low, high) with 0 < low <= high < 1")
        check(self.clahe_clip > 0, "clahe_clip", "must be > 0")
        check(self.clahe_grid >= 1, "clahe_grid", "must be >= 1")

    @classmethod
    def off(cls):
        """An augmentation that changes nothing (every magnitude zero)."""
        return cls(
            rotation=0.0, translate=0.0, scale=(1.0, 1.0), shear=0.0,
            brightness=0.0, contrast=0.0, erasing_p=0.0,
        )

    @property
    def has_preprocessing(self):
        """Whether `preprocess` changes images (CLAHE or unsharp is on)."""
        return self.clahe or self.unsharp

    def preprocess(self, image):
        """The deterministic part: CLAHE then unsharp mask, when enabled."""
        if self.clahe:
            image = _clahe(image, self.clahe_clip, self.clahe_grid)
        if self.unsharp:
            sharp = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).filter(ImageFilter.UnsharpMask())
            image = np.asarray(sharp, dtype=np.uint8).reshape(image.shape)
        return image

    def apply(self, image, rng):
        """The random part, drawn from `rng`: affine, flip, colour, erasing.

        Args:
            image: `(H, W, 3)` uint8 array (already resized and
                preprocessed), or `(H, W, 1)` for a grayscale image, which
                is 3x cheaper to augment and equals the RGB result up to the
                erased noise being gray.
            rng: a `np.random.Generator`.

        Returns:
            A new uint8 array of the same shape (or `image` itself when every
            magnitude is zero).
        """
        h, w = image.shape[:2]
        if self.rotation or self.translate or self.scale != (1.0, 1.0) or self.shear:
            matrix = affine_matrix(
                (w, h),
                angle=rng.uniform(-self.rotation, self.rotation),
                translate=(
                    rng.uniform(-self.translate, self.translate) * w,
                    rng.uniform(-self.translate, self.translate) * h,
                ),
                scale=rng.uniform(*self.scale),
                shear=rng.uniform(-self.shear, self.shear),
            )
            image = warp_affine(image, matrix)
        if self.hflip and rng.random() < 0.5:
            image = image[:, ::-1].copy()
        if self.brightness or self.contrast:
            out = image.astype(np.float32)
            if self.brightness:
                out *= rng.uniform(1 - self.brightness, 1 + self.brightness)
                np.clip(out, 0, 255, out=out)
            if self.contrast:
                factor = rng.uniform(1 - self.contrast, 1 + self.contrast)
                mean = float(out.mean()) if out.shape[-1] == 1 else float((out @ _LUMA).mean())
                out = factor * out + (1 - factor) * mean
            image = np.rint(np.clip(out, 0, 255)).astype(np.uint8)
        if self.erasing_p and rng.random() < self.erasing_p:
            image = self._erase(image, rng)
        return image

    def _erase(self, image, rng):
        """torchvision RandomErasing: up to 10 tries to fit a box; noise fill."""
        h, w = image.shape[:2]
        log_ratio = (math.log(0.3), math.log(3.3))
        for _ in range(10):
            area = h * w * rng.uniform(*self.erasing_scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            eh = int(round(math.sqrt(area * aspect)))
            ew = int(round(math.sqrt(area / aspect)))
            if 0 < eh < h and 0 < ew < w:
                top = int(rng.integers(0, h - eh + 1))
                left = int(rng.integers(0, w - ew + 1))
                image = image.copy()
                image[top : top + eh, left : left + ew] = rng.integers(
                    0, 256, size=(eh, ew, image.shape[2]), dtype=np.uint8
                )
                return image
        return image
