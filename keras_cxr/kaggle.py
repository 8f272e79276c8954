"""A Kaggle competition download, normalised into a keras-cxr data folder.

A competition's files arrive in its own layout: CSVs named like
``train_data.csv`` / ``val_data.csv`` / ``test_data.csv`` (or ``train.csv``
...), image folders named like ``train_images/`` that Kaggle's archives
often nest once more (``train_images/train_images/1.jpeg``), and extras such
as ``sample_submission.csv``. `normalize_competition` finds each CSV's image
folder by the filenames it lists and writes ``train.csv``, ``val.csv`` and
``test.csv`` whose ``source_dir`` column points at those folders (nothing is
copied), so `keras-cxr fit RECIPE --data-dir DIR` trains on it.

Validation rows: a competition's own validation CSV is kept as it is, unless
a patient grouping or a `val_fraction` is given; then train (and val) are
pooled and split again (a tenth to val by default), by patient when a group
column or filename pattern is given (`StratifiedGroupKFold`, as
`keras_cxr.kfold`), stratified by class otherwise. The test CSV stays unlabeled; without one, a ``test*`` image
folder is listed into it.

Example:

```python
data = download_competition("cxr-multi-label-classification", "data/kaggle")
print(data.summary())
# or, for files downloaded by hand:
data = normalize_competition("~/Downloads/cxr", "data/kaggle", val_fraction=0.1, group_regex=r"(person\\d+)_")
```
"""

import dataclasses
import os
import re

import numpy as np
import pandas as pd

from keras_cxr.constants import CLASS_NAMES, FILENAME_COLUMN
from keras_cxr.errors import FieldError, listing
from keras_cxr.io import write_csv_atomic, write_json_atomic

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
_ROLE_PATTERNS = {
    "test": re.compile(r"test", re.I),
    "val": re.compile(r"val", re.I),
    "train": re.compile(r"train", re.I),
}
_IGNORED_CSV = re.compile(r"submission|sample", re.I)
_WRITTEN = ("train.csv", "val.csv", "test.csv", "download.json")


class KaggleError(FieldError):
    """A competition cannot be downloaded or normalised; the message names the file, folder or field."""


@dataclasses.dataclass(frozen=True)
class KaggleData:
    """What `normalize_competition` wrote.

    Attributes:
        out_dir: the keras-cxr data folder.
        counts: ``{split: {class name or "rows": count}}``; test has rows only.
        split: how val was made (``"given"``, or the split method).
        raw_dir: the competition's files.
    """

    out_dir: str
    counts: dict
    split: str
    raw_dir: str

    def summary(self):
        parts = []
        for split, count in self.counts.items():
            by_class = ", ".join(f"{k} {v}" for k, v in count.items() if k != "rows")
            parts.append(f"{split} {count['rows']}" + (f" ({by_class})" if by_class else ""))
        return f"{'; '.join(parts)}; val: {self.split} -> {self.out_dir}"


def download_competition(competition, out_dir, overwrite=False, **split_options):
    """Download a Kaggle competition with kagglehub into ``out_dir/raw`` and normalise it into `out_dir`.

    Needs Kaggle credentials (``KAGGLE_API_TOKEN``, ``~/.kaggle/access_token``,
    ``KAGGLE_USERNAME`` + ``KAGGLE_KEY`` or ``~/.kaggle/kaggle.json``: whatever
    kagglehub reads) and the competition's rules accepted on its page.
    Already downloaded files are reused.

    Args:
        competition: the competition's name, as in its URL.
        out_dir: the keras-cxr data folder to write.
        overwrite: replace the CSVs of an earlier normalisation.
        **split_options: `val_fraction`, `group_by`, `group_regex`,
            `seed`, as `normalize_competition` takes.

    Returns:
        A `KaggleData`.

    Raises:
        KaggleError: missing credentials, no network, unknown competition
            or rules not accepted, and every error of `normalize_competition`.
    """
    raw_dir = os.path.join(os.path.abspath(os.fspath(out_dir)), "raw")
    _check_out_dir(out_dir, overwrite)
    try:
        import kagglehub
        import requests
        from kagglehub import exceptions as kaggle_errors
    except ImportError as e:
        raise KaggleError(f"downloading from Kaggle needs the kagglehub package ({e}); pip install kagglehub") from None
    try:
        raw_dir = kagglehub.competition_download(competition, output_dir=raw_dir)
    except kaggle_errors.UnauthenticatedError:
        raise KaggleError(
            "Kaggle credentials not found: set KAGGLE_API_TOKEN (or KAGGLE_USERNAME and KAGGLE_KEY), or save "
            "your token as ~/.kaggle/access_token (kaggle.com -> Settings -> API)"
        ) from None
    except ValueError as e:  # kagglehub's words for a malformed name or credentials file
        raise KaggleError(f"{{competition}} {competition!r}: kagglehub: {_first_line(e)}",
                          competition="competition") from None
    except (kaggle_errors.KaggleApiHTTPError, kaggle_errors.NotFoundError) as e:
        raise KaggleError(
            f"{{competition}} {competition!r}: Kaggle refused the download ({_first_line(e)}); check the name "
            "and accept the competition's rules on its page", competition="competition"
        ) from None
    except (requests.ConnectionError, requests.Timeout) as e:
        raise KaggleError(
            f"cannot reach Kaggle ({_network_reason(e)}); download the competition's files by hand and "
            "normalise them with {raw_dir} DIR", raw_dir="raw_dir"
        ) from None
    return normalize_competition(raw_dir, out_dir, overwrite=True, competition=competition, **split_options)


