"""Calibration: make a model's confidences match how often it is right.

A network trained to separate classes is often over-confident: rows it
scores 0.95 are right 80% of the time. Temperature scaling (Guo et al.,
2017) fixes that with one number: the probabilities become
``softmax(log(p) / T)``. ``T > 1`` softens them, ``T < 1`` sharpens them, and
since dividing every logit of a row by the same positive number keeps their
order, **temperature scaling never changes the argmax**: predictions,
Macro-F1 and submissions stay exactly as they were; only the confidences
move. Vector scaling, ``softmax(log(p) * w + b)`` with one weight and one bias
per class, can fit more, but per-class weights and biases **can change the
argmax** (a bias is a decision threshold).

Both are fitted by minimising the negative log-likelihood on labeled rows
the model was not trained on: validation rows, or out-of-fold rows. The rows
a calibration was fitted on are stored in it, and applying it to any of
them is refused (`check_disjoint`), as scoring on them would flatter it.
`fit_calibration` reports ECE, Brier and NLL before and after, in-sample and
cross-validated (fit on k-1 stratified parts, score the held-out part, pooled).

Example:

```python
from keras_cxr.calibration import fit_calibration, load_calibration, calibrate_probabilities
from keras_cxr.probabilities import read_probabilities

calibration, report = fit_calibration(read_probabilities("runs/a/val_probs.csv"), "data/val.csv")
calibration.save("T.json")
print(report["before"]["ece"], report["cross_validated"]["ece"])
test = calibrate_probabilities(read_probabilities("test_probs.csv"), load_calibration("T.json"))
```
"""

import dataclasses
import json
import os
import pathlib

import numpy as np
from scipy import optimize, special

from keras_cxr.errors import listing
from keras_cxr.evaluation import LOG_CLIP, calibration_scores
from keras_cxr.io import write_json_atomic
from keras_cxr.probabilities import ProbabilityError

METHODS = ("temperature", "vector")
RUN_FILE = "calibration.json"
FORMAT = "keras-cxr calibration"
# Bounds of the temperature search (on log T) and the pull of vector scaling toward the identity.
TEMPERATURE_RANGE = (0.01, 100.0)
VECTOR_L2 = 1e-3


class CalibrationError(ProbabilityError):
    """A calibration cannot be fitted, read or applied (fields: `calibration`, `method`, `cv_folds`)."""


def _error(template):
    fields = {"calibration": "calibration", "method": "method", "cv_folds": "cv_folds"}
    return CalibrationError(template, **{k: v for k, v in fields.items() if "{" + k + "}" in template})


def _logits(values):
    return np.log(np.clip(np.asarray(values, dtype=np.float64), LOG_CLIP, 1.0))


@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
    """A fitted temperature or vector scaling, with the rows it was fitted on.

    Args:
        method: ``"temperature"`` (``parameters = {"temperature": T}``) or
            ``"vector"`` (``{"weights": [C floats], "biases": [C floats]}``).
        parameters: as above.
        class_names: the `C` class columns, in order, it was fitted for.
        fitted_on: the filenames of the rows it was fitted on; rows to
            predict must not be among them (`check_disjoint`).
        source: where it was fitted (probability file and labels), for messages.
        path: the file it was loaded from, if any (not saved).

    Temperature scaling keeps every row's argmax (`T > 0` divides all of a
    row's logits alike); vector scaling may change it.
    """

    method: str
    parameters: dict
    class_names: tuple[str, ...]
    fitted_on: tuple[str, ...]
    source: str = ""
    path: str | None = None

    @property
    def keeps_argmax(self):
        """True for temperature scaling, which cannot change a prediction."""
        return self.method == "temperature"

    @property
    def name(self):
        """The file it came from, else where it was fitted (for messages)."""
        return self.path or f"(fitted on {self.source or f'{len(self.fitted_on)} rows'})"

    def describe(self):
        """One line: ``temperature T = 1.732`` or ``vector scaling, weights [..], biases [..]``."""
        if self.method == "temperature":
            return f"temperature T = {self.parameters['temperature']:.4g}"
        weights, biases = (", ".join(f"{x:.3g}" for x in self.parameters[k]) for k in ("weights", "biases"))
        return f"vector scaling, weights [{weights}], biases [{biases}]"

    def apply(self, values):
        """Calibrated probabilities of `values` (an `(N, C)` array of probabilities).

        Logits are ``log(clip(p, 1e-12, 1))``; temperature gives
        ``softmax(logits / T)``, vector ``softmax(logits * w + b)``.

        Example:

        ```python
        Calibration("temperature", {"temperature": 2.0}, ("a", "b"), ()).apply([[0.8, 0.2]])
        # softmax(log([0.8, 0.2]) / 2) = [[2/3, 1/3]]
        ```
        """
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.class_names):
            raise _error(f"{{calibration}} {self.name} has {len(self.class_names)} classes; "
                         f"got probabilities of shape {values.shape}")
        return _scale(self.method, self.parameters, _logits(values))

    def to_dict(self):
        """The JSON-ready form `save` writes (without `path`)."""
        return {
            "format": FORMAT,
            "method": self.method,
            "parameters": {k: (float(v) if np.isscalar(v) else [float(x) for x in v])
                           for k, v in self.parameters.items()},
            "class_names": list(self.class_names),
            "source": self.source,
            "fitted_on": list(self.fitted_on),
        }

    def save(self, path, report=None):
        """Write the calibration (and optionally `fit_calibration`'s report) as JSON, atomically.

        Example:

        ```python
        calibration.save("T.json", report)
        ```
        """
        data = self.to_dict()
        if report is not None:
            data["report"] = report
        write_json_atomic(data, path)
        return os.fspath(path)


