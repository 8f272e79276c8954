"""The `keras-cxr` command line."""

import sys

import click

from keras_cxr.config import ConfigError


class _UserError(click.ClickException):
    """An error in the user's input: printed as one line, exit status 2."""

    exit_code = 2


# The library's error fields (its argument names) -> how this command line words them.
FLAGS = {
    "out_dir": "--out", "overwrite": "--overwrite", "resume": "--resume", "assignments": "--set",
    "swa_off": "--set swa.start_epoch=none", "tta": "--tta", "group_by": "--group-by", "val_paths": "--val",
    "test_paths": "--test", "thresholds": "--thresholds", "weight": "--weight", "max_per_class": "--max-per-class",
    "folds_dir": "--folds-dir", "fold": "--fold", "make_folds": "keras-cxr kfold",
    "fold_csvs": "keras-cxr fit --folds-dir DIR --fold K",
}


def _worded(error):
    """`error`'s message with its fields named as this command line's flags."""
    from keras_cxr.errors import FieldText

    return error.render(FLAGS) if isinstance(error, FieldText) else str(error)


def _user_errors():
    from keras_cxr.data import ImageError, TableError
    from keras_cxr.kfold import FoldError
    from keras_cxr.predictor import ModelFileError
    from keras_cxr.probabilities import ProbabilityError
    from keras_cxr.training import RunDirectoryError

    return (ConfigError, TableError, ImageError, RunDirectoryError, FileNotFoundError, ProbabilityError,
            ModelFileError, FoldError, PermissionError, IsADirectoryError, NotADirectoryError)


class _Reported:
    """`with _Reported():` turns user errors into one clear line and exit status 2.

    Args:
        *more: further exception types that mean bad input in this block.
    """

    def __init__(self, *more):
        self.more = more

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is not None and isinstance(error, (*_user_errors(), *self.more)):
            raise _UserError(_worded(error)) from None
        return False


def _check_output_file(path, option):
    """Refuse an output file whose folder cannot be created or written, before any work."""
    import os
    import pathlib

    path = pathlib.Path(path)
    if path.is_dir():
        raise _UserError(f"{option} {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _UserError(f"{option} {path}: cannot create its folder ({e.strerror or e})") from None
    if not os.access(path.parent, os.W_OK):
        raise _UserError(f"{option} {path}: the folder {path.parent} is not writable")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="keras-cxr")
@click.option("--no-accel", is_flag=True,
              help="Run Keras's own code: no keras_cxr.accel patches, glibc's default heap (also KERAS_CXR_ACCEL=0).")
@click.pass_context
def main(ctx, no_accel):
    """Train, evaluate and ensemble chest X-ray classifiers (Keras 3, torch backend)."""
    ctx.obj = {"accelerate": not no_accel}


def _accelerate():
    """Whether this command runs with `keras_cxr.accel`; sets this process's heap when it does.

    The heap setting (`keras_cxr.accel.keep_freed_memory`) is for the
    command's own process only, and ``KERAS_CXR_HEAP=0`` leaves glibc alone.
    """
    from keras_cxr.accel import keep_freed_memory
    from keras_cxr.accel.switch import switched_off

    accelerate = click.get_current_context().find_root().obj["accelerate"] and not switched_off()
    if accelerate and not switched_off("KERAS_CXR_HEAP"):
        keep_freed_memory()
    return accelerate


