"""`explain_csv`: class-activation maps for the rows of a table CSV, written as PNGs, arrays and a CSV.

Output folder:

- ``maps/<image>.png``: the image and its map, titled with the true class
  (when the CSV has labels), the predicted class and its probability, and
  the class the map explains;
- ``maps/<image>.npy``: the map, float32 in [0, 1] at the model's input size;
- ``explain.csv``: one row per image (true, predicted, probabilities of the
  predicted and explained class, the map's peak in input pixels);
- ``contact_sheet.png``: the first `sheet` images' overlays on one page;
- ``explain.json``: the model, method, and which tensor was mapped.

Example:

```python
frame = explain_csv("runs/cpu", "cxr4/val.csv", "runs/cpu/explain", method="gradcam")
```
"""

import io
import pathlib

import numpy as np
import pandas as pd

from keras_cxr.explain.cam import ClassActivationMapper
from keras_cxr.explain.features import ExplainError
from keras_cxr.io import atomic_write, write_csv_atomic, write_json_atomic
from keras_cxr.plots import contact_sheet, heatmap_overlay, plot_activation_map


def _stem(filename):
    return pathlib.PurePath(filename).with_suffix("").as_posix().replace("/", "__")


def _save_array(array, path):
    buffer = io.BytesIO()
    np.save(buffer, array)
    with atomic_write(path, mode="wb") as f:
        f.write(buffer.getvalue())


def _class_id(target_class, class_names, model_path):
    if target_class is None:
        return None
    if target_class not in class_names:
        raise ExplainError(f"{{target}} {target_class!r} is not a class of {{model}} {model_path} "
                           f"(its classes: {', '.join(class_names)})", target="target_class", model="model")
    return class_names.index(target_class)


def _title(true, predicted, p_predicted, target, p_target, method):
    parts = ([f"true {true}"] if true else []) + [f"predicted {predicted} {p_predicted:.2f}"]
    explained = f"map of {target} ({p_target:.2f})" if target != predicted else f"map of {target}"
    return " · ".join(parts) + f"\n{explained}, {method}"


def explain_csv(model, csv_path, out_dir, images_dir=None, target_class=None, method="auto", limit=None,
                sheet=16, batch_size=16, verbose=0, steps=16):
    """Write class-activation maps of `model` for the rows of `csv_path` into `out_dir`.

    Args:
        model: a `.keras` file, a run directory, or a loaded
            `keras_cxr.predictor.Predictor` (its preprocessing and class
            names are used).
        csv_path: a table CSV; labels, when present, are shown as the true class.
        out_dir: the output folder (created; files in it are replaced).
        images_dir: the image folder (default: ``images/`` beside the CSV).
        target_class: the class name every map explains; None explains
            each image's predicted class.
        method: ``"auto"``, ``"gradcam"``, ``"gradcam++"`` or
            ``"integrated-gradients"`` (see `ClassActivationMapper`).
        limit: explain only the first `limit` rows.
        sheet: images on the contact sheet (0: none).
        batch_size: images per forward and backward pass.
        verbose: 1 shows a progress bar.
        steps: path points of integrated gradients.

    Returns:
        The ``explain.csv`` rows as a DataFrame (``attrs["method"]``: the
        method used, ``"auto"`` resolved).

    Raises:
        ExplainError: an unknown class or method, or a model without a
            feature map or token grid.
    """
    import keras

    from keras_cxr.data import read_table
    from keras_cxr.predictor import Predictor

    predictor = model if isinstance(model, Predictor) else Predictor.load(model)
    names = list(predictor.class_names)
    target = _class_id(target_class, names, predictor.path)
    mapper = ClassActivationMapper(predictor.model, method, steps=steps)
    method = mapper.method
    table = read_table(csv_path, images_dir=images_dir, class_names=predictor.class_names,
                       filename_column=predictor.filename_column)
    if limit is not None:
        table = table.subset(np.arange(min(limit, len(table))))
    out = pathlib.Path(out_dir)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    data = predictor.dataset(table, batch_size)
    progress = keras.utils.Progbar(len(table), unit_name="image") if verbose else None
    rows, sheet_images, sheet_captions = [], [], []
    for index in range(len(data)):
        images = data[index][0]
        result = mapper(images, targets=target)
        for image, heatmap, probs, explained in zip(images, result.maps, result.probs, result.targets):
            row = len(rows)
            filename = table.filenames[row]
            true = names[int(table.labels[row].argmax())] if table.is_labeled else ""
            predicted = int(probs.argmax())
            peak = np.unravel_index(int(heatmap.argmax()), heatmap.shape)
            title = _title(true, names[predicted], probs[predicted], names[int(explained)], probs[int(explained)],
                           method)
            stem = _stem(filename)
            _save_array(heatmap, out / "maps" / f"{stem}.npy")
            plot_activation_map(image, heatmap, out / "maps" / f"{stem}.png", f"{filename}\n{title}")
            if len(sheet_images) < sheet:
                sheet_images.append(heatmap_overlay(image, heatmap))
                sheet_captions.append(f"{filename}\n{title}")
            rows.append({
                "filename": filename, "true": true, "predicted": names[predicted],
                "p_predicted": float(probs[predicted]), "explained": names[int(explained)],
                "p_explained": float(probs[int(explained)]), "peak_row": int(peak[0]), "peak_col": int(peak[1]),
                "map": f"maps/{stem}.npy",
            })
        if progress is not None:
            progress.update(len(rows))
    frame = pd.DataFrame(rows)
    frame.attrs["method"] = method
    write_csv_atomic(frame, out / "explain.csv")
    if sheet_images:
        contact_sheet(sheet_images, sheet_captions, out / "contact_sheet.png", columns=4,
                      title=f"{pathlib.Path(predictor.path).name}: {method}")
    write_json_atomic({
        "model": predictor.path, "csv": str(csv_path), "method": method, "rows": len(frame),
        "explained": target_class or "predicted class", "mapped": mapper.source,
        "grid": list(mapper.layout.grid), "image_size": list(mapper.image_size),
        **({"steps": mapper.steps} if method == "integrated-gradients" else {}),
    }, out / "explain.json")
    return frame
