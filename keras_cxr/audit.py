"""Label audit: rank the rows whose given label the model's probabilities doubt.

`audit_labels` hands out-of-fold probabilities and the given labels to
cleanlab (confident learning: `cleanlab.filter.find_label_issues`, ranked by
`cleanlab.rank.get_label_quality_scores`' self-confidence, the probability
the model gives the given label) and returns the suspected label errors, most
suspect first, with the label the model suggests. `write_audit` writes them:

- ``suspects.csv``: rank, filename, given and suggested label, the label
  quality score, the given and suggested class's probability, the fold
  (when the labels CSV has a ``fold`` column) and the image path;
- ``pairs.csv``: how many suspects go from each given class to each
  suggested class, and their share of the given class's rows;
- ``audit.json``: the counts, the settings, the cleanlab version and its
  warnings;
- ``suspects.png``: a contact sheet of the top suspects.

The probabilities must be out-of-fold: a model that trained on a row has
learnt its label, right or wrong, and will not doubt it. Where it can tell
(the probability file sits in a keras-cxr run directory that trained on some
of its rows) `audit_labels` refuses them.

Example:

```python
from keras_cxr.audit import audit_labels, write_audit

audit = audit_labels("oof_probs.csv", "folds/folds.csv")
print(len(audit.suspects), "suspects of", audit.rows, "rows")
print(audit.pairs.head())
write_audit(audit, "audit", top=24)
```
"""

import dataclasses
import json
import os
import warnings

import numpy as np
import pandas as pd

from keras_cxr.errors import FieldError, listing
from keras_cxr.io import write_csv_atomic, write_json_atomic
from keras_cxr.probabilities import Probabilities, read_probabilities

RANKED_BY = "self_confidence"
SHEET_IMAGE_SIZE = 224


class AuditError(FieldError):
    """Probabilities and labels that cannot be audited together; the message says why."""


@dataclasses.dataclass(frozen=True, eq=False)
class LabelAudit:
    """The result of `audit_labels`.

    Args:
        suspects: the suspected label errors, most suspect first (columns
            ``rank, filename, given, suggested, label_quality, p_given,
            p_suggested``, ``fold`` when the labels have one, ``image``).
        pairs: suspect counts per (given, suggested) class pair, largest
            first, with ``rate`` = count / rows of the given class.
        rows: how many rows were audited (the probability file's rows).
        class_counts: audited rows per given class.
        settings: provenance: files, method, cleanlab version, the in-sample
            check and cleanlab's warnings.
    """

    suspects: pd.DataFrame
    pairs: pd.DataFrame
    rows: int
    class_counts: dict
    settings: dict

    def summary(self):
        """One line: how many suspects of how many rows, and the commonest pairs."""
        top = ", ".join(f"{r.given}->{r.suggested} {r.count}" for r in self.pairs.head(3).itertuples())
        return f"{len(self.suspects)} suspected label errors of {self.rows} rows" + (f" ({top})" if top else "")


def _cleanlab_version():
    import cleanlab

    return cleanlab.__version__


def _read_labels(labels_csv, images_dir, class_names):
    """The labels `Table` for `class_names`, and the CSV's ``fold`` column by filename (or None)."""
    from keras_cxr.data.table import TableError, _read_frame, read_table

    try:
        frame = _read_frame(labels_csv, os.path.basename(labels_csv))
    except TableError as e:
        raise AuditError(f"labels {e.problems[0]}") from None
    columns = list(frame.columns)
    unknown = [c for c in class_names if c not in columns]
    if unknown:
        raise AuditError(
            f"labels {labels_csv} has no column for class(es) {listing(unknown)} of the probabilities "
            f"(its columns: {', '.join(map(repr, columns))})"
        )
    from keras_cxr.constants import CLASS_NAMES

    uncovered = [c for c in CLASS_NAMES if c in columns and c not in class_names]
    if uncovered:
        raise AuditError(
            f"labels {labels_csv} has class column(s) {listing(uncovered)} that the probabilities lack "
            f"(their classes: {', '.join(map(repr, class_names))})"
        )
    try:
        table = read_table(labels_csv, images_dir=images_dir, class_names=class_names, labels="required",
                           check_files=False)
    except TableError as e:
        more = f" (and {len(e.problems) - 1} more problems)" if len(e.problems) > 1 else ""
        raise AuditError(f"labels {e.problems[0]}{more}") from None
    folds = None
    if "fold" in columns:
        frame = frame[frame.ne("").any(axis=1)]
        folds = dict(zip(frame["new_filename"], frame["fold"]))
    return table, folds


