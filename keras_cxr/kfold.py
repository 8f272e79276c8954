"""Patient-grouped, stratified k-fold splits and their out-of-fold predictions.

`make_folds` merges labeled table CSVs (e.g. ``train.csv`` + ``val.csv``),
refuses inputs that would leak between folds (a filename or an image path
twice, byte-identical images under different names), and writes one
train/val CSV pair per fold with scikit-learn's `StratifiedGroupKFold`: the
images of one group (a patient) always share a fold, and every fold has about
the same class mix. Each fold is then trained with
``keras-cxr fit --folds-dir DIR --fold K``, and `gather_oof` joins the runs'
``val_probs.csv`` into out-of-fold probabilities covering every labeled row
once, in ``folds.csv`` order; ``folds.csv`` itself is their label table.

Files written by `make_folds` into ``out_dir``:

- ``folds.csv``: every row in input order with its ``source_dir`` (image
  folder, relative to ``out_dir``), ``group``, 0-based ``fold``, the other
  input columns, and ``source_csv``/``source_line`` (where the row came from).
- ``fold{k}_train.csv``, ``fold{k}_val.csv``: the rows of every other fold,
  and the rows of fold ``k``.
- ``summary.csv``: class counts, total and group count per fold and split.
- ``folds.json``: the settings, for provenance checks.

Example:

```python
summary = make_folds(["cxr4/train.csv", "cxr4/val.csv"], "cxr4_folds",
                     folds=5, group_by="patient_id")
print(summary.to_string(index=False))
# ... keras-cxr fit --folds-dir cxr4_folds --fold K --out runs/fK, K = 0..4
oof = gather_oof([f"runs/f{k}" for k in range(5)], "oof_probs.csv")
labels = read_table("cxr4_folds/folds.csv", labels="required", check_files=False)
```
"""

import hashlib
import json
import os
import re

import numpy as np
import pandas as pd

from keras_cxr.constants import CLASS_NAMES
from keras_cxr.data.table import _read_frame, read_table
from keras_cxr.errors import FieldError, FieldText
from keras_cxr.io import write_csv_atomic, write_json_atomic
from keras_cxr.probabilities import Probabilities, ProbabilityError, read_probabilities, write_probabilities

_MAX_LISTED = 5
# Columns make_folds writes itself; input columns of these names are replaced.
_MADE_COLUMNS = ("source_dir", "group", "fold", "source_csv", "source_line")
_FOLD_VAL = re.compile(r"fold(\d+)_val\.csv")

NO_GROUPS_WARNING = (
    "no group column or pattern given: every image is its own group, so images of "
    "one patient may land in different folds and leak between train and val"
)


class FoldError(FieldError):
    """Inputs or runs that cannot give leak-free folds; the message says why."""


def _listed(problems, what):
    """At most `_MAX_LISTED` lines of `problems`, then how many more."""
    shown = problems[:_MAX_LISTED]
    if len(problems) > _MAX_LISTED:
        shown.append(f"... and {len(problems) - _MAX_LISTED} more {what}")
    return shown


def _as_list(paths):
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    return list(paths)


def _read_rows(csv_path, images_dir, class_names, filename_column):
    """One CSV's `Table`, its non-blank rows as strings, their lines and image folders.

    The table is validated with `read_table` first, so bad cells and missing
    images raise its `TableError` with the CSV line numbers.
    """
    table = read_table(
        csv_path,
        images_dir=images_dir,
        class_names=class_names,
        filename_column=filename_column,
        labels="required",
    )
    frame = _read_frame(table.csv_path, os.path.basename(table.csv_path))
    # read_table skips blank lines; the index still holds CSV line - 2.
    frame = frame[frame.ne("").any(axis=1)]
    if list(frame[filename_column]) != list(table.filenames):
        raise AssertionError(f"{csv_path}: rows of read_table and pandas differ")
    lines = (frame.index.to_numpy() + 2).tolist()
    frame = frame.reset_index(drop=True)
    # Each row's image folder, resolved as read_table does.
    csv_dir = os.path.dirname(table.csv_path)
    if "source_dir" in frame.columns:
        folders = [os.path.abspath(os.path.join(csv_dir, d)) for d in frame["source_dir"]]
    else:
        folder = images_dir if images_dir is not None else os.path.join(csv_dir, "images")
        folders = [os.path.abspath(folder)] * len(frame)
    return table, frame, lines, folders


