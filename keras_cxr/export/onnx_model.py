"""Predicting with an exported ONNX file through onnxruntime: no Keras, no torch.

`OnnxPredictor` stands beside `keras_cxr.predictor.Predictor`: same fields,
same `predict_table`, so `predict_csv` averages `.onnx` and `.keras` models
alike. Images are read with `keras_cxr.data.images.load_image` at the
file's image size and fed as uint8 batches, the contract of every export
(`keras_cxr.export.metadata.INPUT`). This module, and everything it
imports, needs only numpy, pandas, Pillow and onnxruntime.

Example:

```python
predictor = OnnxPredictor.load("model.onnx")
probs = predictor.predict_table(read_table("cxr4/test.csv", labels="ignore"))   # (N, C) float32
```
"""

import dataclasses
import os

import numpy as np

from keras_cxr.errors import ModelFileError
from keras_cxr.export import metadata

PROVIDERS = ("CPUExecutionProvider",)


def open_session(path):
    """An onnxruntime CPU session of `path`; `ModelFileError` when onnxruntime is missing or the file is not ONNX."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelFileError(f"{path}: predicting with an ONNX file needs onnxruntime (pip install onnxruntime)") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # its warnings about unused initialisers are not the user's business
    try:
        return onnxruntime.InferenceSession(os.fspath(path), sess_options=options, providers=list(PROVIDERS))
    except Exception as e:  # noqa: BLE001  - onnxruntime raises its own types for unreadable files
        raise ModelFileError(f"{path}: cannot load the ONNX model ({type(e).__name__}: {e})") from None


def _check_signature(session, path, meta):
    inputs, outputs = session.get_inputs(), session.get_outputs()
    size, classes = meta["image_size"], len(meta["class_names"])
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelFileError(f"{path}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
    shape = inputs[0].shape
    if inputs[0].type != "tensor(uint8)" or len(shape) != 4 or list(shape[1:]) != [size, size, 3]:
        raise ModelFileError(f"{path}: its input is {inputs[0].type} {shape}; a keras-cxr export takes "
                             f"uint8 (N, {size}, {size}, 3)")
    if outputs[0].shape[-1] != classes:
        raise ModelFileError(f"{path}: the model has {outputs[0].shape[-1]} outputs but its metadata names "
                             f"{classes} classes")


@dataclasses.dataclass(frozen=True, eq=False)
class OnnxPredictor:
    """An exported ONNX file, loaded in onnxruntime (CPU), with its metadata.

    Args:
        path: the `.onnx` file.
        session: its `onnxruntime.InferenceSession`.
        class_names: names of the output columns (from the metadata).
        image_size: side of the square uint8 input.
        filename_column: the filename column of the tables it predicts.
        calibration: the calibration folded into the file, or None.
        preprocessing: always None (exports of preprocessing recipes are refused).
    """

    path: str
    session: object
    class_names: tuple[str, ...]
    image_size: int
    filename_column: str = "new_filename"
    calibration: object = None
    preprocessing: None = None

    @classmethod
    def load(cls, path):
        """Load an ONNX file written by `keras_cxr.export.export_model`.

        Raises:
            ModelFileError: not an ONNX file, no keras-cxr metadata, or an
                input/output that is not the export contract.
        """
        path = os.fspath(path)
        session = open_session(path)
        text = session.get_modelmeta().custom_metadata_map.get(metadata.KEY)
        if text is None:
            raise ModelFileError(f"{path}: no keras-cxr metadata (class names, image size); "
                                 "export the model with keras-cxr export")
        meta = metadata.parse(text, path)
        _check_signature(session, path, meta)
        return cls(path, session, tuple(meta["class_names"]), meta["image_size"],
                   meta.get("filename_column") or "new_filename", metadata.calibration_of(meta, path))

    def __call__(self, images):
        """Probabilities `(N, C)` float32 of a uint8 `(N, S, S, 3)` batch."""
        feed = {self.session.get_inputs()[0].name: np.ascontiguousarray(images, dtype=np.uint8)}
        return self.session.run(None, feed)[0].astype(np.float32, copy=False)

    def predict_table(self, table, batch_size=32, views=None, verbose=0):
        """Probabilities `(N, C)` float32 of the rows of `table`, in order.

        Args:
            table: a `keras_cxr.data.Table`.
            batch_size: images per run of the session.
            views: test-time augmentation views (`keras_cxr.tta.parse_tta`),
                averaged as on the Keras path.
            verbose: 1 prints a line per 10% of the batches.
        """
        from keras_cxr.data.images import load_image

        outputs, starts = [], range(0, len(table), batch_size)
        for i, start in enumerate(starts):
            batch = np.stack([load_image(p, self.image_size) for p in table.paths[start:start + batch_size]])
            if views:
                out = np.mean([self(view.apply(batch)).astype(np.float64) for view in views], axis=0)
            else:
                out = self(batch)
            outputs.append(out.astype(np.float32))
            if verbose and (i + 1) % max(1, len(starts) // 10) == 0:
                print(f"  {min(start + batch_size, len(table))}/{len(table)} images")
        if not outputs:
            raise ValueError(f"{table.csv_path}: the table has no rows to predict")
        return np.concatenate(outputs, axis=0)
