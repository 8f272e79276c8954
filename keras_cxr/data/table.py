"""Read and validate the CSV tables that list images and one-hot labels.

A table CSV has a filename column (``new_filename``), one 0/1 column per
class in `keras_cxr.CLASS_NAMES` order, and optionally ``source_dir`` (the
image folder of each row) and ``sample_weight`` columns; other columns (such
as ``patient_id``) are ignored. `read_table` checks everything up front and
raises one `TableError` that lists every problem with its CSV line number.
"""

import dataclasses
import functools
import io
import math
import os

import numpy as np
import pandas as pd

from keras_cxr.constants import CLASS_NAMES

LABEL_MODES = ("auto", "required", "ignore")
_MAX_LISTED_MISSING = 20


class TableError(ValueError):
    """A table CSV is unusable; the message lists every problem found."""

    def __init__(self, problems):
        self.problems = list(problems)
        count = f"{len(self.problems)} problems" if len(self.problems) > 1 else "1 problem"
        super().__init__(f"{count} in the table:\n  " + "\n  ".join(self.problems))


def _frozen_array(values, dtype):
    array = np.array(values, dtype=dtype)
    array.setflags(write=False)
    return array


@dataclasses.dataclass(frozen=True, eq=False)
class Table:
    """Image paths with their labels and optional per-sample weights.

    Tables are normally made by `read_table`; build one directly for
    generated data such as pseudo-labels (whose labels may be soft).

    Args:
        csv_path: the CSV the rows came from (used in messages).
        filenames: the filename cells, as written in the CSV.
        paths: absolute image paths, one per row.
        labels: `(N, C)` float32 targets, or `None` for an unlabeled table.
        sample_weight: `(N,)` float32 non-negative weights, or `None`.
        class_names: the `C` class names, in label column order.
        images: where the images are when not in files: `images[row]`
            returns row `row`'s encoded image file as bytes (e.g. from a
            TFDS build, `keras_cxr.data.tfds.read_tfds_table`), and `len`
            is the row count. `None` (tables read from CSV): the images are
            the files at `paths`. With `images`, `paths` only name and
            compare rows; use `image_source` to read an image either way.
            A store with ``fork_safe = False`` is not read in forked
            worker processes (`CXRDataset` refuses them).

    Example:

    ```python
    table = read_table("data/train.csv")
    extra = Table(csv_path="pseudo", filenames=names, paths=paths,
                  labels=one_hot, sample_weight=np.full(len(names), 0.5),
                  class_names=table.class_names)
    train = Table.concat([table, extra])
    print(len(train), train.class_counts)
    ```
    """

    csv_path: str
    filenames: tuple[str, ...]
    paths: tuple[str, ...]
    labels: np.ndarray | None
    sample_weight: np.ndarray | None
    class_names: tuple[str, ...] = CLASS_NAMES
    images: object = None

    def __post_init__(self):
        set_ = functools.partial(object.__setattr__, self)
        set_("csv_path", str(self.csv_path))
        set_("filenames", tuple(str(f) for f in self.filenames))
        set_("paths", tuple(str(p) for p in self.paths))
        set_("class_names", tuple(self.class_names))
        n, c = len(self.filenames), len(self.class_names)
        if len(self.paths) != n:
            raise ValueError(f"Table: {len(self.paths)} paths for {n} filenames")
        if self.images is not None and len(self.images) != n:
            raise ValueError(f"Table: {len(self.images)} stored images for {n} filenames")
        if self.labels is not None:
            labels = _frozen_array(self.labels, np.float32)
            if labels.shape != (n, c):
                raise ValueError(f"Table: labels have shape {labels.shape}, expected ({n}, {c})")
            if not np.all(np.isfinite(labels)) or labels.min(initial=0) < 0:
                raise ValueError("Table: labels must be finite and non-negative")
            set_("labels", labels)
        if self.sample_weight is not None:
            weight = _frozen_array(self.sample_weight, np.float32)
            if weight.shape != (n,):
                raise ValueError(f"Table: sample_weight has shape {weight.shape}, expected ({n},)")
            if not np.all(np.isfinite(weight)) or weight.min(initial=0) < 0:
                raise ValueError("Table: sample weights must be finite and >= 0")
            set_("sample_weight", weight)

    def __len__(self):
        return len(self.filenames)

    def __repr__(self):
        kind = "labeled" if self.is_labeled else "unlabeled"
        weights = ", weighted" if self.sample_weight is not None else ""
        return f"Table({self.csv_path!r}, {len(self)} rows, {kind}{weights})"

    @property
    def is_labeled(self):
        return self.labels is not None

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def class_ids(self):
        """`(N,)` int array: the argmax of each row's label."""
        if self.labels is None:
            raise ValueError(f"{self.csv_path}: the table is unlabeled, it has no class ids")
        return np.argmax(self.labels, axis=1)

    @property
    def class_counts(self):
        """`(C,)` int array: how many rows have each class as their argmax."""
        return np.bincount(self.class_ids, minlength=self.num_classes)

    def image_source(self, row):
        """What `load_image` reads for row `row`: its file path, or its stored bytes as a named file object."""
        if self.images is None:
            return self.paths[row]
        data = io.BytesIO(self.images[row])
        data.name = f"{self.csv_path}: {self.filenames[row]}"
        return data

    def subset(self, indices):
        """Return the rows at `indices` (integer positions or a boolean mask)."""
        indices = np.asarray(indices)
        if indices.dtype == bool:
            if indices.shape != (len(self),):
                raise ValueError(f"boolean mask of shape {indices.shape} for {len(self)} rows")
            indices = np.flatnonzero(indices)
        indices = indices.astype(np.int64).reshape(-1)
        return Table(
            csv_path=self.csv_path,
            filenames=[self.filenames[i] for i in indices],
            paths=[self.paths[i] for i in indices],
            labels=None if self.labels is None else self.labels[indices],
            sample_weight=None if self.sample_weight is None else self.sample_weight[indices],
            class_names=self.class_names,
            images=None if self.images is None else _Rows.of(self.images, indices),
        )

    @classmethod
    def concat(cls, tables):
        """Join tables row-wise: `Table.concat([a, b])`.

        All tables must have the same class names, be all labeled or all
        unlabeled, and all read their images from files or all from stored
        `images`. If any table has sample weights, rows from tables without
        them get weight 1.
        """
        if not tables:
            raise ValueError("Table.concat needs at least one table")
        first = tables[0]
        for t in tables[1:]:
            if t.class_names != first.class_names:
                raise ValueError(
                    f"cannot concatenate {t.csv_path} (classes {list(t.class_names)}) with "
                    f"{first.csv_path} (classes {list(first.class_names)})"
                )
            if t.is_labeled != first.is_labeled:
                raise ValueError(
                    f"cannot concatenate labeled and unlabeled tables "
                    f"({first.csv_path}, {t.csv_path})"
                )
            if (t.images is None) != (first.images is None):
                raise ValueError(
                    f"cannot concatenate a table of image files with one of stored images "
                    f"({first.csv_path}, {t.csv_path})"
                )
        weighted = any(t.sample_weight is not None for t in tables)
        return cls(
            csv_path=" + ".join(dict.fromkeys(t.csv_path for t in tables)),
            filenames=[f for t in tables for f in t.filenames],
            paths=[p for t in tables for p in t.paths],
            labels=np.concatenate([t.labels for t in tables]) if first.is_labeled else None,
            sample_weight=(
                np.concatenate(
                    [t.sample_weight if t.sample_weight is not None else np.ones(len(t)) for t in tables]
                )
                if weighted
                else None
            ),
            class_names=first.class_names,
            images=None if first.images is None else _Rows.chain([t.images for t in tables]),
        )


