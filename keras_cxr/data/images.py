"""Decode an image file into a square uint8 RGB array.

Every pixel the models see goes through `load_image`: training, evaluation
and prediction resize the same way, so there is no train/test skew. DICOM
files become 8-bit images in `keras_cxr.data.dicom` first, then take the
same path.
"""

import contextlib
import os

import numpy as np
from PIL import Image

from keras_cxr.data import dicom


class ImageError(ValueError):
    """An image file cannot be decoded; the message names the file."""


def _stretch_to_uint8(values):
    """Scale an array linearly from its finite min..max onto 0..255.

    16-bit and float X-rays rarely use their whole range (12-bit detectors,
    windowed exports), so clipping would waste most of the 8 bits. A constant
    image becomes all zeros.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    lo, hi = values[finite].min(), values[finite].max()
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    scaled = np.where(finite, (values - lo) * (255.0 / (hi - lo)), 0.0)
    return np.rint(scaled).astype(np.uint8)


def _composite_on_black(rgba):
    """RGBA uint8 array -> RGB uint8 array, as if drawn over a black background."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    return ((rgb * alpha + 127) // 255).astype(np.uint8)


def to_rgb_uint8(image):
    """Convert a Pillow image of any common mode to an 8-bit RGB Pillow image.

    - ``L``, ``1``, ``CMYK``, ``YCbCr``, ``RGBX``...: Pillow's own conversion.
    - ``I;16*``, ``I``, ``F`` (16-bit, 32-bit and float): stretched from their
      actual min..max to 0..255, then replicated to RGB.
    - Alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency): composited
      on black, so transparent areas read as "no signal" like an X-ray's
      background.

    Args:
        image: a `PIL.Image.Image`, already opened.

    Returns:
        A `PIL.Image.Image` in mode ``RGB``.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        gray = _stretch_to_uint8(np.asarray(image))
        return Image.fromarray(gray).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = np.asarray(image.convert("RGBA"))
        return Image.fromarray(_composite_on_black(rgba))
    return image.convert("RGB")


_GRAY_MODES = ("L", "1")


def _resized_array(image, size):
    """`(size, size, 1)` for grayscale Pillow images, `(size, size, 3)` otherwise."""
    if image.mode in _GRAY_MODES or image.mode.startswith("I") or image.mode == "F":
        gray = image.convert("L") if image.mode in _GRAY_MODES else Image.fromarray(_stretch_to_uint8(np.asarray(image)))
        # Pillow resamples each band alike, so resizing one band and repeating
        # it equals resizing the RGB image, at a third of the cost.
        return np.asarray(gray.resize((size, size), Image.BILINEAR), dtype=np.uint8)[..., None].copy()
    rgb = to_rgb_uint8(image).resize((size, size), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).copy()


def load_image(path, size, keep_gray=False):
    """Decode `path` and resize it to `(size, size)` RGB uint8.

    The resize is Pillow BILINEAR straight to a square (the aspect ratio is
    not kept), which antialiases when shrinking. EXIF orientation is
    ignored: the pixels are used as stored.

    Args:
        path: image file path (JPEG, PNG, anything Pillow reads, or DICOM:
            a ``.dcm``/``.dicom`` name or the ``DICM`` marker at byte 128,
            see `keras_cxr.data.dicom`), or an open binary file object (its
            ``name`` attribute, when present, names it in errors), e.g.
            `io.BytesIO` of a file's bytes.
        size: output side length in pixels.
        keep_gray: return grayscale files (8-bit, 16-bit, float, 1-bit) as
            `(size, size, 1)` instead of repeating them into three channels,
            so augmentation can work on one channel (the pixel values are
            the same).

    Returns:
        `np.ndarray` of shape `(size, size, 3)` (or `(size, size, 1)`, see
        `keep_gray`) and dtype uint8.

    Raises:
        ImageError: for a missing, empty, truncated, non-image or
            oversized (decompression bomb) file, or a DICOM file without
            pixel data or compressed in a transfer syntax no installed
            handler decodes; the message names `path`.

    Example:

    ```python
    x = load_image("cxr4/images/2.jpeg", 384)  # (384, 384, 3) uint8
    ```
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    with _opened(path) as image:
        image.load()
        array = _resized_array(image, int(size))
        return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 and not keep_gray else array


def check_image(path):
    """Raise the `ImageError` that `load_image(path, ...)` would raise, faster.

    JPEGs are decoded at a reduced scale (Pillow's `draft`), which still
    reads the whole file, so truncated and corrupt files fail here too.
    DICOM files are decoded in full.
    """
    with _opened(path) as image:
        if image.format == "JPEG":
            image.draft(image.mode, (64, 64))
        image.load()
        to_rgb_uint8(image)


def source_name(source):
    """How errors name an image source: a path, or a file object's ``name`` (``<bytes>`` without one)."""
    if hasattr(source, "read"):
        return str(getattr(source, "name", "<bytes>"))
    return os.fspath(source)


@contextlib.contextmanager
def _opened(source):
    """`Image.open(source)`, with every failure inside the block turned into an `ImageError` naming it.

    A DICOM source yields the image `keras_cxr.data.dicom.read_image` decodes.
    """
    path = source_name(source)
    if dicom.is_dicom(source, path):
        try:
            image = dicom.read_image(source, path)
        except dicom.DicomError as e:
            raise ImageError(str(e)) from e
        yield image
        return
    try:
        with Image.open(source if hasattr(source, "read") else path) as image:
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; make
            # it an error here rather than toggle global warning filters,
            # which is not thread-safe in the data workers.
            limit = Image.MAX_IMAGE_PIXELS
            if limit and image.width * image.height > limit:
                raise ImageError(
                    f"{path}: {image.width}x{image.height} pixels exceeds the "
                    f"decompression-bomb limit of {limit} pixels (PIL.Image.MAX_IMAGE_PIXELS)"
                )
            yield image
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: image too large, possible decompression bomb ({e})") from e
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except Exception as e:
        # Pillow's decoders raise a zoo of types for broken files (OSError,
        # SyntaxError, struct.error, EOFError, ValueError...).
        reason = "empty file" if _is_empty(source) else str(e)
        raise ImageError(f"{path}: cannot read image: {reason} ({type(e).__name__})") from e


def _is_empty(source):
    if hasattr(source, "read"):
        try:
            return source.seek(0, os.SEEK_END) == 0
        except (OSError, ValueError):
            return False
    return os.path.isfile(source) and os.path.getsize(source) == 0
