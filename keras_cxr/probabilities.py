"""Probability files and submissions.

A probability file is a CSV with a filename column (``new_filename``) and one
float column per class, rows in the source CSV's order. A submission has the
same header with one-hot integers. Every keras-cxr command that reads or
writes class probabilities (`fit`'s ``val_probs.csv``, `predict`, `oof`,
`blend`, `evaluate`, `pseudo-label`) uses this module.

Example:

```python
probs = read_probabilities("runs/a/val_probs.csv")
table = read_table("cxr4/val.csv", labels="required", check_files=False)
probs = probs.aligned_to(table.filenames, "cxr4/val.csv")
write_submission("sub.csv", probs.filenames, probs.values, probs.class_names)
```
"""

import dataclasses
import os

import numpy as np
import pandas as pd

from keras_cxr.constants import CLASS_NAMES
from keras_cxr.errors import FieldError, listing
from keras_cxr.io import write_csv_atomic

# Rows must sum to 1 within this; CSVs written with 6+ significant digits pass.
ROW_SUM_TOLERANCE = 1e-3


class ProbabilityError(FieldError):
    """A probability file is unusable, or does not match the rows it should."""


@dataclasses.dataclass(frozen=True, eq=False)
class Probabilities:
    """Rows of class probabilities read from (or bound for) a CSV file.

    Args:
        path: where the rows came from (used in messages).
        filenames: one image filename per row.
        values: `(N, C)` float64 probabilities; rows sum to 1.
        class_names: the `C` column names, in order.
    """

    path: str
    filenames: tuple[str, ...]
    values: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self):
        return len(self.filenames)

    def aligned_to(self, filenames, other):
        """The rows reordered to `filenames`; an error names any mismatch.

        Args:
            filenames: the wanted row order (every name exactly once).
            other: the file `filenames` came from, for the message.
        """
        filenames = tuple(filenames)
        if filenames == self.filenames:
            return self
        position = {name: i for i, name in enumerate(self.filenames)}
        missing = [f for f in filenames if f not in position]
        wanted = set(filenames)
        extra = [f for f in self.filenames if f not in wanted]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{len(missing)} row(s) of {other} are not in {self.path} ({listing(missing)})")
            if extra:
                parts.append(f"{len(extra)} row(s) of {self.path} are not in {other} ({listing(extra)})")
            raise ProbabilityError("filenames differ: " + "; ".join(parts))
        order = [position[f] for f in filenames]
        return dataclasses.replace(self, filenames=filenames, values=self.values[order])


def read_probabilities(path, class_names=None, filename_column="new_filename"):
    """Read and check a probability file.

    Args:
        path: the CSV file.
        class_names: the expected class columns, in order; None takes every
            column after the filename column (at least two).
        filename_column: the column holding image filenames.

    Returns:
        A `Probabilities`.

    Raises:
        ProbabilityError: naming the file, and the line and column of the
            first bad cells: missing columns, duplicate filenames, empty or
            non-numeric cells, NaN/inf, values outside [0, 1] or rows that do
            not sum to 1.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ProbabilityError(f"{path}: probability file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise ProbabilityError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ProbabilityError(f"{path}: cannot be parsed as CSV: {e}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if filename_column not in frame.columns:
        raise ProbabilityError(f"{path} line 1: no {filename_column!r} column (columns: {list(frame.columns)})")
    if class_names is None:
        class_names = tuple(c for c in frame.columns if c != filename_column)
        if len(class_names) < 2:
            raise ProbabilityError(f"{path} line 1: needs 2+ class columns after {filename_column!r}")
    class_names = tuple(class_names)
    missing = [c for c in class_names if c not in frame.columns]
    if missing:
        raise ProbabilityError(
            f"{path} line 1: missing class column(s) {listing(missing)} (columns: {list(frame.columns)})"
        )
    if not len(frame):
        raise ProbabilityError(f"{path}: has a header but no rows")
    filenames = frame[filename_column].str.strip()
    lines = np.arange(len(frame)) + 2
    empty = filenames == ""
    if empty.any():
        raise ProbabilityError(f"{path} line {lines[empty.to_numpy()][0]}: empty filename")
    duplicated = filenames.duplicated()
    if duplicated.any():
        first = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise ProbabilityError(f"{path} line {lines[first]}: duplicate filename {filenames.iloc[first]!r}")

    cells = frame[list(class_names)].apply(lambda column: column.str.strip())
    values = cells.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ProbabilityError(
            f"{path} line {lines[row]}: {class_names[col]}={cells.iat[row, col]!r} is not a finite number"
            f" ({int(bad.any(axis=1).sum())} row(s) like this)"
        )
    out_of_range = (values < 0) | (values > 1)
    if out_of_range.any():
        row, col = np.argwhere(out_of_range)[0]
        raise ProbabilityError(
            f"{path} line {lines[row]}: {class_names[col]}={values[row, col]:g} is outside [0, 1]"
        )
    sums = values.sum(axis=1)
    off = np.abs(sums - 1.0) > ROW_SUM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise ProbabilityError(
            f"{path} line {lines[row]}: probabilities sum to {sums[row]:.6g}, not 1"
            f" ({int(off.sum())} row(s) like this; are these logits or one-vs-rest scores?)"
        )
    return Probabilities(
        path=path,
        filenames=tuple(filenames),
        values=values / sums[:, None],
        class_names=class_names,
    )


def _table_frame(filenames, values, class_names, filename_column):
    frame = pd.DataFrame(values, columns=list(class_names))
    frame.insert(0, filename_column, list(filenames))
    return frame


def probabilities_frame(filenames, probs, class_names=CLASS_NAMES, filename_column="new_filename"):
    """Float rows in the order given."""
    return _table_frame(filenames, np.asarray(probs, dtype=np.float64), class_names, filename_column)


def submission_frame(filenames, probs, class_names=CLASS_NAMES, filename_column="new_filename"):
    """One-hot integer rows (argmax of `probs`), in the order given."""
    probs = np.asarray(probs)
    one_hot = np.zeros(probs.shape, dtype=np.int64)
    one_hot[np.arange(len(probs)), probs.argmax(axis=1)] = 1
    return _table_frame(filenames, one_hot, class_names, filename_column)


def write_probabilities(path, filenames, probs, class_names=CLASS_NAMES, filename_column="new_filename"):
    """Write probabilities atomically, rows in the order given."""
    frame = probabilities_frame(filenames, probs, class_names, filename_column)
    write_csv_atomic(frame, path)
    return frame


def write_submission(path, filenames, probs, class_names=CLASS_NAMES, filename_column="new_filename"):
    """Write a Kaggle submission atomically: the argmax of each row, one-hot."""
    frame = submission_frame(filenames, probs, class_names, filename_column)
    write_csv_atomic(frame, path)
    return frame
