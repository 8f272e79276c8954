"""Decode a DICOM file into the 8-bit image every other format becomes.

`keras_cxr.data.images.load_image` sends DICOM files here (by suffix or by
the ``DICM`` marker) and then resizes the result exactly like a JPEG, so a
DICOM and a JPEG of the same 8-bit pixels give the model the same input.

The grey levels follow the DICOM display pipeline, first frame only:

1. Modality LUT, or Rescale Slope / Intercept.
2. VOI LUT, or Window Center / Width, when the file has one: the
   transform's whole output range maps linearly onto 0..255.
3. Without a VOI transform: 8-bit unsigned pixels (and no rescale) are used
   as stored; anything else is stretched from its actual min..max to
   0..255, like a 16-bit PNG.
4. MONOCHROME1 (white is low) is inverted, so bone is bright as in
   MONOCHROME2 and JPEGs.

Colour files (RGB, YBR_*, PALETTE COLOR) become RGB; 8-bit ones are used as
stored, deeper ones are scaled from their bit depth. pydicom is imported
only when a DICOM file is read. This module imports nothing from
`keras_cxr.data.images`, which calls it.
"""

import os
import re

import numpy as np
from PIL import Image

SUFFIXES = (".dcm", ".dicom")
_MAGIC_OFFSET, _MAGIC = 128, b"DICM"
_PIP_NAMES = {"gdcm": "python-gdcm"}  # import name -> pip name, where they differ


class DicomError(ValueError):
    """A DICOM file cannot be decoded; the message starts with the file's name."""


def is_dicom(source, name):
    """Whether `source` is to be read as DICOM: a ``.dcm``/``.dicom`` name or the ``DICM`` marker at byte 128.

    Args:
        source: a path or an open binary file object (its position is kept).
        name: the source's name (a path, or a file object's ``name``).

    Returns:
        True or False; a missing or unreadable file is DICOM only by its name.
    """
    if os.path.splitext(name)[1].lower() in SUFFIXES:
        return True
    head = _head(source)
    return head is not None and _marked(head)


def _head(source):
    """The first 132 bytes of `source` (fewer for a short file), or None when it cannot be read."""
    try:
        if hasattr(source, "read"):
            start = source.tell()
            try:
                return source.read(_MAGIC_OFFSET + len(_MAGIC))
            finally:
                source.seek(start)
        with open(source, "rb") as f:
            return f.read(_MAGIC_OFFSET + len(_MAGIC))
    except (OSError, ValueError):
        return None


def _marked(head):
    return head[_MAGIC_OFFSET:] == _MAGIC


def _bare_dataset(head):
    """Whether `head` can start a dataset without preamble or marker (raw datasets, ACR-NEMA exports).

    Such files open with a low group (command, file meta, directory or
    identifying elements) in either byte order. Checking it spares pydicom
    from parsing arbitrary bytes, which it does with a warning per element.
    """
    return len(head) >= 8 and head[:2] in (b"\x00\x00", b"\x02\x00", b"\x04\x00", b"\x08\x00", b"\x00\x08")


def read_image(source, name):
    """Decode the first frame of a DICOM file into a Pillow image for `load_image` to resize.

    Args:
        source: a path or an open binary file object.
        name: how errors name it (`keras_cxr.data.images.source_name`).

    Returns:
        A `PIL.Image.Image`: mode ``L`` (8-bit grey levels) or ``RGB``
        (colour) as described in this module's docstring, or mode ``F``
        for monochrome data without a VOI transform that is not 8-bit
        (`load_image` stretches it from its min..max, like a 16-bit PNG).

    Raises:
        DicomError: the file is missing, empty, not DICOM, has no pixel
            data, is truncated, exceeds `PIL.Image.MAX_IMAGE_PIXELS`, or is
            compressed in a transfer syntax no installed pydicom handler
            decodes (the message names the packages that would); the
            message starts with the file's name.

    Example:

    ```python
    image = read_image("study/IM0001.dcm", "study/IM0001.dcm")  # mode "L"
    ```
    """
    _require_pydicom(name)
    ds = _read_dataset(source, name)
    _check_pixel_limit(name, _int(ds, "Columns", name), _int(ds, "Rows", name))
    pixels = _first_frame(ds, name)
    try:
        return _to_image(pixels, ds)
    except Exception as e:
        # Malformed LUT descriptors, window widths < 1, unknown VOI functions...
        raise DicomError(f"{name}: cannot read DICOM: {e} ({type(e).__name__})") from e


