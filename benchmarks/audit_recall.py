"""Does the label audit find wrong labels? Flip some on purpose, train 5 folds, audit, count.

One command runs the whole check:

1. the training table: cxr4 train+val (``../shared/data/cxr4``, 1,750 rows)
   or images from the synthetic generator (`--data synthetic`);
2. 8% of its rows (`--flip-rate`, seed `--seed`) get a uniformly drawn
   other class; ``flips.csv`` lists them with their true class;
3. `keras_cxr.kfold.make_folds` splits the noisy table into 5
   patient-grouped, stratified folds (cxr4: ``patient_id``);
4. `keras_cxr.training.fit_recipe` trains one run per fold on its train CSV
   (noisy labels, as a user would) with the recipe `--recipe` (default
   ``recipes/cpu.py``) plus `--set` overrides; finished fold runs with the
   same recipe are reused, so an interrupted run continues;
5. `keras_cxr.kfold.gather_oof` joins their validation probabilities into
   out-of-fold ones, `keras_cxr.audit.audit_labels` ranks the suspects and
   `write_audit` writes them (``WORK/audit``);
6. recall@k: the share of the flipped rows among the top k suspects, k = the
   number of flipped rows. Also printed: how many flipped rows the whole
   suspect list holds, its precision, and the OOF accuracy and Macro-F1
   against the true labels.

Everything lands in `--work` (default ``runs/audit_recall``, or
``runs/audit_recall_quick``); the numbers also in ``WORK/result.json``.

Run (from the repository root):

    # the pipeline end to end on tiny settings (synthetic 120 images, 32 px, 2 epochs; a minute or two)
    .venv/bin/python benchmarks/audit_recall.py --quick
    # the real check: cxr4, recipes/cpu.py, 5 folds (about 5 x 9 min on 2 CPU cores)
    .venv/bin/python benchmarks/audit_recall.py --data cxr4
"""

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np
import pandas as pd

from keras_cxr.io import write_csv_atomic, write_json_atomic

REPO = pathlib.Path(__file__).resolve().parents[1]
CXR4 = (REPO / ".." / "shared" / "data" / "cxr4").resolve()
CLASSES = ("normal", "bacteria", "virus", "COVID-19")
QUICK_COUNTS = (30, 45, 30, 15)  # synthetic rows per class for --quick
FULL_SYNTHETIC_COUNTS = (150, 250, 150, 50)
QUICK_SETTINGS = ["model.image_size=32", "epochs=2", "batch_size=16", "swa.start_epoch=None",
                  "schedule.warmup_epochs=0"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="synthetic data, 32 px, 2 epochs, recipes/smoke.py: checks the pipeline, not the audit")
    parser.add_argument("--data", choices=("cxr4", "synthetic"), help="default: synthetic with --quick, else cxr4")
    parser.add_argument("--cxr4", default=str(CXR4), help="the cxr4 folder (train.csv, val.csv, images/)")
    parser.add_argument("--recipe", help="default: recipes/smoke.py with --quick, else recipes/cpu.py")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override, as keras-cxr fit --set (repeatable)")
    parser.add_argument("--flip-rate", type=float, default=0.08)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seeds the flips and the folds")
    parser.add_argument("--top", type=int, default=24, help="suspects on the contact sheet")
    parser.add_argument("--work", help="default: runs/audit_recall (runs/audit_recall_quick with --quick)")
    parser.add_argument("--verbose", type=int, default=0, help="Keras progress output while training (0, 1, 2)")
    args = parser.parse_args(argv)
    args.data = args.data or ("synthetic" if args.quick else "cxr4")
    args.recipe = args.recipe or str(REPO / "recipes" / ("smoke.py" if args.quick else "cpu.py"))
    args.work = pathlib.Path(args.work or REPO / "runs" / ("audit_recall_quick" if args.quick else "audit_recall"))
    return args


def clean_table(args, work):
    """The labeled rows to audit, as one table CSV with `source_dir`; returns (csv, group column or None)."""
    if args.data == "cxr4":
        root = pathlib.Path(args.cxr4)
        csvs = [root / "train.csv", root / "val.csv"]
        missing = [str(c) for c in csvs if not c.is_file()]
        if missing:
            sys.exit(f"cxr4 not found: {', '.join(missing)} (give its folder with --cxr4, or use --data synthetic)")
        frame = pd.concat([pd.read_csv(c, dtype=str, keep_default_na=False) for c in csvs], ignore_index=True)
        images, group_by = root / "images", "patient_id"
    else:
        from keras_cxr.data.synthetic import make_synthetic_dataset

        counts = QUICK_COUNTS if args.quick else FULL_SYNTHETIC_COUNTS
        root = make_synthetic_dataset(work / "synthetic", counts={"train": counts}, image_size=64 if args.quick else 128,
                                      seed=args.seed)
        frame = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
        images, group_by = root / "images", None  # every synthetic image is its own patient
    frame.insert(1, "source_dir", os.path.relpath(images, work))
    path = work / "clean.csv"
    write_csv_atomic(frame, path)
    return path, group_by