def normalize_competition(
    raw_dir,
    out_dir,
    val_fraction=None,
    group_by=None,
    group_regex=None,
    seed=42,
    overwrite=False,
    competition=None,
    class_names=CLASS_NAMES,
    filename_column=FILENAME_COLUMN,
):
    """Write a keras-cxr data folder (train/val/test CSVs) for a competition's files in `raw_dir`.

    Args:
        raw_dir: the competition's files, as downloaded and extracted.
        out_dir: the data folder to write (may hold `raw_dir`).
        val_fraction: a fraction in (0, 0.5]: train and val are pooled and
            split again. `None`: 0.1 when a grouping is given or there is no
            validation CSV, else the competition's validation CSV is kept.
        group_by: a column whose equal values (patients) stay on one side.
        group_regex: instead of `group_by`, a pattern whose first capture
            group in each filename is the patient (e.g. ``r"(person\\d+)_"``).
        seed: seed of the split.
        overwrite: replace CSVs an earlier normalisation wrote.
        competition: the competition's name, recorded in ``download.json``.
        class_names: the one-hot label columns, in order.
        filename_column: the column holding image filenames.

    Returns:
        A `KaggleData`.

    Raises:
        KaggleError: no training CSV, ambiguous CSVs, images not found,
            missing columns, an invalid fraction, too few patients of a
            class to split, leaking rows; the message names the file or field.
        TableError: a written table does not read back (bad labels).
    """
    from keras_cxr.data.table import read_table

    raw_dir = os.path.abspath(os.fspath(raw_dir))
    out_dir = os.path.abspath(os.fspath(out_dir))
    if not os.path.isdir(raw_dir):
        raise KaggleError(f"{{raw_dir}} {raw_dir}: folder not found", raw_dir="raw_dir")
    if group_by is not None and group_regex is not None:
        raise KaggleError("give {group_by} or {group_regex}, not both", group_by="group_by", group_regex="group_regex")
    _check_out_dir(out_dir, overwrite)
    class_names = tuple(class_names)

    csvs = _find_csvs(raw_dir, out_dir)
    for role, path in csvs.items():
        if path == os.path.join(out_dir, f"{role}.csv"):
            raise KaggleError(f"{{out_dir}} {out_dir}: writing {role}.csv there would replace the competition's own "
                              f"{path}; choose another folder", out_dir="out_dir")
    folders = _file_index(raw_dir)
    frames = {}
    for role, csv_path in csvs.items():
        frame = _read_csv(csv_path, filename_column, class_names if role != "test" else ())
        frame["source_dir"] = _image_folder(csv_path, role, frame[filename_column], folders, raw_dir, out_dir)
        frames[role] = frame
    if "test" not in frames:
        listed = _listed_test_folder(folders, filename_column, raw_dir, out_dir)
        if listed is not None:
            frames["test"] = listed

    grouped = group_by is not None or group_regex is not None
    if val_fraction is not None or grouped or "val" not in frames:
        split = _split_again(frames, csvs, 0.1 if val_fraction is None else val_fraction, group_by, group_regex,
                             seed, class_names, filename_column)
    else:
        split = "given"
    _check_no_leak(frames, filename_column)

    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for role in SPLITS:
        if role not in frames:
            continue
        frame = _ordered_columns(frames[role], class_names, filename_column, labeled=role != "test")
        path = os.path.join(out_dir, f"{role}.csv")
        write_csv_atomic(frame, path)
        table = read_table(path, class_names=class_names, filename_column=filename_column,
                           labels="ignore" if role == "test" else "required")
        counts[role] = {"rows": len(table)}
        if table.labels is not None:
            counts[role].update(zip(class_names, (int(n) for n in table.labels.sum(axis=0))))
    record = {
        "competition": competition, "raw_dir": os.path.relpath(raw_dir, out_dir), "split": split, "seed": seed,
        "sources": {role: os.path.relpath(path, out_dir) for role, path in csvs.items()}, "counts": counts,
    }
    write_json_atomic(record, os.path.join(out_dir, "download.json"))
    return KaggleData(out_dir=out_dir, counts=counts, split=split, raw_dir=raw_dir)