def _require_pydicom(name):
    try:
        import pydicom.pixels  # noqa: F401  (3.0 added the pixels module)
    except ImportError:
        raise DicomError(f"{name}: reading DICOM needs pydicom 3.0 or later: pip install 'pydicom>=3.0'") from None


def _check_pixel_limit(name, width, height):
    """The decompression-bomb limit `load_image` applies to Pillow, checked before any pixel is decoded."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise DicomError(f"{name}: {width}x{height} pixels exceeds the decompression-bomb limit "
                         f"of {limit} pixels (PIL.Image.MAX_IMAGE_PIXELS)")


def _read_dataset(source, name):
    import pydicom

    head = _head(source)
    if head == b"":
        raise DicomError(f"{name}: cannot read DICOM: empty file")
    marked = head is not None and _marked(head)
    if head is not None and not marked and not _bare_dataset(head):
        raise DicomError(f"{name}: cannot read DICOM: not a DICOM file (no 'DICM' marker at byte 128)")
    try:
        ds = pydicom.dcmread(source, force=not marked)
    except FileNotFoundError:
        raise DicomError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise DicomError(f"{name}: cannot read DICOM: is a directory") from None
    except Exception as e:
        if not marked:
            raise DicomError(f"{name}: cannot read DICOM: not a DICOM file (no 'DICM' marker at byte 128)") from e
        raise DicomError(f"{name}: cannot read DICOM: {e} ({type(e).__name__})") from e
    if not any(keyword in ds for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if not marked and not any(element.keyword for element in ds):
            # Read with force=True, any bytes "parse": into unknown tags.
            raise DicomError(f"{name}: cannot read DICOM: not a DICOM file (no 'DICM' marker at byte 128)")
        raise DicomError(f"{name}: cannot read DICOM: no pixel data (the file has no PixelData element)")
    if "TransferSyntaxUID" not in ds.file_meta:
        _infer_transfer_syntax(ds)
    return ds


def _infer_transfer_syntax(ds):
    """Bare datasets (no file meta) are uncompressed: their syntax is the encoding they were read in."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = ds.original_encoding
    if implicit is not None and little is not None:
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )


def _int(ds, keyword, name):
    try:
        return int(ds[keyword].value)
    except (KeyError, TypeError, ValueError):
        raise DicomError(f"{name}: cannot read DICOM: missing or invalid {keyword}") from None


def _first_frame(ds, name):
    """The first frame as an array: `(rows, columns)` or `(rows, columns, 3)` RGB for colour files."""
    from pydicom.pixels import get_decoder, pixel_array

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    decoder = get_decoder(syntax) if syntax is not None and syntax.is_compressed else None
    if syntax is not None and syntax.is_compressed and (decoder is None or not decoder.is_available):
        raise DicomError(f"{name}: cannot decode DICOM transfer syntax {_syntax_name(syntax)}: "
                         f"no pixel data handler for it is installed; {_install_hint(decoder)}")
    try:
        return pixel_array(ds, index=0)
    except Exception as e:
        reason = " ".join(str(e).split())
        if decoder is not None and decoder.missing_dependencies:
            raise DicomError(f"{name}: cannot decode DICOM transfer syntax {_syntax_name(syntax)} "
                             f"({reason}); {_install_hint(decoder)}") from e
        short = re.search(r"less than expected \((\d+) vs (\d+) bytes\)", reason)
        if short:
            raise DicomError(f"{name}: cannot read DICOM pixel data: truncated file "
                             f"({short[1]} of {short[2]} bytes)") from e
        raise DicomError(f"{name}: cannot read DICOM pixel data: {reason} ({type(e).__name__})") from e