class _Rows:
    """Selected rows of image stores: `_Rows(parts, p, r)[i]` is `parts[p[i]][r[i]]`.

    Holds only its stores and integer indices, so it pickles for worker
    processes whenever the stores do.
    """

    def __init__(self, parts, part_index, row_index):
        self.parts = tuple(parts)
        self.part_index = _frozen_array(part_index, np.int32)
        self.row_index = _frozen_array(row_index, np.int64)

    @classmethod
    def of(cls, images, indices):
        """Rows `indices` of `images` (selecting from a selection selects from its stores)."""
        if isinstance(images, cls):
            return cls(images.parts, images.part_index[indices], images.row_index[indices])
        return cls([images], np.zeros(len(indices), np.int32), indices)

    @classmethod
    def chain(cls, stores):
        """All rows of `stores`, one after the other."""
        whole = [images if isinstance(images, cls) else cls.of(images, np.arange(len(images))) for images in stores]
        parts, part_index = [], []
        for selection in whole:
            part_index.append(selection.part_index + len(parts))
            parts += selection.parts
        return cls(parts, np.concatenate(part_index), np.concatenate([s.row_index for s in whole]))

    @property
    def fork_safe(self):
        return all(getattr(part, "fork_safe", True) for part in self.parts)

    def __len__(self):
        return len(self.row_index)

    def __getitem__(self, row):
        return self.parts[self.part_index[row]][self.row_index[row]]