def _training_tables(run_dir):
    """The training tables of the keras-cxr run in `run_dir`, resolved as `training.load_tables` does.

    Returns `(tables, note)`: the tables found (none when the run's data
    cannot be found any more) and a note on what was checked.
    """
    from keras_cxr.data.table import TableError, read_table

    try:
        with open(os.path.join(run_dir, "recipe.json"), encoding="utf-8") as f:
            data = json.load(f).get("data")
    except (OSError, ValueError, AttributeError):
        return [], f"{run_dir}/recipe.json is unreadable: in-sample rows not checked"
    if not isinstance(data, dict):
        return [], f"{run_dir}/recipe.json has no data section: in-sample rows not checked"
    if data.get("tfds_dir") is not None:
        from keras_cxr.data.tfds import TfdsError, read_tfds_table

        split = str(data.get("train_csv") or "train.csv").removesuffix(".csv")
        try:
            return [read_tfds_table(data["tfds_dir"], split, labels="ignore")], \
                f"checked against the training rows of the TFDS build {data['tfds_dir']}"
        except TfdsError:
            return [], f"the TFDS build {data['tfds_dir']} of {run_dir} is not readable here: in-sample rows not checked"
    if data.get("data_dir") is None:
        from keras_cxr.data.synthetic import default_dataset_dir

        root = default_dataset_dir()  # what training.resolve_data_dir uses, without generating it
    else:
        root = os.path.abspath(str(data["data_dir"]))  # relative to the working directory, as in training
    csvs = [data.get("train_csv") or "train.csv", *(data.get("extra_train") or [])]
    tables, checked = [], []
    for csv in csvs:
        path = os.path.join(root, str(csv))
        try:
            tables.append(read_table(path, images_dir=os.path.join(root, str(data.get("images_dir") or "images")),
                                     filename_column=data.get("filename_column") or "new_filename",
                                     labels="ignore", check_files=False))
            checked.append(path)
        except TableError:
            return [], f"the training table {path} of {run_dir} is not readable here: in-sample rows not checked"
    return tables, "checked against the training rows of " + ", ".join(checked)


def _check_out_of_sample(probs, paths):
    """Refuse `probs` when they sit in a run directory that trained on some of their rows (`paths`)."""
    run_dir = os.path.dirname(os.path.abspath(probs.path))
    if not os.path.isfile(probs.path) or not os.path.isfile(os.path.join(run_dir, "recipe.json")):
        return "no keras-cxr run directory beside the probabilities: in-sample rows not checked"
    tables, note = _training_tables(run_dir)
    trained = {os.path.realpath(p) for t in tables for p in t.paths}
    seen = [name for name, path in zip(probs.filenames, paths) if os.path.realpath(path) in trained]
    if seen:
        raise AuditError(
            f"{probs.path}: {len(seen)} of its {len(probs)} rows are training rows of the run in {run_dir} "
            f"({listing(seen)}), so their probabilities are in-sample and hide label errors; "
            "audit out-of-fold probabilities (one run per fold, each predicting only its held-out rows)"
        )
    return note


def _aligned_rows(probs, table):
    """Positions in `table` of each probability row; refuses rows without a label."""
    position = {}
    for i, name in enumerate(table.filenames):
        if name in position:
            raise AuditError(f"labels {table.csv_path}: filename {name!r} is on two rows; rows must be unique")
        position[name] = i
    missing = [name for name in probs.filenames if name not in position]
    if missing:
        raise AuditError(
            f"{len(missing)} of {len(probs)} rows of {probs.path} have no label in {table.csv_path} "
            f"({listing(missing)})"
        )
    return np.array([position[name] for name in probs.filenames], dtype=np.int64)