def _duplicate_pairs(keys):
    """(first row, later row) for each row whose key an earlier row has."""
    first, pairs = {}, []
    for i, key in enumerate(keys):
        if key in first:
            pairs.append((first[key], i))
        else:
            first[key] = i
    return pairs


def _file_digest(path):
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _leak_problems(filenames, paths, where):
    """Rows that would be the same sample twice: by filename, path or bytes.

    Filenames identify rows in probability files, so they must be unique
    too; the bytes are compared only when names and paths are fine.
    """
    problems = _listed(
        [f"filename {filenames[j]!r} is on {where[i]} and on {where[j]}"
         for i, j in _duplicate_pairs(filenames)],
        "duplicate filenames",
    )
    problems += _listed(
        [f"image {paths[j]} is on {where[i]} and on {where[j]}" for i, j in _duplicate_pairs(paths)],
        "duplicate image paths",
    )
    if problems:
        return problems
    same_bytes = [
        f"{filenames[i]!r} ({where[i]}) and {filenames[j]!r} ({where[j]}) are byte-identical images"
        for i, j in _duplicate_pairs([_file_digest(p) for p in paths])
    ]
    return _listed(same_bytes, "byte-identical pairs")


def groups_by_column(frames, csv_paths, column, where):
    """The group of each row of `frames`: its `column` cell; `where` names the rows in errors."""
    for frame, csv_path in zip(frames, csv_paths):
        if column not in frame.columns:
            raise FoldError(
                f"{csv_path} line 1: no group column {column!r} "
                f"(columns: {', '.join(map(repr, frame.columns))})"
            )
    groups = [value for frame in frames for value in frame[column]]
    empty = [f"{where[i]}: empty {column!r} cell" for i, value in enumerate(groups) if value == ""]
    if empty:
        raise FoldError(
            f"{len(empty)} row(s) have no group:\n  " + "\n  ".join(_listed(empty, "rows"))
        )
    return groups


def groups_by_regex(filenames, pattern, where):
    """The group of each filename: `pattern`'s first capture group (or whole match); `where` names the rows."""
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise FoldError(f"invalid group regex {pattern!r}: {e}") from None
    groups, unmatched = [], []
    for i, name in enumerate(filenames):
        match = compiled.search(name)
        group = None if match is None else match.group(1 if compiled.groups else 0)
        if not group:  # no match, an empty match or a capture group that took no part
            unmatched.append(f"{where[i]}: group regex {pattern!r} finds no group in {name!r}")
        groups.append(group)
    if unmatched:
        raise FoldError(
            f"{len(unmatched)} row(s) have no group:\n  " + "\n  ".join(_listed(unmatched, "rows"))
        )
    return groups


def _no_groups_warning(frames):
    columns = dict.fromkeys(c for frame in frames for c in frame.columns if "patient" in c.lower())
    if not columns:
        return FieldText(NO_GROUPS_WARNING)
    return FieldText(f"{NO_GROUPS_WARNING} (pass {{group_by}} {next(iter(columns))!r}?)", group_by="group_by")


