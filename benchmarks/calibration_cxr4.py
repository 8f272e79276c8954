"""Temperature scaling fitted on validation rows, measured on test rows (cxr4: val -> test).

Fits the calibration on one labeled probability file (a run's
``val_probs.csv`` against ``cxr4/val.csv``) and scores the *other* rows (the
same model's ``predict`` output on ``cxr4/test.csv`` against its labels):
ECE (top-label, 15 bins), Brier and NLL before and after, and how many test
rows change their argmax (0 for temperature scaling). The test rows are never
used to fit; rows present in both files are refused.

Usage:

```bash
keras-cxr fit recipes/cpu.py --data-dir ../shared/data/cxr4 --out runs/cxr4
keras-cxr predict runs/cxr4 --csv ../shared/data/cxr4/test.csv --out runs/cxr4/test_probs.csv
python benchmarks/calibration_cxr4.py --val-probs runs/cxr4/val_probs.csv --val-labels ../shared/data/cxr4/val.csv \\
    --test-probs runs/cxr4/test_probs.csv --test-labels ../shared/data/cxr4/test.csv [--method vector] [--plot PNG]
python benchmarks/calibration_cxr4.py --synthetic      # the same on generated over-confident files (a smoke test)
```
"""

import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np


def write_synthetic(folder, rows=300, temperature=2.0, seed=0,
                    class_names=("normal", "bacteria", "virus", "COVID-19")):
    """Labeled val/test probability files that are over-confident by a known `temperature`."""
    import pandas as pd
    from scipy.special import softmax

    rng = np.random.default_rng(seed)
    folder = pathlib.Path(folder)
    paths = {}
    for split in ("val", "test"):
        logits = rng.normal(0.0, 1.5, (rows, len(class_names)))
        truth = softmax(logits, axis=1)
        y = (truth.cumsum(axis=1) < rng.random((rows, 1))).sum(axis=1)
        names = [f"{split}_{i}.png" for i in range(rows)]
        labels = pd.DataFrame(np.eye(len(class_names), dtype=int)[y], columns=list(class_names))
        labels.insert(0, "new_filename", names)
        probs = pd.DataFrame(softmax(logits * temperature, axis=1), columns=list(class_names))
        probs.insert(0, "new_filename", names)
        paths[f"{split}_labels"] = folder / f"{split}.csv"
        paths[f"{split}_probs"] = folder / f"{split}_probs.csv"
        labels.to_csv(paths[f"{split}_labels"], index=False)
        probs.to_csv(paths[f"{split}_probs"], index=False)
    return paths


def run(val_probs, val_labels, test_probs, test_labels, method="temperature", plot=None):
    """Fit on the val rows, score the test rows; returns the report dict it prints."""
    from keras_cxr.calibration import calibrate_probabilities, fit_calibration, labeled_rows
    from keras_cxr.evaluation import calibration_scores
    from keras_cxr.probabilities import read_probabilities

    calibration, fit_report = fit_calibration(read_probabilities(val_probs), val_labels, method=method)
    test, y, _ = labeled_rows(read_probabilities(test_probs, class_names=calibration.class_names), test_labels)
    calibrated = calibrate_probabilities(test, calibration)  # refuses test rows the calibration was fitted on
    report = {
        "calibration": calibration.describe(),
        "val_rows": fit_report["rows"],
        "test_rows": len(test),
        "val": {k: fit_report[k] for k in ("before", "in_sample", "cross_validated")},
        "test_before": calibration_scores(y, test.values),
        "test_after": calibration_scores(y, calibrated.values),
        "test_argmax_changed": int((calibrated.values.argmax(1) != test.values.argmax(1)).sum()),
    }
    if plot:
        from keras_cxr.plots import plot_reliability

        plot_reliability(y, test.values, plot, calibrated=calibrated.values,
                         labels=("test, before", f"test, after {calibration.describe()}"))
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--val-probs")
    parser.add_argument("--val-labels")
    parser.add_argument("--test-probs")
    parser.add_argument("--test-labels")
    parser.add_argument("--method", default="temperature", choices=["temperature", "vector"])
    parser.add_argument("--plot", help="Write the test rows' reliability diagram (before/after) here.")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    parser.add_argument("--synthetic", action="store_true", help="Use generated files over-confident by T=2.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            paths = write_synthetic(tmp)
        else:
            paths = {k: getattr(args, k) for k in ("val_probs", "val_labels", "test_probs", "test_labels")}
            missing = [f"--{k.replace('_', '-')}" for k, v in paths.items() if not v]
            if missing:
                parser.error(f"give {', '.join(missing)} (or --synthetic)")
        report = run(**paths, method=args.method, plot=args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
        return report
    print(f"{report['calibration']} fitted on {report['val_rows']} val rows; scored on {report['test_rows']} test rows")
    print(f"{'':<22} {'ECE':>7}  {'Brier':>7}  {'NLL':>7}")
    rows = [("val before", report["val"]["before"]), ("val after, CV", report["val"]["cross_validated"]),
            ("test before", report["test_before"]), ("test after", report["test_after"])]
    for name, s in rows:
        print(f"{name:<22} " + ("   -" if s is None else f"{s['ece']:7.4f}  {s['brier']:7.4f}  {s['nll']:7.4f}"))
    print(f"test rows whose argmax changed: {report['test_argmax_changed']}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