def _first_line(error):
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _network_reason(error):
    """requests' nested retry message, cut to its cause."""
    resolve = re.search(r"Failed to resolve '([^']+)'", str(error))
    return f"cannot resolve {resolve.group(1)}" if resolve else _first_line(error)[:200]


def _check_out_dir(out_dir, overwrite):
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise KaggleError(f"{{out_dir}} {out_dir} is a file, not a folder", out_dir="out_dir")
    existing = [name for name in _WRITTEN if os.path.exists(os.path.join(out_dir, name))]
    if existing and not overwrite:
        raise KaggleError(
            f"{{out_dir}} {out_dir} already holds {', '.join(existing)}; pass {{overwrite}} to replace them",
            out_dir="out_dir", overwrite="overwrite=True",
        )


def _find_csvs(raw_dir, out_dir):
    """``{role: path}`` of the train / val / test CSVs under `raw_dir` (not under `out_dir`'s own CSVs)."""
    found = {role: [] for role in SPLITS}
    for folder, _, files in os.walk(raw_dir):
        for name in sorted(files):
            path = os.path.join(folder, name)
            if not name.lower().endswith(".csv") or _IGNORED_CSV.search(name):
                continue
            role = next((r for r, pattern in _ROLE_PATTERNS.items() if pattern.search(name)), None)
            if role is not None:
                found[role].append(path)
    for role, paths in found.items():
        if len(paths) > 1:
            raise KaggleError(f"{{raw_dir}} {raw_dir}: {len(paths)} {role} CSVs, cannot tell which to use: "
                              f"{listing(paths)}", raw_dir="raw_dir")
    if not found["train"]:
        csvs = [os.path.relpath(os.path.join(f, n), raw_dir) for f, _, ns in os.walk(raw_dir) for n in ns
                if n.lower().endswith(".csv")]
        raise KaggleError(f"{{raw_dir}} {raw_dir}: no training CSV (a file named *train*.csv); CSVs found: "
                          f"{listing(csvs) if csvs else 'none'}", raw_dir="raw_dir")
    return {role: paths[0] for role, paths in found.items() if paths}


def _file_index(raw_dir):
    """``{folder: set of file names}`` for every folder under `raw_dir` holding files."""
    return {folder: set(files) for folder, _, files in os.walk(raw_dir) if files}