def _syntax_name(syntax):
    return f"'{syntax.name}' ({syntax})" if syntax.name != str(syntax) else str(syntax)


def _install_hint(decoder):
    """'pip install ...' for each pydicom plugin that would decode, from pydicom's own list of missing packages."""
    options = []
    for line in decoder.missing_dependencies if decoder is not None else []:
        _, _, requires = line.partition(" - requires ")
        names = []
        for requirement in requires.replace(" and ", ", ").split(", "):
            package = requirement.split(">")[0].split("=")[0].split("<")[0].strip()
            if package and package != "numpy":
                names.append(_PIP_NAMES.get(package, package))
        if names:
            options.append("pip install " + " ".join(names))
    if not options:
        return "pydicom has no decoder for it"
    return "install a handler: " + ", or ".join(options)


def _to_image(pixels, ds):
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(pixels, ds)
    if pixels.ndim == 3:
        if pixels.dtype != np.uint8:
            depth = 16 if photometric == "PALETTE COLOR" else int(ds.BitsStored)
            pixels = np.rint(pixels * (255.0 / (2**depth - 1))).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    levels, stretch = _grey_levels(pixels, ds)
    if photometric == "MONOCHROME1":
        # Mirror the range: after stretching this is 255 - level.
        levels = 255.0 - levels if not stretch else levels.max() + levels.min() - levels
    if stretch:
        return Image.fromarray(levels.astype(np.float32), "F")
    return Image.fromarray(np.rint(levels).astype(np.uint8), "L")


def _grey_levels(stored, ds):
    """`(levels, stretch)`: float grey levels in 0..255 (stretch False), or values to stretch from their min..max."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    identity = _identity_modality(ds)
    values = stored if identity else apply_modality_lut(stored, ds)
    voi_range = _voi_output_range(ds)
    if voi_range is not None:
        lo, hi = voi_range
        windowed = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
        return np.clip((windowed - lo) * (255.0 / (hi - lo)), 0.0, 255.0), False
    eight_bit = identity and int(ds.BitsStored) == 8 and int(ds.PixelRepresentation) == 0
    return np.asarray(values, dtype=np.float64), not eight_bit


def _identity_modality(ds):
    if ds.get("ModalityLUTSequence"):
        return False
    return float(ds.get("RescaleSlope", 1) or 1) == 1 and float(ds.get("RescaleIntercept", 0) or 0) == 0


def _voi_output_range(ds):
    """`(lo, hi)` of what `apply_voi_lut` returns for this file, or None when it has no VOI transform.

    A VOI LUT's range is the span of its entries (many files leave the top
    bits of a 16-bit LUT unused). A window's is pydicom's: the modality
    output range, i.e. the stored bits' range through the Modality LUT
    depth or the rescale.
    """
    sequence = ds.get("VOILUTSequence")
    if sequence and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]:
        from pydicom.pixels import apply_voi

        entries, first = int(sequence[0].LUTDescriptor[0]) or 2**16, int(sequence[0].LUTDescriptor[1])
        lut = apply_voi(np.arange(first, first + entries), ds, index=0).astype(np.float64)
        lo, hi = lut.min(), lut.max()
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        bits = int(ds.BitsStored)
        if ds.get("ModalityLUTSequence"):
            lo, hi = 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
        elif int(ds.get("PixelRepresentation", 0)) == 0:
            lo, hi = 0.0, 2.0**bits - 1
        else:
            lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
            lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    else:
        return None
    if hi <= lo:
        raise ValueError("the VOI transform has an empty output range")
    return lo, hi

