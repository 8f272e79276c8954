"""Export a trained model to ONNX, TorchScript or a self-contained `.keras` file.

An export is the model as a deployable file with the preprocessing inside:

- **input**: uint8 RGB images `(N, S, S, 3)`, exactly what
  `keras_cxr.data.images.load_image(path, S)` returns (decode, Pillow
  BILINEAR resize straight to the square `S`, RGB); `S` is the model's image
  size. Resizing is the caller's job: the graph does not resize.
- **output**: float32 class probabilities `(N, C)`, with the calibration
  folded in when one is given (the same numbers as ``predict --calibration``).
- **metadata** inside the file (`keras_cxr.export.metadata`): class names,
  image size, the contract above, the calibration and the rows it was
  fitted on.

Models whose recipe applies deterministic preprocessing (CLAHE / unsharp)
are refused: that OpenCV/Pillow step cannot live in the graph, and an
export that silently needs it would give wrong probabilities. The batch
dimension is dynamic. Exporting runs with `keras_cxr.accel` off, so the
graph holds Keras's own operations.

`keras-cxr predict` runs `.onnx` files through onnxruntime
(`keras_cxr.export.onnx_model`), without Keras or torch.

Example:

```python
from keras_cxr.export import export_model

export_model("runs/a", "model.onnx", "onnx", calibration="runs/a")   # best.keras + its calibration.json
```
"""

import contextlib
import json
import os
import pathlib
import tempfile
import warnings
import zipfile

from keras_cxr.errors import FieldError, ModelFileError
from keras_cxr.export import metadata
from keras_cxr.io import atomic_write

FORMATS = ("onnx", "torchscript", "keras")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "keras": ".keras"}
INPUT_NAME, OUTPUT_NAME = "images", "probs"


class ExportError(FieldError):
    """A model cannot be exported as asked (fields: `model`, `out`, `format`, `calibration`)."""


def _error(template):
    fields = {"model": "model", "out": "out", "format": "format", "calibration": "calibration"}
    return ExportError(template, **{k: v for k, v in fields.items() if "{" + k + "}" in template})


def _check_out(out, format):
    out = pathlib.Path(out)
    if out.suffix != SUFFIXES[format]:
        raise _error(f"{{out}} {out}: {format} exports are {SUFFIXES[format]} files")
    if out.is_dir():
        raise _error(f"{{out}} {out} is a folder; give a file name")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise _error(f"{{out}} {out}: {parent} is a file, not a folder")
            break


def _load(model):
    """The `Predictor` of `model` (a `.keras` file or run directory), checked exportable."""
    from keras_cxr.predictor import Predictor

    if pathlib.Path(model).suffix == ".onnx":
        raise ModelFileError(f"{model}: export takes a .keras model file (or a run directory holding best.keras)")
    predictor = Predictor.load(model)
    if predictor.preprocessing is not None:
        raise _error(f"{{model}} {predictor.path}: its recipe.json preprocesses images (CLAHE / unsharp) before the model; "
                     "that step cannot be part of an exported graph, so its exports would predict wrongly")
    return predictor


def _calibration(predictor, calibration):
    from keras_cxr.calibration import resolve

    if calibration is None:
        return None
    if predictor.calibration is not None:
        raise _error(f"{{calibration}}: {predictor.path} has a calibration folded in already "
                     f"({predictor.calibration.describe()}); it would be applied twice")
    return resolve(calibration, class_names=predictor.class_names)