def _read_csv(csv_path, filename_column, label_columns):
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise KaggleError(f"{csv_path}: cannot be read as CSV ({e})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in (filename_column, *label_columns) if c not in frame.columns]
    if missing:
        raise KaggleError(f"{csv_path} line 1: missing column(s) {listing(missing)} "
                          f"(columns found: {listing(list(frame.columns), limit=12)})")
    if not len(frame):
        raise KaggleError(f"{csv_path}: has a header but no data rows")
    return frame


def _image_folder(csv_path, role, filenames, folders, raw_dir, out_dir):
    """The folder holding every image `csv_path` lists, relative to `out_dir`.

    The folder with the most of the CSV's files wins; on a tie (splits
    numbered alike), the one whose path names the CSV's role.
    """
    wanted = set(filenames)

    def score(folder):
        inside = os.path.relpath(folder, raw_dir)
        return len(wanted & folders[folder]), bool(_ROLE_PATTERNS[role].search(inside)), -len(inside)

    best = max(folders, key=score, default=None)
    hits = 0 if best is None else score(best)[0]
    if hits < len(wanted):
        missing = sorted(wanted - (folders[best] if best else set()))
        where = f"; the closest folder, {best}, lacks them" if hits else ""
        raise KaggleError(f"{csv_path}: {len(missing)} of its {len(wanted)} images are in no folder of the download "
                          f"({listing(missing)}){where}")
    return os.path.relpath(best, out_dir)


def _listed_test_folder(folders, filename_column, raw_dir, out_dir):
    """A test table listing a ``*test*`` image folder, for competitions without a test CSV."""
    candidates = []
    for folder, files in folders.items():
        images = sorted(f for f in files if f.lower().endswith(IMAGE_SUFFIXES))
        if images and _ROLE_PATTERNS["test"].search(os.path.relpath(folder, raw_dir)):
            candidates.append((len(images), folder, images))
    if not candidates:
        return None
    _, folder, images = max(candidates)
    return pd.DataFrame({filename_column: images, "source_dir": os.path.relpath(folder, out_dir)})


def _split_again(frames, csvs, val_fraction, group_by, group_regex, seed, class_names, filename_column):
    """Pool train (and val) and put fold 0 of a grouped, stratified k-fold in val; returns the method."""
    from keras_cxr import kfold

    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction <= 0.5:
        raise KaggleError(f"{{val_fraction}} must be a fraction in (0, 0.5], got {val_fraction!r}",
                          val_fraction="val_fraction")
    roles = [r for r in ("train", "val") if r in frames]
    pooled = pd.concat([frames[r] for r in roles], ignore_index=True).fillna("")
    where = [f"{csvs[r]} line {i + 2}" for r in roles for i in range(len(frames[r]))]
    labels = pooled[list(class_names)].apply(pd.to_numeric, errors="coerce").to_numpy()
    bad = np.flatnonzero(~np.isfinite(labels).all(axis=1) | (labels.sum(axis=1) != 1))
    if len(bad):
        raise KaggleError(f"{where[bad[0]]}: labels must be one-hot 0/1 to split by class "
                          f"(and {len(bad) - 1} more rows)" if len(bad) > 1 else
                          f"{where[bad[0]]}: labels must be one-hot 0/1 to split by class")
    try:
        if group_by is not None:
            groups, method = kfold.groups_by_column([frames[r] for r in roles], [csvs[r] for r in roles], group_by,
                                                    where), f"by {group_by!r}"
        elif group_regex is not None:
            groups, method = kfold.groups_by_regex(list(pooled[filename_column]), group_regex, where), \
                f"by filename pattern {group_regex!r}"
    except kfold.FoldError as e:
        raise KaggleError(str(e)) from None
    if group_by is None and group_regex is None:
        groups, method = list(pooled[filename_column] + "\0" + pooled["source_dir"]), "stratified, no patient groups"
    folds = max(2, round(1 / val_fraction))
    try:
        fold_of = kfold.assign_folds(labels.argmax(axis=1), groups, folds, seed, class_names)
    except kfold.FoldError as e:
        raise KaggleError(f"cannot split off {val_fraction:g} for val (1 of {folds} folds): {e}; a larger "
                          "{val_fraction} makes fewer folds", val_fraction="val_fraction") from None
    frames["train"], frames["val"] = pooled[fold_of != 0].reset_index(drop=True), pooled[fold_of == 0].reset_index(
        drop=True)
    if group_regex is not None and "group" not in pooled.columns:
        frames["train"]["group"] = [g for g, f in zip(groups, fold_of) if f != 0]
        frames["val"]["group"] = [g for g, f in zip(groups, fold_of) if f == 0]
    return f"1/{folds} of {' + '.join(roles)} split off, {method} (seed {seed})"


def _check_no_leak(frames, filename_column):
    seen = {}
    for role, frame in frames.items():
        for name, folder in zip(frame[filename_column], frame["source_dir"]):
            key = os.path.normpath(os.path.join(folder, name))
            if key in seen and seen[key] != role:
                raise KaggleError(f"{name!r} in {folder} is listed in both {seen[key]} and {role}: "
                                  "the splits would leak")
            seen[key] = role


def _ordered_columns(frame, class_names, filename_column, labeled):
    frame = frame.copy()
    if not labeled:
        for name in class_names:
            frame[name] = ""
    first = [filename_column, *class_names]
    return frame[first + [c for c in frame.columns if c not in first and c != "source_dir"] + ["source_dir"]]
