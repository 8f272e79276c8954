"""Load trained models with what they need at inference, and predict CSVs.

A model file alone does not say how its images were preprocessed or what
its output columns mean. When it sits in a run directory, the
``recipe.json`` beside it does: `Predictor.load` takes the class names, the
filename column and the deterministic preprocessing (CLAHE / unsharp, when the
recipe used them) from there, so inference sees the images the way training
did. A model without a ``recipe.json`` gets no preprocessing and the default
class names.

Exported files (`keras_cxr.export`) carry their class names, image size and
folded-in calibration inside: a `.keras` export is read like any `.keras`
file, and a `.onnx` file becomes an `OnnxPredictor`, run by onnxruntime
without Keras or torch. `predict_csv` averages both kinds alike, and imports
Keras only when one of its models is a `.keras` file.

Example:

```python
probs = predict_csv(["runs/a/best.keras", "runs/b"], "cxr4/test.csv", tta="rotate,zoom")
write_probabilities("test_probs.csv", probs.filenames, probs.values, probs.class_names)
```
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import zipfile

import numpy as np

from keras_cxr.constants import CLASS_NAMES
from keras_cxr.data.augment import Augmentation
from keras_cxr.data.table import read_table
from keras_cxr.errors import ModelFileError
from keras_cxr.probabilities import Probabilities
from keras_cxr.tta import parse_tta


def _resolve_model_path(path):
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "best.keras"
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    if path.suffix not in (".keras", ".onnx"):
        raise ModelFileError(f"{path}: expected a .keras or .onnx model file (or a run directory holding best.keras)")
    return path


def _is_onnx(model):
    """An `.onnx` path or a loaded `OnnxPredictor`: a model that runs without Keras."""
    if isinstance(model, (str, os.PathLike)):
        return pathlib.Path(model).suffix == ".onnx"
    from keras_cxr.export.onnx_model import OnnxPredictor

    return isinstance(model, OnnxPredictor)


def _read_run_recipe(model_path):
    recipe_path = model_path.parent / "recipe.json"
    if not recipe_path.is_file():
        return None
    try:
        return json.loads(recipe_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{recipe_path}: cannot be read as JSON ({e})") from None


def mark_if_built_by_keras_cxr(model):
    """Mark a loaded model for `keras_cxr.accel` when it has the shape `keras_cxr.models.build` gives.

    A `.keras` file does not carry the mark `build` set, so a loaded model is
    marked when its name is one of keras-cxr's own architectures
    (`ModelSpec.accelerated`) and it has build's layout (input `images`, a
    nested `backbone`, output `probs`). Returns the model.
    """
    from keras_cxr import models
    from keras_cxr.accel import marks

    if model.name not in models.names() or not models.spec(model.name).accelerated:
        return model
    layer_names = {layer.name for layer in model.layers}
    if {"images", "backbone", "probs"} <= layer_names:
        marks.mark(model)
    return model


def load_model_file(path):
    """`keras.saving.load_model` (safe mode, no compile) with one clear error for unusable files.

    The model is marked for `keras_cxr.accel` when it is a keras-cxr
    architecture (`mark_if_built_by_keras_cxr`) and prepared for it when
    acceleration is on.
    """
    import keras

    from keras_cxr import accel
    from keras_cxr.serialization import register_serializables

    register_serializables()
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: not a Keras model archive (the file is truncated or not a .keras file)")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001  - Keras raises many types for broken archives
        raise ModelFileError(f"{path}: cannot load the model ({type(e).__name__}: {e})") from None
    mark_if_built_by_keras_cxr(model)
    return accel.prepare(model)  # faster inference; same outputs


@dataclasses.dataclass(frozen=True, eq=False)
class Predictor:
    """A loaded model and the settings it was trained with.

    Args:
        path: the `.keras` file.
        model: the Keras model (outputs class probabilities).
        class_names: names of the output columns.
        preprocessing: the recipe's `Augmentation` when it has deterministic
            preprocessing (CLAHE / unsharp), else None.
        filename_column: the recipe's filename column.
        calibration: the `Calibration` folded into an exported model, else None.
    """

    path: str
    model: object
    class_names: tuple[str, ...]
    preprocessing: Augmentation | None
    filename_column: str = "new_filename"
    calibration: object = None

    @property
    def image_size(self):
        return int(self.model.input_shape[1])

    @classmethod
    def load(cls, path):
        """Load a `.keras` file, `best.keras` of a run directory, or an exported `.onnx` file (an `OnnxPredictor`)."""
        from keras_cxr.export import metadata

        path = _resolve_model_path(path)
        if path.suffix == ".onnx":
            from keras_cxr.export.onnx_model import OnnxPredictor

            return OnnxPredictor.load(path)
        exported = metadata.read_keras(path)
        recipe = None if exported is not None else _read_run_recipe(path)
        model = load_model_file(path)
        data = exported or (recipe or {}).get("data", {})
        class_names = tuple(data.get("class_names", CLASS_NAMES))
        outputs = int(model.output_shape[-1])
        if outputs != len(class_names):
            source = ("its keras-cxr metadata" if exported is not None
                      else f"{path.parent / 'recipe.json'}" if recipe else "the default class names")
            raise ModelFileError(
                f"{path}: the model has {outputs} outputs but {source} names {len(class_names)} classes "
                f"({', '.join(class_names)})"
            )
        preprocessing = None
        if recipe and "augmentation" in recipe:
            augmentation = Augmentation.from_dict(recipe["augmentation"])
            preprocessing = augmentation if augmentation.has_preprocessing else None
        calibration = metadata.calibration_of(exported, path) if exported is not None else None
        return cls(str(path), model, class_names, preprocessing, data.get("filename_column") or "new_filename",
                   calibration)

    def dataset(self, table, batch_size=32):
        """An evaluation-mode `CXRDataset` of `table` at this model's size."""
        from keras_cxr.data.dataset import CXRDataset

        return CXRDataset(table, self.image_size, batch_size=batch_size, augmentation=self.preprocessing)

    def predict_table(self, table, batch_size=32, views=None, verbose=0):
        """Probabilities `(N, C)` float32 of the rows of `table`, in order (`views`: test-time augmentation)."""
        from keras_cxr.predict import predict_probs

        return predict_probs(self.model, self.dataset(table, batch_size), verbose=verbose, views=views)