def flip_labels(clean_csv, noisy_csv, rate, seed):
    """Write `noisy_csv` with round(rate * N) labels moved to another class; returns the flips."""
    frame = pd.read_csv(clean_csv, dtype=str, keep_default_na=False)
    labels = frame[list(CLASSES)].astype(int).to_numpy()
    true = labels.argmax(axis=1)
    rng = np.random.default_rng([seed, 0xF11B])
    rows = np.sort(rng.choice(len(frame), size=round(rate * len(frame)), replace=False))
    given = true.copy()
    given[rows] = (true[rows] + rng.integers(1, len(CLASSES), size=len(rows))) % len(CLASSES)
    for c, name in enumerate(CLASSES):
        frame[name] = (given == c).astype(int).astype(str)
    write_csv_atomic(frame, noisy_csv)
    flips = pd.DataFrame({"new_filename": frame["new_filename"].iloc[rows].to_numpy(),
                          "true": np.array(CLASSES)[true[rows]], "given": np.array(CLASSES)[given[rows]]})
    write_csv_atomic(flips, noisy_csv.parent / "flips.csv")
    return flips, dict(zip(frame["new_filename"], np.array(CLASSES)[true]))


def fold_recipe(args, folds_dir, k):
    from keras_cxr.recipe import apply_overrides, load_recipe

    data = [f"data.data_dir={str(folds_dir)!r}", f"data.train_csv='fold{k}_train.csv'",
            f"data.val_csv='fold{k}_val.csv'"]
    quick = QUICK_SETTINGS if args.quick else []
    return apply_overrides(load_recipe(args.recipe), data + quick + list(args.assignments))


def train_folds(args, folds_dir, work):
    from keras_cxr.training import fit_recipe

    runs = []
    for k in range(args.folds):
        recipe = fold_recipe(args, folds_dir, k)
        run_dir = work / f"fold{k}"
        runs.append(run_dir)
        done = (run_dir / "metrics.json").is_file() and (run_dir / "recipe.json").is_file()
        if done and json.loads((run_dir / "recipe.json").read_text()) == json.loads(json.dumps(recipe.to_dict())):
            metrics = json.loads((run_dir / "metrics.json").read_text())
            print(f"fold {k}: reusing {run_dir} (val Macro-F1 {metrics['val_macro_f1']:.4f} on noisy labels)")
            continue
        started = time.perf_counter()
        metrics = fit_recipe(recipe, run_dir, verbose=args.verbose, overwrite=True)
        print(f"fold {k}: val Macro-F1 {metrics['val_macro_f1']:.4f} on noisy labels, "
              f"{metrics['train_images']} training images, {time.perf_counter() - started:.0f} s", flush=True)
    return runs


def main(argv=None):
    args = parse_args(argv)
    from sklearn.metrics import f1_score

    from keras_cxr.audit import audit_labels, write_audit
    from keras_cxr.kfold import gather_oof, make_folds

    started = time.perf_counter()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    clean_csv, group_by = clean_table(args, work)
    flips, true_of = flip_labels(clean_csv, work / "noisy.csv", args.flip_rate, args.seed)
    folds_dir = work / "folds"
    make_folds([work / "noisy.csv"], folds_dir, folds=args.folds, seed=args.seed, group_by=group_by)
    print(f"{len(true_of)} rows ({args.data}), {len(flips)} labels flipped, {args.folds} folds -> {folds_dir}",
          flush=True)

    runs = train_folds(args, folds_dir, work)
    oof = gather_oof(runs, work / "oof_probs.csv")
    audit = audit_labels(oof, folds_dir / "folds.csv")
    write_audit(audit, work / "audit", top=args.top)

    k = len(flips)
    flipped = set(flips["new_filename"])
    ranked = audit.suspects["filename"].tolist()
    found_top_k = len(flipped & set(ranked[:k]))
    found_all = len(flipped & set(ranked))
    true = np.array([CLASSES.index(true_of[name]) for name in oof.filenames])
    predicted = oof.values.argmax(axis=1)
    result = {
        "command": "python benchmarks/audit_recall.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "data": args.data,
        "recipe": args.recipe,
        "overrides": (QUICK_SETTINGS if args.quick else []) + list(args.assignments),
        "rows": len(true_of),
        "flipped": k,
        "suspects": len(ranked),
        "recall_at_k": found_top_k / k,
        "found_in_top_k": found_top_k,
        "found_in_all_suspects": found_all,
        "suspect_precision": found_all / len(ranked) if ranked else None,
        "oof_accuracy_true_labels": float((predicted == true).mean()),
        "oof_macro_f1_true_labels": float(f1_score(true, predicted, average="macro")),
        "cleanlab_version": audit.settings["cleanlab_version"],
        "seconds": time.perf_counter() - started,
    }
    write_json_atomic(result, work / "result.json")
    print(audit.summary())
    print(f"OOF vs the true labels: accuracy {result['oof_accuracy_true_labels']:.3f}, "
          f"Macro-F1 {result['oof_macro_f1_true_labels']:.3f}")
    print(f"flipped rows among all {len(ranked)} suspects: {found_all} of {k} "
          f"(precision {result['suspect_precision'] or 0:.3f})")
    print(f"recall@{k} of the flipped labels: {result['recall_at_k']:.3f} ({found_top_k}/{k}); "
          f"{result['seconds']:.0f} s; files in {work}")
    return result


if __name__ == "__main__":
    main()