def _scale(method, parameters, logits):
    if method == "temperature":
        return special.softmax(logits / parameters["temperature"], axis=1)
    return special.softmax(logits * np.asarray(parameters["weights"]) + np.asarray(parameters["biases"]), axis=1)


def _nll(scaled_logits, y):
    return -special.log_softmax(scaled_logits, axis=1)[np.arange(len(y)), y].mean()


def _fit_temperature(logits, y):
    low, high = np.log(TEMPERATURE_RANGE)
    result = optimize.minimize_scalar(lambda log_t: _nll(logits / np.exp(log_t), y), bounds=(low, high),
                                      method="bounded", options={"xatol": 1e-6})
    return {"temperature": float(np.exp(result.x))}


def _fit_vector(logits, y):
    n, c = logits.shape
    one_hot = np.eye(c)[y]

    def loss(theta):
        w, b = theta[:c], theta[c:]
        scaled = logits * w + b
        log_p = special.log_softmax(scaled, axis=1)
        grad_z = (np.exp(log_p) - one_hot) / n
        value = -(log_p * one_hot).sum() / n + VECTOR_L2 * (((w - 1) ** 2).sum() + (b ** 2).sum())
        grad_w = (grad_z * logits).sum(axis=0) + 2 * VECTOR_L2 * (w - 1)
        grad_b = grad_z.sum(axis=0) + 2 * VECTOR_L2 * b
        return value, np.concatenate([grad_w, grad_b])

    start = np.concatenate([np.ones(c), np.zeros(c)])
    bounds = [(1e-3, 100.0)] * c + [(None, None)] * c
    result = optimize.minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds)
    return {"weights": [float(x) for x in result.x[:c]], "biases": [float(x) for x in result.x[c:]]}


_FITTERS = {"temperature": _fit_temperature, "vector": _fit_vector}


def labeled_rows(probs, labels):
    """`(probs, class ids, source)`: `probs` in the labels' row order, their class ids and where they came from.

    Args:
        probs: a `Probabilities`.
        labels: a labeled table CSV (rows matched by filename; a row missing
            on either side is an error), or `(N,)` class ids in `probs`' order.

    Example:

    ```python
    probs, y, _ = labeled_rows(read_probabilities("val_probs.csv"), "data/val.csv")
    ```
    """
    if isinstance(labels, (str, os.PathLike)):
        from keras_cxr.data import read_table

        table = read_table(labels, class_names=probs.class_names, labels="required", check_files=False)
        return probs.aligned_to(table.filenames, os.fspath(labels)), table.class_ids, os.fspath(labels)
    y = np.asarray(labels)
    if y.shape != (len(probs),) or y.dtype.kind not in "iu" or (len(y) and (y.min() < 0 or y.max() >= len(probs.class_names))):
        raise _error(f"labels: expected {len(probs)} class ids in [0, {len(probs.class_names)}), "
                     f"got an array of shape {y.shape} and dtype {y.dtype}")
    return probs, y.astype(np.int64), "class ids"


