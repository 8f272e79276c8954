"""What an exported model says about itself, stored inside the exported file.

Every export carries one JSON object: the class names of its output
columns, its image size, the input and output contract, the filename
column of its tables and the calibration folded into it (with the rows it
was fitted on, so predicting those rows can be refused). ONNX keeps it in
the model's ``metadata_props`` under `KEY`, TorchScript as the extra file
`FILE`, and a ``.keras`` archive as the entry `FILE` beside Keras's own.

Reading it imports neither Keras nor torch (`keras_cxr.export.read_metadata`
reads it from any exported file).

Example:

```python
import onnx
meta = parse(dict((p.key, p.value) for p in onnx.load("model.onnx").metadata_props)[KEY], "model.onnx")
meta["class_names"], meta["image_size"]
```
"""

import json

from keras_cxr.errors import ModelFileError

FORMAT = "keras-cxr export"
KEY = "keras_cxr"
FILE = "keras_cxr.json"
INPUT = "uint8 RGB images (N, S, S, 3), S = image_size, as keras_cxr.data.images.load_image(path, S) returns them"
OUTPUT = "float32 class probabilities (N, C) in class_names order, each row summing to 1"


def describe(architecture, class_names, image_size, filename_column, source, calibration=None):
    """The metadata object of an export.

    Args:
        architecture: the Keras model's name (e.g. ``"cxr_resnet"``).
        class_names: the output columns, in order.
        image_size: the side `S` of the square input.
        filename_column: the filename column of the tables it predicts.
        source: the `.keras` file it was exported from.
        calibration: the `Calibration` folded in, or None.

    Returns:
        A JSON-ready dict.
    """
    return {
        "format": FORMAT,
        "architecture": architecture,
        "class_names": list(class_names),
        "image_size": int(image_size),
        "input": INPUT,
        "output": OUTPUT,
        "filename_column": filename_column,
        "source": str(source),
        "calibration": None if calibration is None else calibration.to_dict(),
    }


def parse(text, where):
    """Read and check the metadata object `text` of the exported file `where`.

    Returns:
        The dict `describe` wrote.

    Raises:
        ModelFileError: not JSON, not keras-cxr metadata, or class names /
            image size missing or malformed.
    """
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise ModelFileError(f"{where}: its keras-cxr metadata is not JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{where}: its {KEY} metadata is not a keras-cxr export's")
    names, size = meta.get("class_names"), meta.get("image_size")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise ModelFileError(f"{where}: its keras-cxr metadata must list 2+ class names")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ModelFileError(f"{where}: its keras-cxr metadata has no valid image_size ({size!r})")
    return meta


def calibration_of(meta, where):
    """The `Calibration` folded into an export (its `path` = `where`), or None."""
    if not meta.get("calibration"):
        return None
    from keras_cxr.calibration import Calibration

    data = meta["calibration"]
    return Calibration(data["method"], dict(data["parameters"]), tuple(data["class_names"]),
                       tuple(data.get("fitted_on", ())), source=data.get("source", ""), path=f"{where} (folded in)")


def read_keras(path):
    """The metadata inside a `.keras` archive, or None for a `.keras` file that is not an export."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            if FILE not in archive.namelist():
                return None
            text = archive.read(FILE).decode("utf-8", errors="replace")
    except (OSError, zipfile.BadZipFile):
        return None  # the model loader words a broken archive
    return parse(text, path)
