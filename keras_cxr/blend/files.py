"""`keras-cxr blend` on files: probability CSVs in, probs/submission/report out."""

import os
import pathlib

import numpy as np
import pandas as pd

from keras_cxr.io import write_json_atomic
from keras_cxr.probabilities import ProbabilityError, read_probabilities, write_probabilities, write_submission


def _labeled_rows(val_paths, labels_csv):
    from keras_cxr.data import read_table

    first = read_probabilities(val_paths[0])
    table = read_table(labels_csv, class_names=first.class_names, labels="required", check_files=False)
    stacked = [read_probabilities(p, class_names=first.class_names).aligned_to(table.filenames, labels_csv)
               for p in val_paths]
    return table, np.stack([p.values for p in stacked])


def _rows_to_predict(test_paths, class_names):
    first = read_probabilities(test_paths[0], class_names=class_names)
    stacked = [first] + [read_probabilities(p, class_names=class_names).aligned_to(first.filenames, test_paths[0])
                         for p in test_paths[1:]]
    return first.filenames, np.stack([p.values for p in stacked])


def _groups(labels_csv, table, column):
    frame = pd.read_csv(labels_csv, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    if column not in frame.columns:
        raise ProbabilityError(f"{{group_by}} {column}: no such column in {labels_csv} (columns: {list(frame.columns)})",
                               group_by="group_by")
    by_name = dict(zip(frame["new_filename"].str.strip(), frame[column].str.strip()))
    return np.array([by_name[f] for f in table.filenames])


def blend_files(val_paths, labels_csv, test_paths, out_dir, method="class-specific", biases=None, cv_folds=5,
                group_by=None, seed=0, calibration=None):
    """Fit a blend on labeled probability files and apply it to the rows to predict.

    Args:
        val_paths: one probability file per model on the labeled rows
            (validation or out-of-fold predictions).
        labels_csv: the labeled table CSV of those rows.
        test_paths: the same models' probability files, same model order,
            on the rows to predict; rows are matched by filename and written
            in the first file's order.
        out_dir: gets ``probs.csv``, ``submission.csv`` and ``blend.json``.
        method, biases, cv_folds, seed: as `keras_cxr.blend.fit_blend`.
        group_by: a column of `labels_csv` (e.g. ``patient_id``) whose rows
            stay in one part of the cross-validation.
        calibration: a `keras_cxr.calibration.Calibration`, a calibration
            JSON file or a run directory holding ``calibration.json``,
            applied to the blend's probabilities of the rows to predict
            (refused when it was fitted on any of them).

    Returns:
        The report written to ``blend.json``.

    Raises:
        ProbabilityError: unreadable or mismatched files, different model
            counts, or rows to predict that also appear among the labeled
            rows (fitting on them would leak their labels).
    """
    from keras_cxr.blend.selection import fit_blend

    val_paths, test_paths = [os.fspath(p) for p in val_paths], [os.fspath(p) for p in test_paths]
    if len(val_paths) != len(test_paths):
        raise ProbabilityError(
            f"{len(val_paths)} {{val_paths}} file(s) but {len(test_paths)} {{test_paths}} file(s): give each model's "
            "labeled-row and to-predict probabilities, in the same model order",
            val_paths="val_paths", test_paths="test_paths",
        )
    table, labeled = _labeled_rows(val_paths, labels_csv)
    filenames, to_predict = _rows_to_predict(test_paths, table.class_names)
    overlap = sorted(set(filenames) & set(table.filenames))
    if overlap:
        shown = ", ".join(overlap[:5]) + (f" and {len(overlap) - 5} more" if len(overlap) > 5 else "")
        raise ProbabilityError(
            f"{len(overlap)} row(s) to predict in {test_paths[0]} also have labels in {labels_csv} ({shown}); "
            "a blend fitted on those labels would leak them into the predictions"
        )
    if calibration is not None:
        from keras_cxr.calibration import check_disjoint, resolve

        calibration = resolve(calibration, class_names=table.class_names)
        check_disjoint(calibration, filenames, where=f"the rows of {test_paths[0]}")
    groups = _groups(labels_csv, table, group_by) if group_by else None

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = fit_blend(labeled, table.class_ids, method=method, biases=biases, folds=cv_folds, seed=seed,
                       groups=groups, model_names=val_paths, class_names=table.class_names)
    probs = result.predict_proba(to_predict)
    if calibration is not None:
        probs = calibration.apply(probs)
    write_probabilities(out / "probs.csv", filenames, probs, table.class_names)
    write_submission(out / "submission.csv", filenames, probs, table.class_names)
    report = {
        **result.report(),
        "labels": os.fspath(labels_csv),
        "val": val_paths,
        "test": test_paths,
        "test_rows": len(filenames),
    }
    if calibration is not None:
        report["calibration"] = {"file": calibration.path, "method": calibration.method,
                                 "parameters": calibration.parameters}
    write_json_atomic(report, out / "blend.json")
    return report