def _cross_validated(method, logits, y, cv_folds, seed):
    """Held-out calibrated probabilities of every row (fitted without its part), or a reason there are none."""
    from keras_cxr.blend.crossval import split_rows

    try:
        k, splits = split_rows(y, folds=cv_folds, seed=seed)
    except ValueError as e:
        return None, 0, str(e)
    held_out = np.zeros_like(logits)
    for train, test in splits:
        held_out[test] = _scale(method, _FITTERS[method](logits[train], y[train]), logits[test])
    return held_out, k, None


def fit_calibration(probs, labels, method="temperature", cv_folds=5, seed=0):
    """Fit temperature (or vector) scaling on labeled rows by minimising their NLL.

    Args:
        probs: a `Probabilities` of validation or out-of-fold rows (never
            rows of the model's training set, nor rows to predict).
        labels: the labeled table CSV of those rows (matched by filename;
            a row missing on either side is an error), or `(N,)` class ids
            in `probs`' row order.
        method: ``"temperature"`` (one `T`, bounded search on `log T`; keeps
            the argmax) or ``"vector"`` (per-class weight and bias, L-BFGS
            with a small L2 pull toward the identity; may change the argmax).
        cv_folds: parts of the rows for the cross-validated estimate
            (stratified; fewer when a class has fewer rows; 0 for none).
        seed: the seed of the parts.

    Returns:
        `(Calibration, report)`; the report holds ``before``,
        ``in_sample`` and ``cross_validated`` scores (each ``ece`` (top-label,
        15 bins), ``brier``, ``nll``), the parameters, the row count,
        ``cv_folds`` used (``cross_validated`` is None, with ``cv_note``
        saying why, when no split is possible) and ``argmax_changed`` (rows
        whose prediction the calibration changes in-sample; 0 for temperature).

    Example:

    ```python
    calibration, report = fit_calibration(read_probabilities("oof.csv"), "folds/folds.csv")
    print(calibration.describe(), report["before"]["ece"], "->", report["cross_validated"]["ece"])
    ```
    """
    if method not in METHODS:
        raise _error(f"{{method}} {method!r}: unknown calibration method (expected {' or '.join(METHODS)})")
    if cv_folds != 0 and (int(cv_folds) != cv_folds or cv_folds < 2):
        raise _error(f"{{cv_folds}} {cv_folds}: give 2 or more parts, or 0 for no cross-validated estimate")
    probs, y, label_source = labeled_rows(probs, labels)
    logits = _logits(probs.values)
    parameters = _FITTERS[method](logits, y)
    calibration = Calibration(method, parameters, tuple(probs.class_names), tuple(probs.filenames),
                              source=f"{probs.path} with labels from {label_source}")
    after = _scale(method, parameters, logits)
    report = {
        "method": method,
        "parameters": parameters,
        "rows": len(probs),
        "before": calibration_scores(y, probs.values),
        "in_sample": calibration_scores(y, after),
        "cross_validated": None,
        "cv_folds": 0,
        "argmax_changed": int((after.argmax(axis=1) != probs.values.argmax(axis=1)).sum()),
    }
    if cv_folds:
        held_out, k, note = _cross_validated(method, logits, y, cv_folds, seed)
        report["cv_folds"] = k
        if held_out is None:
            report["cv_note"] = note
        else:
            report["cross_validated"] = calibration_scores(y, held_out)
    return calibration, report


def _read_json(path):
    try:
        return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _error(f"{{calibration}} {path}: not a calibration file (not UTF-8 text)") from None
    except ValueError as e:
        raise _error(f"{{calibration}} {path}: not a calibration file (bad JSON: {e})") from None


def _check_parameters(path, method, parameters, n_classes):
    keys = ("temperature",) if method == "temperature" else ("weights", "biases")
    if not isinstance(parameters, dict) or set(parameters) != set(keys):
        raise _error(f"{{calibration}} {path}: {method} scaling needs parameters {', '.join(keys)}")
    for key in keys:
        value = parameters[key]
        ok = (isinstance(value, (int, float)) and np.isfinite(value) and value > 0) if key == "temperature" else (
            isinstance(value, list) and len(value) == n_classes
            and all(isinstance(x, (int, float)) and np.isfinite(x) for x in value))
        if not ok:
            wanted = "a finite number > 0" if key == "temperature" else f"{n_classes} finite numbers"
            raise _error(f"{{calibration}} {path}: parameter {key}={value!r} is not {wanted}")