def assign_folds(class_ids, groups, folds, seed, class_names):
    """The 0-based fold of each row: `StratifiedGroupKFold`, checked so every fold holds every class."""
    from sklearn.model_selection import StratifiedGroupKFold

    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise FoldError(f"folds must be an integer >= 2, got {folds!r}")
    group_counts = {}
    for class_id, group in zip(class_ids, groups):
        group_counts.setdefault(int(class_id), set()).add(group)
    rarest = min(group_counts, key=lambda c: (len(group_counts[c]), c))
    if folds > len(group_counts[rarest]):
        count = len(group_counts[rarest])
        raise FoldError(
            f"cannot make {folds} folds: class {class_names[rarest]!r} is in only {count} "
            f"group(s), and every val fold needs one; use {count} folds or fewer"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = np.full(len(class_ids), -1, dtype=np.int64)
    for k, (_, val_index) in enumerate(splitter.split(np.zeros(len(class_ids)), class_ids, groups)):
        fold_of[val_index] = k
    return fold_of


def _summary(merged, class_names, folds):
    rows = []
    for k in range(folds):
        for split, part in (("train", merged[merged["fold"] != k]), ("val", merged[merged["fold"] == k])):
            row = {"fold": k, "split": split}
            row.update({name: int(part[name].sum()) for name in class_names})
            row.update(total=len(part), groups=int(part["group"].nunique()))
            rows.append(row)
    return pd.DataFrame(rows)


def make_folds(
    csv_paths,
    out_dir,
    folds=5,
    seed=42,
    group_by=None,
    group_regex=None,
    images_dir=None,
    class_names=CLASS_NAMES,
    filename_column="new_filename",
):
    """Split labeled tables into grouped, stratified folds and write them.

    Args:
        csv_paths: one labeled table CSV or a list of them (merged in order).
        out_dir: folder for the fold files (created).
        folds: number of folds, >= 2 and at most the number of groups
            holding the rarest class.
        seed: shuffling seed of `StratifiedGroupKFold`.
        group_by: a column whose equal values (compared as strings) must
            share a fold, e.g. ``"patient_id"``.
        group_regex: instead of `group_by`, a pattern searched in each
            filename; the group is its first capture group, or the whole
            match without one (e.g. ``r"(person\\d+)_"``).
        images_dir: image folder for rows without ``source_dir``; defaults
            to ``<folder of each CSV>/images``.
        class_names: the one-hot label columns, in order.
        filename_column: the column holding image filenames.

    Returns:
        The summary `pandas.DataFrame` (also written as ``summary.csv``):
        one row per fold and split with the class counts, ``total`` and
        ``groups``. ``summary.attrs["warning"]`` is a message to show the
        user when neither `group_by` nor `group_regex` was given, else None.

    Raises:
        TableError: an input CSV is invalid (missing images included).
        FoldError: leaking inputs, missing or invalid groups, or too many
            folds; the message names the CSVs and lines.

    Example:

    ```python
    summary = make_folds(["cxr4/train.csv", "cxr4/val.csv"], "folds",
                         group_by="patient_id")
    if summary.attrs["warning"]:
        print("warning:", summary.attrs["warning"])
    ```
    """
    csv_paths = [os.path.abspath(os.fspath(p)) for p in _as_list(csv_paths)]
    if not csv_paths:
        raise FoldError("make_folds needs at least one CSV")
    if group_by is not None and group_regex is not None:
        raise FoldError("give a group column or a group regex, not both")
    class_names = tuple(class_names)
    out_dir = os.path.abspath(os.fspath(out_dir))

    tables, frames, where, folders = [], [], [], []
    for csv_path in csv_paths:
        table, frame, lines, row_folders = _read_rows(csv_path, images_dir, class_names, filename_column)
        tables.append(table)
        frames.append(frame)
        folders += row_folders
        where += [f"{csv_path} line {line}" for line in lines]
        frame["source_csv"] = os.path.relpath(csv_path, out_dir)
        frame["source_line"] = lines
    filenames = [f for t in tables for f in t.filenames]
    paths = [p for t in tables for p in t.paths]
    problems = _leak_problems(filenames, paths, where)
    if problems:
        raise FoldError(
            "the inputs would leak between folds (each image must be one row):\n  " + "\n  ".join(problems)
        )

    warning = None
    if group_by is not None:
        groups = groups_by_column(frames, csv_paths, group_by, where)
    elif group_regex is not None:
        groups = groups_by_regex(filenames, group_regex, where)
    else:
        groups, warning = list(filenames), _no_groups_warning(frames)
    labels = np.concatenate([t.labels for t in tables]).astype(np.int64)
    fold_of = assign_folds(labels.argmax(axis=1), groups, folds, seed, class_names)

    merged = pd.DataFrame({filename_column: filenames})
    for c, name in enumerate(class_names):
        merged[name] = labels[:, c]
    # Relative to out_dir, because read_table joins source_dir with the folder
    # of the fold CSV.
    merged["source_dir"] = [os.path.relpath(folder, out_dir) for folder in folders]
    merged["group"] = groups
    merged["fold"] = fold_of
    known = {filename_column, *class_names, *_MADE_COLUMNS}
    extra = list(dict.fromkeys(c for frame in frames for c in frame.columns if c not in known))
    others = pd.concat([frame.reindex(columns=extra) for frame in frames], ignore_index=True)
    if "sample_weight" in others:
        others["sample_weight"] = others["sample_weight"].fillna("1")  # as Table.concat does
    others = others.fillna("")
    sources = pd.concat([frame[["source_csv", "source_line"]] for frame in frames], ignore_index=True)
    merged = pd.concat([merged, others, sources], axis=1)

    os.makedirs(out_dir, exist_ok=True)
    fold_columns = [c for c in merged.columns if c not in ("fold", "source_csv", "source_line")]
    for k in range(folds):
        in_val = merged["fold"] == k
        write_csv_atomic(merged.loc[~in_val, fold_columns], os.path.join(out_dir, f"fold{k}_train.csv"))
        write_csv_atomic(merged.loc[in_val, fold_columns], os.path.join(out_dir, f"fold{k}_val.csv"))
    # Fold files of an earlier run with more folds would look like part of this one.
    for name in sorted(os.listdir(out_dir)):
        match = re.fullmatch(r"fold(\d+)_(train|val)\.csv", name)
        if match and int(match.group(1)) >= folds:
            os.remove(os.path.join(out_dir, name))
    write_csv_atomic(merged, os.path.join(out_dir, "folds.csv"))
    summary = _summary(merged, class_names, folds)
    write_csv_atomic(summary, os.path.join(out_dir, "summary.csv"))
    settings = {
        "csv_paths": csv_paths,
        "images_dir": None if images_dir is None else os.path.abspath(os.fspath(images_dir)),
        "folds": int(folds),
        "seed": seed,
        "group_by": group_by,
        "group_regex": group_regex,
        "class_names": list(class_names),
        "filename_column": filename_column,
        "rows": len(merged),
        "groups": int(merged["group"].nunique()),
        "warning": None if warning is None else str(warning),
    }
    write_json_atomic(settings, os.path.join(out_dir, "folds.json"))
    summary.attrs["warning"] = warning
    return summary


def fold_csvs(folds_dir, fold):
    """`(train_csv, val_csv)` file names of `fold` in a `make_folds` folder, checked to exist."""
    folds_dir = os.fspath(folds_dir)
    if not os.path.isfile(os.path.join(folds_dir, "folds.csv")):
        raise FoldError(f"{{folds_dir}} {folds_dir}: no folds.csv here (make the folds with {{make_folds}})",
                        folds_dir="folds_dir", make_folds="make_folds")
    names = (f"fold{fold}_train.csv", f"fold{fold}_val.csv")
    if fold < 0 or not all(os.path.isfile(os.path.join(folds_dir, n)) for n in names):
        made = sorted(int(m.group(1)) for m in map(_FOLD_VAL.fullmatch, os.listdir(folds_dir)) if m)
        raise FoldError(f"{{fold}} {fold}: {folds_dir} has folds {', '.join(map(str, made))}", fold="fold")
    return names


def _run_fold(run_dir):
    """(fold, absolute folds dir, recipe data dict) of one `fit` run directory."""
    missing = [n for n in ("recipe.json", "val_probs.csv") if not os.path.isfile(os.path.join(run_dir, n))]
    if missing:
        raise FoldError(f"{run_dir}: no {' or '.join(missing)} (not a finished keras-cxr fit run?)")
    try:
        with open(os.path.join(run_dir, "recipe.json"), encoding="utf-8") as f:
            recipe = json.load(f)
    except json.JSONDecodeError as e:
        raise FoldError(f"{run_dir}: recipe.json is not JSON: {e}") from None
    data = recipe.get("data") if isinstance(recipe, dict) else None
    if not isinstance(data, dict):
        raise FoldError(f"{run_dir}: recipe.json has no 'data' section")
    val_csv = os.path.basename(str(data.get("val_csv") or ""))
    match = _FOLD_VAL.fullmatch(val_csv)
    if data.get("data_dir") is None or match is None:
        raise FoldError(
            f"{run_dir}: was not trained on a fold CSV (data.val_csv={data.get('val_csv')!r}, "
            f"data.data_dir={data.get('data_dir')!r}); train each fold on its {{fold_csvs}}",
            fold_csvs="fold_csvs(folds_dir, k)",
        )
    fold = int(match.group(1))
    train_csv = os.path.basename(str(data.get("train_csv") or ""))
    if train_csv != f"fold{fold}_train.csv":
        raise FoldError(
            f"{run_dir}: validated on {val_csv} but trained on {data.get('train_csv')!r}, "
            f"not fold{fold}_train.csv: its val rows may have been trained on"
        )
    return fold, os.path.abspath(data["data_dir"]), data


def _read_folds_csv(folds_dir):
    folds_csv = os.path.join(folds_dir, "folds.csv")
    if not os.path.isfile(folds_csv):
        raise FoldError(f"{folds_csv}: not found (make the folds with keras-cxr kfold)")
    settings = {}
    if os.path.isfile(os.path.join(folds_dir, "folds.json")):
        with open(os.path.join(folds_dir, "folds.json"), encoding="utf-8") as f:
            settings = json.load(f)
    frame = pd.read_csv(folds_csv, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    filename_column = settings.get("filename_column", "new_filename")
    for column in (filename_column, "fold"):
        if column not in frame.columns:
            raise FoldError(f"{folds_csv} line 1: no {column!r} column")
    frame["fold"] = frame["fold"].astype(int)
    return folds_csv, frame, settings


def gather_oof(run_dirs, out_path=None, folds_dir=None):
    """Join the val probabilities of one run per fold into out-of-fold ones.

    Args:
        run_dirs: the `fit` run directories, one per fold, any order (each
            made by ``keras-cxr fit --folds-dir DIR --fold K``).
        out_path: where to write the probability file; None writes nothing.
        folds_dir: the folder of ``folds.csv``; defaults to the runs'
            ``data.data_dir`` (e.g. when the folds folder has moved).

    Returns:
        A `Probabilities` with one row per ``folds.csv`` row, in its order.
        The matching labels are ``read_table(folds_dir / "folds.csv",
        labels="required", check_files=False)``.

    Raises:
        FoldError: naming the run directory: a run without
            ``val_probs.csv``/``recipe.json`` or not trained on fold CSVs,
            runs of different folds folders, two runs of one fold, a filename
            in two runs, val rows that differ from their fold in
            ``folds.csv``, or folds without a run.
        ProbabilityError: an unreadable ``val_probs.csv``.

    Example:

    ```python
    oof = gather_oof([f"runs/fold{k}" for k in range(5)], "runs/oof_probs.csv")
    labels = read_table("folds/folds.csv", labels="required", check_files=False)
    assert oof.filenames == labels.filenames
    ```
    """
    run_dirs = [os.fspath(r) for r in _as_list(run_dirs)]
    if not run_dirs:
        raise FoldError("gather_oof needs at least one run directory")
    runs = {}  # fold -> (run_dir, folds_dir)
    for run_dir in run_dirs:
        fold, run_folds_dir, _ = _run_fold(run_dir)
        if fold in runs:
            raise FoldError(f"{runs[fold][0]} and {run_dir} are both runs of fold {fold}: keep one")
        runs[fold] = (run_dir, run_folds_dir)
    folds_dirs = dict.fromkeys(os.path.realpath(d) for _, d in runs.values())
    if len(folds_dirs) > 1:
        detail = "; ".join(f"{r}: {d}" for r, d in runs.values())
        raise FoldError(f"the runs were trained on different folds folders ({detail})")
    if folds_dir is None:
        folds_dir = next(iter(runs.values()))[1]
    folds_csv, frame, settings = _read_folds_csv(os.path.abspath(os.fspath(folds_dir)))
    class_names = tuple(settings.get("class_names", CLASS_NAMES))
    filename_column = settings.get("filename_column", "new_filename")
    fold_count = int(settings.get("folds", frame["fold"].max() + 1))

    outside = sorted(k for k in runs if k >= fold_count)
    if outside:
        raise FoldError(
            f"{runs[outside[0]][0]}: is a run of fold {outside[0]}, "
            f"but {folds_csv} has folds 0..{fold_count - 1}"
        )
    probs, owner = {}, {}
    for fold in sorted(runs):
        run_dir = runs[fold][0]
        p = read_probabilities(os.path.join(run_dir, "val_probs.csv"), class_names, filename_column)
        twice = [f"{name!r} (also in {owner[name]})" for name in p.filenames if name in owner]
        if twice:
            raise FoldError(f"{run_dir}: filenames in two runs: " + ", ".join(_listed(twice, "filenames")))
        owner.update(dict.fromkeys(p.filenames, run_dir))
        expected = frame.loc[frame["fold"] == fold, filename_column].tolist()
        try:
            probs[fold] = p.aligned_to(expected, f"{folds_csv} fold {fold}")
        except ProbabilityError as e:
            raise FoldError(f"{run_dir}: its val rows are not fold {fold} of {folds_csv}: {e}") from None
    missing = [k for k in range(fold_count) if k not in runs]
    if missing:
        which = f"folds {', '.join(map(str, missing))} have" if len(missing) > 1 else f"fold {missing[0]} has"
        raise FoldError(f"{which} no run: every labeled row must be covered once")

    filenames = frame[filename_column].tolist()
    values = np.zeros((len(frame), len(class_names)), dtype=np.float64)
    for fold, p in probs.items():
        values[np.flatnonzero(frame["fold"].to_numpy() == fold)] = p.values
    if out_path is not None:
        write_probabilities(out_path, filenames, values, class_names, filename_column)
    return Probabilities(
        path=os.fspath(out_path) if out_path is not None else f"out-of-fold probabilities of {folds_csv}",
        filenames=tuple(filenames),
        values=values,
        class_names=class_names,
    )