def _find_issues(labels, pred_probs, filter_by, n_jobs):
    """cleanlab's ranked issue indices, every row's label quality, and its warnings."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ranked = find_label_issues(labels, pred_probs, return_indices_ranked_by=RANKED_BY, filter_by=filter_by,
                                   n_jobs=n_jobs)
        quality = get_label_quality_scores(labels, pred_probs, method=RANKED_BY)
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    return np.asarray(ranked, dtype=np.int64), np.asarray(quality, dtype=np.float64), messages


def class_pairs(suspects, class_counts):
    """Suspect counts per (given, suggested) class pair, largest first.

    Args:
        suspects: `LabelAudit.suspects` (its ``given`` and ``suggested``).
        class_counts: rows per given class, for the ``rate`` column.

    Returns:
        A DataFrame with ``given, suggested, count, rate`` (rate = count /
        rows of the given class).

    Example:

    ```python
    pairs = class_pairs(audit.suspects, audit.class_counts)
    ```
    """
    if not len(suspects):
        return pd.DataFrame({"given": [], "suggested": [], "count": [], "rate": []})
    pairs = suspects.groupby(["given", "suggested"], sort=False).size().rename("count").reset_index()
    pairs["rate"] = pairs["count"] / pairs["given"].map(class_counts).astype(float)
    return pairs.sort_values(["count", "given", "suggested"], ascending=[False, True, True], kind="stable",
                             ignore_index=True)


def audit_labels(probs, labels_csv, images_dir=None, filter_by="prune_by_noise_rate", n_jobs=1):
    """Find the rows whose given label out-of-fold probabilities contradict, with cleanlab.

    Args:
        probs: a `Probabilities`, or the path of a probability file: one
            out-of-fold row per audited image (``keras-cxr oof`` output).
        labels_csv: the labeled table CSV of those rows (e.g. the
            ``folds.csv`` of `keras_cxr.kfold.make_folds`); it may hold more
            rows than `probs`, which are then not audited.
        images_dir: the image folder of rows without a ``source_dir``
            column; defaults to ``images/`` beside `labels_csv`. Only the
            contact sheet of `write_audit` reads images.
        filter_by: cleanlab's ``find_label_issues`` method.
        n_jobs: cleanlab's worker processes (1: in this process).

    Returns:
        A `LabelAudit`.

    Raises:
        AuditError: naming the files: labels without a class column of the
            probabilities (or with a class column they lack), bad label cells,
            probability rows without a label, or in-sample probabilities
            (their run directory trained on some of their rows).
        ProbabilityError: an unreadable probability file.

    Example:

    ```python
    audit = audit_labels("oof_probs.csv", "folds/folds.csv")
    print(audit.summary())
    print(audit.suspects.head(10).to_string(index=False))
    ```
    """
    if not isinstance(probs, Probabilities):
        probs = read_probabilities(probs)
    labels_csv = os.path.abspath(os.fspath(labels_csv))
    class_names = probs.class_names
    table, folds = _read_labels(labels_csv, images_dir, class_names)
    order = _aligned_rows(probs, table)
    paths = [table.paths[i] for i in order]
    in_sample_note = _check_out_of_sample(probs, paths)

    given = table.class_ids[order]
    ranked, quality, messages = _find_issues(given, probs.values, filter_by, n_jobs)
    suggested = probs.values.argmax(axis=1)
    rows = np.arange(len(probs))
    names = np.array(class_names, dtype=object)
    suspects = pd.DataFrame({
        "rank": np.arange(1, len(ranked) + 1),
        "filename": np.array(probs.filenames, dtype=object)[ranked],
        "given": names[given[ranked]],
        "suggested": names[suggested[ranked]],
        "label_quality": quality[ranked],
        "p_given": probs.values[rows, given][ranked],
        "p_suggested": probs.values[rows, suggested][ranked],
    })
    if folds is not None:
        suspects["fold"] = [folds.get(name, "") for name in suspects["filename"]]
    suspects["image"] = [paths[i] for i in ranked]
    counts = {name: int((given == c).sum()) for c, name in enumerate(class_names)}
    settings = {
        "probabilities": os.path.abspath(probs.path) if os.path.exists(probs.path) else probs.path,
        "labels_csv": labels_csv,
        "images_dir": None if images_dir is None else os.path.abspath(os.fspath(images_dir)),
        "label_rows": len(table),
        "class_names": list(class_names),
        "method": f"cleanlab.filter.find_label_issues(filter_by={filter_by!r}, "
                  f"return_indices_ranked_by={RANKED_BY!r})",
        "cleanlab_version": _cleanlab_version(),
        "in_sample_check": in_sample_note,
        "warnings": messages,
    }
    return LabelAudit(suspects=suspects, pairs=class_pairs(suspects, counts), rows=len(probs),
                      class_counts=counts, settings=settings)


def _sheet_images(suspects, labels_csv):
    images = []
    for row in suspects.itertuples():
        if not os.path.isfile(row.image):
            raise AuditError(
                f"suspect #{row.rank} {row.filename!r}: image not found: {row.image} (images are looked up in "
                f"images/ beside {labels_csv}, or in the folder of its source_dir column)"
            )
        from keras_cxr.data.images import load_image

        image = load_image(row.image, SHEET_IMAGE_SIZE, keep_gray=True)
        images.append(image[..., 0] if image.shape[-1] == 1 else image)
    return images


def write_audit(audit, out_dir, top=24, columns=6):
    """Write a `LabelAudit`'s files into `out_dir` (each atomically).

    Args:
        audit: what `audit_labels` returned.
        out_dir: the folder (created) for ``suspects.csv``, ``pairs.csv``,
            ``audit.json`` and ``suspects.png``.
        top: suspects on the contact sheet; 0 (or no suspects) writes no
            sheet and removes an old one.
        columns: images per row of the contact sheet.

    Returns:
        The paths written, by name.

    Raises:
        AuditError: a top suspect's image is missing (nothing is written).
        ImageError: a top suspect's image cannot be decoded.

    Example:

    ```python
    written = write_audit(audit_labels("oof.csv", "folds/folds.csv"), "audit", top=24)
    print(written["suspects.png"])
    ```
    """
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 0:
        raise AuditError(f"top must be an integer >= 0, got {top!r}")
    out_dir = os.fspath(out_dir)
    shown = audit.suspects.head(int(top))
    images = _sheet_images(shown, audit.settings["labels_csv"]) if len(shown) else []

    paths = {name: os.path.join(out_dir, name) for name in ("suspects.csv", "pairs.csv", "audit.json")}
    write_csv_atomic(audit.suspects, paths["suspects.csv"])
    write_csv_atomic(audit.pairs, paths["pairs.csv"])
    report = {
        "rows": audit.rows,
        "suspects": len(audit.suspects),
        "class_counts": audit.class_counts,
        "suspects_per_class": {name: int((audit.suspects["given"] == name).sum()) for name in audit.class_counts},
        "pairs": audit.pairs.to_dict("records"),
        "contact_sheet_rows": len(shown),
        "settings": audit.settings,
    }
    write_json_atomic(report, paths["audit.json"])
    sheet = os.path.join(out_dir, "suspects.png")
    if images:
        from keras_cxr.plots import contact_sheet

        captions = [f"#{r.rank} {r.filename}\n{r.given} -> {r.suggested} ({r.label_quality:.3f})"
                    for r in shown.itertuples()]
        title = (f"Top {len(shown)} of {len(audit.suspects)} suspected label errors in {audit.rows} rows: "
                 "given -> suggested (label quality)")
        contact_sheet(images, captions, sheet, columns=columns, title=title)
        paths["suspects.png"] = sheet
    elif os.path.exists(sheet):
        os.remove(sheet)  # an earlier audit's sheet would not match these files
    return paths
