"""Ablation study of the CPU recipe on validation only (issue 16): one row per lever, each row a `keras-cxr fit`.

Every row is `recipes/cpu.py` (or `--recipe`) plus a few `--set` overrides;
each row and seed is a run directory under OUT, and a row already finished
(its metrics.json exists) is read, not trained again, so the study can be
stopped and continued. It reads validation numbers only (metrics.json:
val Macro-F1, per-class F1, bacteria/virus confusion, ECE, wall time);
test labels are never opened here.

    KERAS_BACKEND=torch .venv/bin/python benchmarks/cpu_ablation.py \\
        --data-dir ../shared/data/cxr4 --out runs/ablation --seeds 42 43
    # a subset: --rows base size160 sqrt_sampling; list them: --list
    # options after -- go to every fit (a quick check: ... -- --set epochs=2 --set swa.start_epoch=none)

It prints a Markdown table (mean over seeds, and the spread) and writes
OUT/ablation.csv with one line per run. Wall times are only comparable
when the machine runs nothing else.

Two columns guard against reading noise as a lever. On ~300 validation rows
the per-epoch Macro-F1 moves by 0.02-0.05 from one epoch to the next even at
the end of the cosine schedule, so the best epoch's score (what the run's
checkpoint keeps) is the maximum of a noisy curve: `last 5` is the mean over
the last five epochs instead. `seed mean` is the Macro-F1 of the members'
averaged validation probabilities when a row has several seeds (no weights
fitted, so nothing is tuned on those rows beyond each run's checkpoint).
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

import pandas as pd

REPO = pathlib.Path(__file__).resolve().parents[1]

# name -> (what it changes, fit options). Every option is a real `keras-cxr fit` option.
def _augmentation(rotation, translate, scale, shear, photometric, erasing_p=None):
    """`--set` overrides for one augmentation strength (scale is the +- range, photometric brightness and contrast)."""
    options = [f"augmentation.rotation={rotation}", f"augmentation.translate={translate}",
               f"augmentation.scale=[{1 - scale:g},{1 + scale:g}]", f"augmentation.shear={shear}",
               f"augmentation.brightness={photometric}", f"augmentation.contrast={photometric}"]
    if erasing_p is not None:
        options.append(f"augmentation.erasing_p={erasing_p}")
    return [arg for option in options for arg in ("--set", option)]


ROWS = {
    "base": ("the recipe as it is (recipes/cpu.py: 128 px, 40 epochs)", []),
    "size160": ("input 160 px", ["--image-size", "160"]),
    "size192": ("input 192 px", ["--image-size", "192"]),
    "size224": ("input 224 px", ["--image-size", "224"]),
    "epochs20": ("20 epochs (SWA over the last 5)", ["--set", "epochs=20", "--set", "swa.start_epoch=16"]),
    "size160_epochs20": ("input 160 px, 20 epochs (SWA over the last 5)",
                         ["--image-size", "160", "--set", "epochs=20", "--set", "swa.start_epoch=16"]),
    "wide": ("cxr_resnet_wide: 1.5x the widths (2.76M parameters)", ["--set", "model.name=cxr_resnet_wide"]),
    "deep": ("cxr_resnet_deep: two blocks per stage (2.80M parameters)", ["--set", "model.name=cxr_resnet_deep"]),
    "effv2_b0": ("EfficientNetV2-B0 from scratch (keras.applications, 5.92M parameters)",
                 ["--set", "model.name=effv2_b0"]),
    "epochs60": ("60 epochs (SWA over the last 10)", ["--set", "epochs=60", "--set", "swa.start_epoch=51"]),
    "aug_before": ("cpu.py's augmentation before 2026-12-07 (twice aug_light)", _augmentation(10, 0.08, 0.1, 8, 0.2)),
    "aug_light": ("light augmentation (cpu.py's since 2026-12-07)", _augmentation(5, 0.04, 0.05, 4, 0.1)),
    "aug_strong": ("1.5x aug_before and random erasing 0.25", _augmentation(15, 0.12, 0.15, 12, 0.3, erasing_p=0.25)),
    "mixup": ("Mixup (p 0.5)", ["--set", "mixing.mixup_p=0.5"]),
    "cutmix": ("CutMix (p 0.5)", ["--set", "mixing.cutmix_p=0.5"]),
    "focal": ("focal loss gamma 2, no smoothing", ["--set", "loss.gamma=2.0", "--set", "loss.label_smoothing=0"]),
    "sqrt_sampling": ("square-root class sampling", ["--set", "sampling=sqrt"]),
    "ema": ("EMA of weights instead of SWA", ["--set", "optimizer.ema=true", "--set", "swa.start_epoch=none"]),
    "no_swa": ("neither SWA nor EMA", ["--set", "swa.start_epoch=none"]),
    "float32": ("float32 (what precision auto picks on a CPU without bfloat16 instructions)",
                ["--set", "precision=float32"]),
    "bfloat16": ("mixed_bfloat16 (what precision auto picks on a CPU with bfloat16 instructions)",
                 ["--set", "precision=mixed_bfloat16"]),
}
COLUMNS = ["row", "seed", "val_macro_f1", "last5_macro_f1", "normal", "bacteria", "virus", "COVID-19", "bacteria_virus_confusion",
           "val_ece", "best_source", "seconds"]


def run_row(name, seed, args):
    """Train one row with one seed (unless its metrics.json exists); its validation numbers."""
    out = args.out / name / f"seed{seed}"
    metrics_path = out / "metrics.json"
    if not metrics_path.exists():
        command = [sys.executable, "-m", "keras_cxr", "fit", args.recipe, "--data-dir", str(args.data_dir),
                   "--out", str(out), "--overwrite", "--quiet", "--set", f"seed={seed}", *args.fit_args, *ROWS[name][1]]
        print(f"[{time.strftime('%H:%M:%S')}] {name} seed {seed}: {' '.join(command[2:])}", flush=True)
        subprocess.run(command, cwd=REPO, check=True)
    metrics = json.loads(metrics_path.read_text())
    validation = metrics["validation"]
    per_class = {k: v["f1"] for k, v in validation["per_class"].items()}
    confusion = validation.get("bacteria_virus_confusion") or {}
    history = pd.read_csv(out / "history.csv")
    return {"row": name, "seed": seed, "val_macro_f1": metrics["val_macro_f1"],
            "last5_macro_f1": history.val_macro_f1.tail(5).mean(), **per_class,
            "bacteria_virus_confusion": confusion.get("rate"), "val_ece": validation.get("ece"),
            "best_source": metrics["best_source"], "seconds": metrics["seconds"]}


def seed_mean_macro_f1(name, seeds, args):
    """Macro-F1 of the row's seeds' averaged validation probabilities (None for one seed)."""
    if len(seeds) < 2:
        return None
    from sklearn.metrics import f1_score

    from keras_cxr.data import read_table
    from keras_cxr.probabilities import read_probabilities

    val = read_table(args.data_dir / "val.csv", labels="required", check_files=False)
    probs = [read_probabilities(args.out / name / f"seed{seed}" / "val_probs.csv")
             .aligned_to(val.filenames, "val.csv")
             for seed in seeds]
    mean = sum(p.values for p in probs) / len(probs)
    return f1_score(val.class_ids, mean.argmax(axis=1), average="macro")


def table(frame, args):
    """Markdown: per row, mean (min-max over seeds) of the validation numbers, the seeds' blend, minutes."""
    lines = ["| row | change | seeds | val Macro-F1 (best epoch) | last 5 epochs | seed mean | virus F1 | "
             "bacteria/virus confusion | ECE | minutes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, runs in frame.groupby("row", sort=False):
        def cell(column, digits=3):
            values = runs[column].astype(float)
            text = f"{values.mean():.{digits}f}"
            return text + (f" ({values.min():.{digits}f}-{values.max():.{digits}f})" if len(values) > 1 else "")

        blended = seed_mean_macro_f1(name, list(runs.seed), args)
        lines.append(f"| {name} | {ROWS[name][0]} | {len(runs)} | {cell('val_macro_f1')} | {cell('last5_macro_f1')} | "
                     f"{'' if blended is None else f'{blended:.3f}'} | {cell('virus')} | "
                     f"{cell('bacteria_virus_confusion')} | {cell('val_ece')} | {runs.seconds.mean() / 60:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=pathlib.Path, default=REPO.parent / "shared" / "data" / "cxr4")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "runs" / "ablation")
    parser.add_argument("--recipe", default="recipes/cpu.py")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--list", action="store_true", help="list the rows and stop")
    argv, fit_args = sys.argv[1:] if argv is None else list(argv), []
    if "--" in argv:
        argv, fit_args = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    args = parser.parse_args(argv)
    args.fit_args = fit_args
    if args.list:
        for name, (change, options) in ROWS.items():
            print(f"{name:14s} {change}: {' '.join(options) or '(none)'}")
        return

    args.data_dir, args.out = args.data_dir.resolve(), args.out.resolve()
    results = [run_row(name, seed, args) for name in args.rows for seed in args.seeds]
    frame = pd.DataFrame(results, columns=COLUMNS)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "ablation.csv", index=False)
    if args.fit_args:
        print(f"every fit: recipes/cpu.py {' '.join(args.fit_args)}")
    print(table(frame, args))


if __name__ == "__main__":
    main()