def export_model(model, out, format, calibration=None):
    """Write `model` as an ONNX, TorchScript or `.keras` file with its metadata inside.

    Args:
        model: a `.keras` file, or a run directory (its ``best.keras``; the
            ``recipe.json`` beside it gives the class names).
        out: the file to write (atomically; missing folders are created):
            ``.onnx``, ``.pt`` (TorchScript) or ``.keras``.
        format: ``"onnx"``, ``"torchscript"`` or ``"keras"``.
        calibration: None, a `keras_cxr.calibration.Calibration`, a
            calibration JSON or a run directory holding ``calibration.json``;
            folded into the output.

    Returns:
        The metadata written into the file (a dict, see
        `keras_cxr.export.metadata.describe`).

    Raises:
        ExportError: unknown format, wrong suffix, unusable `out`, a
            preprocessing recipe, a calibration applied twice.
        ModelFileError: the model is missing or cannot be loaded.
        CalibrationError: the calibration is unreadable or for other classes.

    Example:

    ```python
    meta = export_model("runs/a/best.keras", "deploy/a.pt", "torchscript")
    meta["class_names"], meta["image_size"]
    ```
    """
    from keras_cxr import accel

    if format not in FORMATS:
        raise _error(f"{{format}} {format!r}: unknown export format (expected {', '.join(FORMATS)})")
    _check_out(out, format)
    with accel.disabled():
        predictor = _load(model)
        calibration = _calibration(predictor, calibration)
        meta = metadata.describe(predictor.model.name, predictor.class_names, predictor.image_size,
                                 predictor.filename_column, predictor.path, calibration or predictor.calibration)
        _WRITERS[format](predictor.model, calibration, out, meta)
    return meta


@contextlib.contextmanager
def _quiet_tracing():
    """Keep tracing's warnings (Python-value branches in Keras ops, skipped torchvision ops) off the terminal."""
    import logging

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _write_onnx(model, calibration, out, meta):
    import torch

    from keras_cxr.export.graph import example_batch, export_module

    module = export_module(model, calibration)
    example = torch.from_numpy(example_batch(meta["image_size"]))
    with _quiet_tracing(), torch.no_grad(), contextlib.redirect_stdout(None):
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], verbose=False,
                                    dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}})
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = metadata.KEY, json.dumps(meta)
    with atomic_write(out, "wb") as f:
        f.write(proto.SerializeToString())


def _write_torchscript(model, calibration, out, meta):
    import torch

    from keras_cxr.export.graph import example_batch, export_module

    module = export_module(model, calibration)
    example = torch.from_numpy(example_batch(meta["image_size"]))
    with _quiet_tracing(), torch.no_grad():
        traced = torch.jit.trace(module, (example,), check_trace=False)
    with atomic_write(out, "wb") as f:
        torch.jit.save(traced, f, _extra_files={metadata.FILE: json.dumps(meta)})


def _write_keras(model, calibration, out, meta):
    from keras_cxr.export.graph import calibrated_keras_model

    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export.") as tmp:
        saved = os.path.join(tmp, "model.keras")
        calibrated_keras_model(model, calibration).save(saved)
        with zipfile.ZipFile(saved, "a") as archive:
            archive.writestr(metadata.FILE, json.dumps(meta))
        with open(saved, "rb") as source, atomic_write(out, "wb") as f:
            f.write(source.read())


def read_metadata(path):
    """The metadata of an exported file (`.onnx`, `.pt` TorchScript or `.keras`).

    `.onnx` is read with onnxruntime and `.keras` as a zip archive (no Keras,
    no torch); `.pt` needs torch.

    Raises:
        ModelFileError: unreadable file, or no keras-cxr metadata in it.

    Example:

    ```python
    read_metadata("model.onnx")["class_names"]
    ```
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: file not found")
    if path.endswith(".keras"):
        meta = metadata.read_keras(path)
    else:
        text = _onnx_text(path) if path.endswith(".onnx") else _torchscript_text(path)
        meta = metadata.parse(text, path) if text else None
    if meta is None:
        raise ModelFileError(f"{path}: no keras-cxr metadata (class names, image size); "
                             "export the model with keras-cxr export")
    return meta


def _onnx_text(path):
    from keras_cxr.export.onnx_model import open_session

    return open_session(path).get_modelmeta().custom_metadata_map.get(metadata.KEY)


def _torchscript_text(path):
    import torch

    files = {metadata.FILE: ""}
    try:
        torch.jit.load(path, map_location="cpu", _extra_files=files)
    except Exception as e:  # noqa: BLE001  - torch raises many types for files it cannot read
        raise ModelFileError(f"{path}: cannot load as TorchScript ({type(e).__name__}: {e})") from None
    return files[metadata.FILE].decode("utf-8") if isinstance(files[metadata.FILE], bytes) else files[metadata.FILE]


_WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "keras": _write_keras}

__all__ = ["FORMATS", "SUFFIXES", "ExportError", "ModelFileError", "export_model", "read_metadata"]