def _parse_label_row(cells, class_names, where):
    """Return (values or None for an all-empty row, problems) for one row."""
    empty = [name for name, cell in zip(class_names, cells) if cell == ""]
    if len(empty) == len(class_names):
        return None, []
    if empty:
        return None, [f"{where}: label cells partly empty ({', '.join(empty)} empty)"]
    values, problems = [], []
    for name, cell in zip(class_names, cells):
        try:
            value = float(cell)
        except ValueError:
            problems.append(f"{where}: label cell {name}={cell!r} is not a number")
            continue
        if value not in (0.0, 1.0):
            problems.append(
                f"{where}: label cell {name}={cell} is not 0 or 1 (CSV labels must be one-hot)"
            )
        values.append(value)
    if problems:
        return None, problems
    ones = [name for name, v in zip(class_names, values) if v == 1.0]
    if len(ones) != 1:
        detail = ", ".join(f"{n}=1" for n in ones) if ones else "all zeros"
        return None, [f"{where}: label cells are not one-hot ({detail})"]
    return values, []


def _read_frame(csv_path, name):
    if not os.path.exists(csv_path):
        raise TableError([f"{csv_path}: file not found"])
    if os.path.isdir(csv_path):
        raise TableError([f"{csv_path}: is a folder, not a CSV file"])
    try:
        frame = pd.read_csv(
            csv_path,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,  # keeps DataFrame index == CSV line - 2
            encoding="utf-8-sig",
        )
    except pd.errors.EmptyDataError:
        raise TableError([f"{name}: file is empty"]) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise TableError([f"{name}: cannot be parsed as CSV: {e}"]) from None
    frame = frame.fillna("")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.apply(lambda column: column.str.strip())