@main.command()
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with train.csv, val.csv and images/.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run directory (default: the recipe's output).")
@click.option("--epochs", type=int, help="Override recipe.epochs.")
@click.option("--image-size", type=int, help="Override recipe.model.image_size.")
@click.option("--batch-size", type=int, help="Override recipe.batch_size.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override any recipe field, e.g. --set optimizer.learning_rate=3e-4 (repeatable).")
@click.option("--folds-dir", type=click.Path(file_okay=False),
              help="Train on a fold made by `keras-cxr kfold` (with --fold).")
@click.option("--fold", type=int, help="The fold to train on (0-based; with --folds-dir).")
@click.option("--overwrite", is_flag=True, help="Reuse an --out folder that holds a finished or unfinished run.")
@click.option("--resume", is_flag=True,
              help="Continue the unfinished run in --out from its last completed epoch (same recipe and options).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def fit(recipe_file, data_dir, out_dir, epochs, image_size, batch_size, assignments, folds_dir, fold, overwrite,
        resume, quiet):
    """Train the recipe in RECIPE_FILE and write a run directory."""
    from keras_cxr.recipe import apply_overrides, load_recipe
    from keras_cxr.training import TrainingDiverged, fit_recipe

    if (folds_dir is None) != (fold is None):
        raise _UserError("--folds-dir and --fold go together")
    if folds_dir is not None and data_dir is not None:
        raise _UserError("--data-dir and --folds-dir cannot be combined (the fold CSVs locate their images)")
    with _Reported():
        recipe = load_recipe(recipe_file)
        flags = []
        if data_dir is not None:
            flags.append(f"data.data_dir={data_dir!r}")
        if folds_dir is not None:
            from keras_cxr.kfold import fold_csvs

            train_csv, val_csv = fold_csvs(folds_dir, fold)
            flags += [f"data.data_dir={folds_dir!r}", f"data.train_csv={train_csv!r}", f"data.val_csv={val_csv!r}"]
        for key, value in (("epochs", epochs), ("model.image_size", image_size), ("batch_size", batch_size)):
            if value is not None:
                flags.append(f"{key}={value}")
        recipe = apply_overrides(recipe, flags + list(assignments))
        out = out_dir or recipe.output
        try:
            metrics = fit_recipe(recipe, out, verbose=0 if quiet else 1, overwrite=overwrite, resume=resume,
                                 accelerate=_accelerate())
        except TrainingDiverged as e:
            raise click.ClickException(str(e)) from None
    per_class = " ".join(f"{k}={v['f1']:.3f}" for k, v in metrics["validation"]["per_class"].items())
    click.echo(
        f"val Macro-F1 {metrics['val_macro_f1']:.4f} ({per_class}); "
        + ("best model: SWA" if metrics["best_source"] == "swa" else f"best epoch {metrics['best_epoch']}")
        + f"; {metrics['seconds']:.0f} s; run directory: {out}"
    )


@main.command(name="models")
def list_models():
    """List the model names with their default image size and dropout."""
    from keras_cxr import models

    for name in models.names():
        spec = models.spec(name)
        click.echo(f"{name:14s} {spec.default_image_size:4d} px  dropout {spec.default_dropout:.2f}  {spec.description}")


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--csv", "csv_path", required=True, type=click.Path(dir_okay=False),
              help="Table CSV of the images to predict (labels, if any, are not read).")
@click.option("--images", "images_dir", type=click.Path(file_okay=False),
              help="Image folder (default: images/ beside the CSV).")
@click.option("--tta", default="", metavar="LIST",
              help="Test-time views added to the identity: rotate (+-5 deg), zoom (1.05x), e.g. rotate,zoom.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Probability file to write.")
@click.option("--submission", type=click.Path(dir_okay=False), help="Also write a one-hot submission CSV.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def predict(models, csv_path, images_dir, tta, batch_size, out_path, submission, quiet):
    """Average the class probabilities of MODELS (.keras files or run directories) on a CSV."""
    from keras_cxr.tta import parse_tta

    try:
        parse_tta(tta)
    except ValueError as e:
        raise _UserError(_worded(e)) from None
    for path, option in ((out_path, "--out"), (submission, "--submission")):
        if path:
            _check_output_file(path, option)
    with _Reported():
        from keras_cxr.predictor import predict_csv
        from keras_cxr.probabilities import write_probabilities, write_submission

        probs = predict_csv(models, csv_path, images_dir=images_dir, tta=tta, batch_size=batch_size,
                            verbose=0 if quiet else 1, accelerate=_accelerate())
        write_probabilities(out_path, probs.filenames, probs.values, probs.class_names)
        if submission:
            write_submission(submission, probs.filenames, probs.values, probs.class_names)
    counts = probs.values.argmax(axis=1)
    mix = ", ".join(f"{name} {int((counts == i).sum())}" for i, name in enumerate(probs.class_names))
    click.echo(f"{len(probs)} rows -> {out_path}" + (f" and {submission}" if submission else "")
               + f"; predicted: {mix}")


@main.command()
@click.argument("probs_path", metavar="PROBS.csv", type=click.Path(dir_okay=False))
@click.option("--labels", "labels_csv", required=True, type=click.Path(dir_okay=False),
              help="Labeled table CSV with the same filenames.")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), help="Write confusion.png into this folder.")