def predict_csv(models, csv_path, images_dir=None, tta=None, batch_size=32, verbose=0, accelerate=True,
                calibration=None):
    """Average the probabilities of `models` over the rows of `csv_path`.

    Args:
        models: `.keras` or exported `.onnx` paths, run directories, or
            loaded `Predictor`s / `OnnxPredictor`s. They must agree on class
            names; image sizes may differ. With only `.onnx` files, neither
            Keras nor torch is imported.
        csv_path: a table CSV; its labels, if any, are not read.
        images_dir: the image folder (default: ``images/`` beside the CSV;
            rows with a ``source_dir`` use that).
        tta: test-time augmentation, e.g. ``"rotate,zoom"`` (see `keras_cxr.tta`).
        batch_size: images per forward pass.
        verbose: 1 prints each model and a progress bar.
        accelerate: run the Keras models with `keras_cxr.accel` on (and off
            again after), unless it is on already; same probabilities either way.
        calibration: a `keras_cxr.calibration.Calibration`, a calibration
            JSON file or a run directory holding ``calibration.json``, applied
            to the averaged probabilities. Checked before any model runs: its
            classes must be the models' and none of the CSV's rows may be one
            it was fitted on. Refused when a model has one folded in already;
            a folded-in calibration is checked against the rows the same way.

    Returns:
        `Probabilities` with rows in the CSV's order.
    """
    models = list(models)
    if accelerate and not all(_is_onnx(m) for m in models):
        from keras_cxr import accel

        context = accel.enabled()
    else:
        context = contextlib.nullcontext()
    with context:
        return _predict_csv(models, csv_path, images_dir, tta, batch_size, verbose, calibration)


def _predict_csv(models, csv_path, images_dir, tta, batch_size, verbose, calibration=None):
    views = parse_tta(tta)
    predictors = [Predictor.load(m) if isinstance(m, (str, os.PathLike)) else m for m in models]
    if not predictors:
        raise ValueError("predict needs at least one model")
    first = predictors[0]
    for other in predictors[1:]:
        if other.class_names != first.class_names:
            raise ModelFileError(
                f"{other.path} predicts {list(other.class_names)} but {first.path} predicts "
                f"{list(first.class_names)}: models must share class names to be averaged"
            )
    table = read_table(csv_path, images_dir=images_dir, class_names=first.class_names,
                       filename_column=first.filename_column, labels="ignore")
    calibrated = [p for p in predictors if p.calibration is not None]
    if calibration is not None and calibrated:
        raise ModelFileError(f"{calibrated[0].path} has a calibration folded in already "
                             f"({calibrated[0].calibration.describe()}); it would be applied twice")
    if calibration is not None or calibrated:
        from keras_cxr.calibration import check_disjoint, resolve

        calibration = resolve(calibration, class_names=first.class_names)
        applied = [p.calibration for p in calibrated] + ([calibration] if calibration is not None else [])
        for each in applied:
            check_disjoint(each, table.filenames, where=f"the rows of {csv_path}")
    total = np.zeros((len(table), len(first.class_names)), np.float64)
    for i, predictor in enumerate(predictors):
        if verbose:
            print(f"model {i + 1}/{len(predictors)}: {predictor.path} ({predictor.image_size} px, "
                  f"{len(views)} view{'s' if len(views) > 1 else ''}: {', '.join(v.name for v in views)})")
        total += predictor.predict_table(table, batch_size, views=views, verbose=verbose)
    mean = total / len(predictors)
    values = mean / mean.sum(axis=1, keepdims=True)
    if calibration is not None:
        values = calibration.apply(values)
    return Probabilities(path=str(csv_path), filenames=table.filenames, values=values, class_names=first.class_names)