def read_table(
    csv_path,
    images_dir=None,
    class_names=CLASS_NAMES,
    filename_column="new_filename",
    labels="auto",
    check_files=True,
):
    """Read a table CSV, check it, and return a `Table`.

    Args:
        csv_path: path of the CSV file.
        images_dir: folder of the images, for rows without a ``source_dir``
            column. Relative paths resolve against the working directory.
            Defaults to ``<folder of the CSV>/images``.
        class_names: the label columns, in order.
        filename_column: the column holding image filenames.
        labels: ``"auto"`` (labeled when any label cell is filled; a CSV
            with none of the class columns is unlabeled), ``"required"``
            (an unlabeled table is an error: training and validation), or
            ``"ignore"`` (read filenames only, e.g. a test CSV).
        check_files: whether every image file must exist.

    Returns:
        A `Table`; `labels` is `None` for an unlabeled table.

    Raises:
        TableError: listing every problem, each with the CSV line number
            (header = line 1).

    Example:

    ```python
    train = read_table("cxr4/train.csv", labels="required")
    test = read_table("cxr4/test.csv", labels="ignore")
    ```
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
    csv_path = os.path.abspath(os.fspath(csv_path))
    frame = _read_frame(csv_path, os.path.basename(csv_path))
    return _table_from_frame(frame, csv_path, images_dir, class_names, filename_column, labels, check_files)


def _table_from_frame(frame, csv_path, images_dir, class_names, filename_column, labels, check_files):
    """The `Table` of `frame`, the CSV at absolute `csv_path` as `_read_frame` read it (see `read_table`).

    For callers that need other columns of the same frame (such as
    ``patient_id``) without reading the CSV a second time.
    """
    name = os.path.basename(csv_path)
    class_names = tuple(class_names)
    columns = list(frame.columns)

    present = [c for c in class_names if c in columns]
    use_labels = labels == "required" or (labels == "auto" and present)
    missing = [filename_column] if filename_column not in columns else []
    if use_labels:
        missing += [c for c in class_names if c not in columns]
    if missing:
        raise TableError(
            [f"{name} line 1: missing column(s) {', '.join(map(repr, missing))} "
             f"(columns found: {', '.join(map(repr, columns))})"]
        )
    if not len(frame):
        raise TableError([f"{name}: has a header but no data rows"])

    csv_dir = os.path.dirname(csv_path)
    base_dir = os.path.abspath(images_dir if images_dir is not None else os.path.join(csv_dir, "images"))
    has_source = "source_dir" in columns
    has_weight = "sample_weight" in columns

    problems, missing_files = [], []
    rows = []  # (line, filename, path, label values or None, weight)
    first_line_of = {}
    for index, record in enumerate(frame.to_dict("records")):
        line = index + 2
        where = f"{name} line {line}"
        if not any(record.values()):
            continue  # a blank line
        filename = record[filename_column]
        if not filename:
            problems.append(f"{where}: empty filename")
            continue
        folder = base_dir
        if has_source:
            if not record["source_dir"]:
                problems.append(f"{where}: empty source_dir")
                continue
            folder = os.path.join(csv_dir, record["source_dir"])
        path = os.path.abspath(os.path.join(folder, filename))
        if path in first_line_of:
            problems.append(
                f"{where}: duplicate image {filename!r} (also on line {first_line_of[path]})"
            )
        else:
            first_line_of[path] = line
        weight = 1.0
        if has_weight:
            cell = record["sample_weight"]
            try:
                weight = float(cell)
            except ValueError:
                weight = math.nan
            if not (math.isfinite(weight) and weight >= 0):
                problems.append(f"{where}: sample_weight {cell!r} is not a finite number >= 0")
        values = None
        if use_labels:
            values, row_problems = _parse_label_row(
                [record[c] for c in class_names], class_names, where
            )
            problems += row_problems
            if row_problems:
                values = False  # bad, but filled: not an unlabeled row
        if check_files and not os.path.isfile(path):
            missing_files.append(f"{where}: image not found: {path}")
        rows.append((line, filename, path, values, weight))

    if use_labels and rows:
        unlabeled = [line for line, _, _, v, _ in rows if v is None]
        if labels == "required" and len(unlabeled) == len(rows):
            problems.append(f"{name}: every label cell is empty, but this table must be labeled")
        elif unlabeled and len(unlabeled) < len(rows):
            problems += [
                f"{name} line {line}: label cells are empty, but other rows are labeled"
                for line in unlabeled
            ]
    if not rows and not problems:
        problems.append(f"{name}: has a header but no data rows")
    if len(missing_files) > _MAX_LISTED_MISSING:
        extra = len(missing_files) - _MAX_LISTED_MISSING
        missing_files = missing_files[:_MAX_LISTED_MISSING] + [
            f"{name}: ... and {extra} more missing images (looked in {base_dir}"
            f"{' and the source_dir folders' if has_source else ''})"
        ]
    problems += missing_files
    if problems:
        raise TableError(problems)

    labeled = use_labels and rows[0][3] is not None
    return Table(
        csv_path=csv_path,
        filenames=[r[1] for r in rows],
        paths=[r[2] for r in rows],
        labels=np.array([r[3] for r in rows], dtype=np.float32) if labeled else None,
        sample_weight=np.array([r[4] for r in rows], dtype=np.float32) if has_weight else None,
        class_names=class_names,
    )