def evaluate(probs_path, labels_csv, as_json, plot_dir):
    """Macro-F1, per-class scores, confusion matrix and calibration of a probability file."""
    import json

    from keras_cxr.evaluation import evaluate_probabilities, format_summary

    with _Reported():
        summary = evaluate_probabilities(probs_path, labels_csv)
    if plot_dir:
        import pathlib

        from keras_cxr.plots import plot_confusion_matrix

        path = pathlib.Path(plot_dir) / "confusion.png"
        _check_output_file(path, "--plot")
        plot_confusion_matrix(summary["confusion_matrix"], summary["class_names"], path,
                              title=f"{pathlib.Path(probs_path).name}, Macro-F1 {summary['macro_f1']:.3f}")
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@main.command()
@click.argument("csv_paths", metavar="CSV [CSV ...]", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--folds", default=5, show_default=True, type=int)
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--group-by", metavar="COLUMN", help="Column naming each row's patient (e.g. patient_id).")
@click.option("--group-regex", metavar="REGEX", help="Patient id from the filename (first capture group).")
@click.option("--images", "images_dir", type=click.Path(file_okay=False),
              help="Image folder of the CSVs (default: images/ beside each CSV).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def kfold(csv_paths, folds, seed, group_by, group_regex, images_dir, out_dir):
    """Merge labeled CSVs and split them into patient-grouped, stratified folds."""
    from keras_cxr.kfold import make_folds

    with _Reported():
        summary = make_folds(list(csv_paths), out_dir, folds=folds, seed=seed, group_by=group_by,
                             group_regex=group_regex, images_dir=images_dir)
    click.echo(summary.to_string(index=False))
    if summary.attrs.get("warning"):
        click.echo("warning: " + _worded(summary.attrs["warning"]), err=True)
    click.echo(f"{folds} folds -> {out_dir} (folds.csv, fold{{k}}_train.csv, fold{{k}}_val.csv, summary.csv)")


@main.command()
@click.argument("run_dirs", metavar="RUN_DIR [RUN_DIR ...]", nargs=-1, required=True,
                type=click.Path(file_okay=False))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
def oof(run_dirs, out_path):
    """Gather the folds' validation probabilities into one out-of-fold file."""
    from keras_cxr.kfold import gather_oof

    _check_output_file(out_path, "--out")
    with _Reported():
        probs = gather_oof(run_dirs, out_path)
    click.echo(f"{len(probs)} out-of-fold rows from {len(run_dirs)} runs -> {out_path}")


def _expand_list_options(args, names):
    """``--val A B --labels L`` -> ``--val A --val B --labels L`` for the options in `names`."""
    out, current, first = [], None, False
    for arg in args:
        if arg.startswith("-"):
            current, first = (arg if arg in names else None), True
        elif current is not None and not first:
            out.append(current)
        else:
            first = False
        out.append(arg)
    return out


class _BlendCommand(click.Command):
    """`--val` and `--test` take several files each, as in the documented usage."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, _expand_list_options(args, ("--val", "--test")))


@main.command(cls=_BlendCommand)
@click.option("--method", default="class-specific", show_default=True,
              type=click.Choice(["mean", "weighted", "class-specific", "stacking", "all"]),
              help="`all` fits every method and keeps the best cross-validated one.")
@click.option("--biases/--no-biases", default=None,
              help="Fit per-class decision biases after the method (default: off; both tried with --method all).")
@click.option("--val", "val_paths", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Per-model probabilities on the labeled rows (validation or OOF); repeat or list.")
@click.option("--labels", "labels_csv", required=True, type=click.Path(dir_okay=False),
              help="Labeled table CSV of those rows.")
@click.option("--test", "test_paths", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="The same models' probabilities on the rows to predict, in the same model order.")
@click.option("--cv-folds", default=5, show_default=True, type=click.IntRange(min=2),
              help="Parts of the labeled rows for the cross-validated estimate.")
@click.option("--group-by", metavar="COLUMN", help="Keep rows sharing this labels-CSV column in one CV part.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def blend(method, biases, val_paths, labels_csv, test_paths, cv_folds, group_by, seed, out_dir):
    """Fit an ensemble on labeled rows; write probs.csv, submission.csv and blend.json."""
    from keras_cxr.blend.files import blend_files

    with _Reported(ValueError):
        report = blend_files(val_paths, labels_csv, test_paths, out_dir, method=method, biases=biases,
                             cv_folds=cv_folds, group_by=group_by, seed=seed)
    for name, score in report["single_models"].items():
        click.echo(f"single model {name}: Macro-F1 {score:.4f} on the labeled rows")
    click.echo(f"{'candidate':<28} in-sample  cross-validated")
    for name, scores in report["candidates"].items():
        mark = " <- chosen" if name == report["chosen"] else ""
        click.echo(f"{name:<28} {scores['in_sample_macro_f1']:9.4f}  {scores['cv_macro_f1']:15.4f}{mark}")
    click.echo(f"{report['test_rows']} rows -> {out_dir}/probs.csv, submission.csv, blend.json")


@main.command(name="pseudo-label")
@click.argument("probs_path", metavar="PROBS.csv", type=click.Path(dir_okay=False))
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), help="One confidence threshold for all classes.")
@click.option("--thresholds", metavar="CLASS=T,...", help="Per-class thresholds, e.g. normal=0.92,bacteria=0.9,...")
@click.option("--max-per-class", type=int, help="Keep at most N rows per class (the most confident).")
@click.option("--weight", default=0.5, show_default=True, type=float, help="sample_weight of the rows in training.")
@click.option("--images", "images_dir", type=click.Path(file_okay=False),
              help="Folder of these images, written as source_dir (default: the recipe's images folder).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
def pseudo_label(probs_path, threshold, thresholds, max_per_class, weight, images_dir, out_path):
    """Turn confident predictions into a weighted training table (recipe data.extra_train)."""
    import os

    from keras_cxr.io import write_csv_atomic
    from keras_cxr.probabilities import read_probabilities
    from keras_cxr.pseudo_label import parse_thresholds, select_pseudo_labels

    if (threshold is None) == (thresholds is None):
        raise _UserError("give exactly one of --threshold T or --thresholds CLASS=T,...")
    _check_output_file(out_path, "--out")
    with _Reported():
        probs = read_probabilities(probs_path)
    try:
        cut = threshold if thresholds is None else parse_thresholds(thresholds, probs.class_names)
        frame = select_pseudo_labels(probs, cut, max_per_class=max_per_class, weight=weight)
    except ValueError as e:
        raise _UserError(_worded(e)) from None
    if images_dir is not None:
        if not os.path.isdir(images_dir):
            raise _UserError(f"--images {images_dir}: folder not found")
        folder = os.path.relpath(os.path.abspath(images_dir), os.path.dirname(os.path.abspath(out_path)))
        frame.insert(1, "source_dir", folder)
    write_csv_atomic(frame, out_path)
    counts = ", ".join(f"{name} {int(frame[name].sum())}" for name in probs.class_names)
    click.echo(f"{len(frame)} of {len(probs)} rows pseudo-labeled at weight {weight:g} ({counts}) -> {out_path}")


if __name__ == "__main__":
    sys.exit(main())