def load_calibration(path, class_names=None):
    """Read a calibration file, or the ``calibration.json`` of a run directory.

    Args:
        path: a JSON file written by `Calibration.save`, or a run directory
            (`keras-cxr fit` fits one on its validation rows).
        class_names: the class columns of the probabilities it will be
            applied to; a calibration fitted for other classes is refused.

    Returns:
        A `Calibration` (its `path` set).

    Raises:
        CalibrationError: file or run directory missing, not JSON, not a
            calibration, unknown method, bad parameters, other class names.

    Example:

    ```python
    calibration = load_calibration("runs/a", class_names=probs.class_names)
    ```
    """
    path = pathlib.Path(path)
    if path.is_dir():
        if not (path / RUN_FILE).is_file():
            raise _error(f"{{calibration}} {path}: the run directory has no {RUN_FILE} "
                         "(fit one with keras-cxr calibrate on its val_probs.csv)")
        path = path / RUN_FILE
    elif not path.is_file():
        raise _error(f"{{calibration}} {path}: calibration file not found")
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _error(f"{{calibration}} {path}: not a calibration file (no \"format\": \"{FORMAT}\")")
    method = data.get("method")
    if method not in METHODS:
        raise _error(f"{{calibration}} {path}: unknown method {method!r} (expected {' or '.join(METHODS)})")
    names, fitted_on = data.get("class_names"), data.get("fitted_on")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise _error(f"{{calibration}} {path}: class_names must list 2+ class names")
    if not isinstance(fitted_on, list) or not all(isinstance(n, str) for n in fitted_on):
        raise _error(f"{{calibration}} {path}: fitted_on must list the filenames it was fitted on")
    _check_parameters(path, method, data.get("parameters"), len(names))
    calibration = Calibration(method, dict(data["parameters"]), tuple(names), tuple(fitted_on),
                              source=str(data.get("source", "")), path=str(path))
    if class_names is not None:
        check_classes(calibration, class_names)
    return calibration


def check_classes(calibration, class_names, where="the probabilities"):
    """Refuse probabilities whose class columns differ from the calibration's."""
    if tuple(class_names) != calibration.class_names:
        raise _error(f"{{calibration}} {calibration.name} was fitted for classes {list(calibration.class_names)} "
                     f"but {where} have {list(class_names)}")


def check_disjoint(calibration, filenames, where="the rows to predict"):
    """Refuse rows that the calibration was fitted on.

    Args:
        calibration: a `Calibration`.
        filenames: the filenames of the rows it is about to be applied to.
        where: what those rows are, for the message.

    Raises:
        CalibrationError: naming how many rows overlap and the first few.

    Example:

    ```python
    check_disjoint(load_calibration("runs/a"), read_table("data/test.csv", labels="ignore").filenames)
    ```
    """
    fitted = set(calibration.fitted_on)
    overlap = [f for f in filenames if f in fitted]
    if overlap:
        raise _error(
            f"{{calibration}} {calibration.name} was fitted on {len(overlap)} of {where} ({listing(overlap, quote=False)}); "
            "fit it on validation or out-of-fold rows that are not predicted"
        )


def calibrate_probabilities(probs, calibration):
    """`probs` with the calibration applied, after checking its classes and that no row was used to fit it.

    Args:
        probs: a `Probabilities`.
        calibration: a `Calibration`, or a path for `load_calibration`.

    Returns:
        A `Probabilities` with the same rows and calibrated values.

    Example:

    ```python
    calibrated = calibrate_probabilities(read_probabilities("test_probs.csv"), "T.json")
    ```
    """
    if not isinstance(calibration, Calibration):
        calibration = load_calibration(calibration)
    check_classes(calibration, probs.class_names, where=probs.path)
    check_disjoint(calibration, probs.filenames, where=f"the rows of {probs.path}")
    return dataclasses.replace(probs, values=calibration.apply(probs.values))


def resolve(calibration, class_names=None):
    """A `Calibration` from a `Calibration` or a path (None stays None), checked against `class_names`."""
    if calibration is None or isinstance(calibration, Calibration):
        if calibration is not None and class_names is not None:
            check_classes(calibration, class_names)
        return calibration
    return load_calibration(calibration, class_names=class_names)


__all__ = [
    "METHODS",
    "Calibration",
    "CalibrationError",
    "calibrate_probabilities",
    "check_classes",
    "check_disjoint",
    "fit_calibration",
    "labeled_rows",
    "load_calibration",
    "resolve",
]
