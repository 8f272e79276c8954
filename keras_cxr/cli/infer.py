"""`keras-cxr predict`, `evaluate`, `blend` and `pseudo-label`: using trained models' probabilities."""

import click

from keras_cxr.cli._common import Reported, UserError, accelerate_command, check_output_file, worded


@click.command()
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
@click.option("--calibration", "calibration_path", type=click.Path(),
              help="Calibration to apply: a JSON from `keras-cxr calibrate`, or a run directory (its calibration.json).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def predict(models, csv_path, images_dir, tta, batch_size, out_path, submission, calibration_path, quiet):
    """Average the class probabilities of MODELS (.keras files, run directories or exported .onnx files) on a CSV.

    .onnx files (from `keras-cxr export`) run in onnxruntime; with only .onnx
    files, neither Keras nor torch is imported.
    """
    from keras_cxr.tta import parse_tta

    try:
        parse_tta(tta)
    except ValueError as e:
        raise UserError(worded(e)) from None
    for path, option in ((out_path, "--out"), (submission, "--submission")):
        if path:
            check_output_file(path, option)
    with Reported():
        from keras_cxr.predictor import predict_csv
        from keras_cxr.probabilities import write_probabilities, write_submission

        calibration = None
        if calibration_path:  # scipy and scikit-learn: not needed by .onnx models without calibration
            from keras_cxr.calibration import load_calibration

            calibration = load_calibration(calibration_path)
        probs = predict_csv(models, csv_path, images_dir=images_dir, tta=tta, batch_size=batch_size,
                            verbose=0 if quiet else 1, accelerate=accelerate_command(), calibration=calibration)
        write_probabilities(out_path, probs.filenames, probs.values, probs.class_names)
        if submission:
            write_submission(submission, probs.filenames, probs.values, probs.class_names)
    counts = probs.values.argmax(axis=1)
    mix = ", ".join(f"{name} {int((counts == i).sum())}" for i, name in enumerate(probs.class_names))
    click.echo(f"{len(probs)} rows -> {out_path}" + (f" and {submission}" if submission else "")
               + f"; predicted: {mix}" + (f"; calibrated: {calibration.describe()}" if calibration else ""))


@click.command()
@click.argument("probs_path", metavar="PROBS.csv", type=click.Path(dir_okay=False))
@click.option("--labels", "labels_csv", required=True, type=click.Path(dir_okay=False),
              help="Labeled table CSV with the same filenames.")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), help="Write confusion.png into this folder.")
def evaluate(probs_path, labels_csv, as_json, plot_dir):
    """Macro-F1, per-class scores, confusion matrix and calibration of a probability file."""
    import json

    from keras_cxr.evaluation import evaluate_probabilities, format_summary

    with Reported():
        summary = evaluate_probabilities(probs_path, labels_csv)
    if plot_dir:
        import pathlib

        from keras_cxr.plots import plot_confusion_matrix

        path = pathlib.Path(plot_dir) / "confusion.png"
        check_output_file(path, "--plot")
        plot_confusion_matrix(summary["confusion_matrix"], summary["class_names"], path,
                              title=f"{pathlib.Path(probs_path).name}, Macro-F1 {summary['macro_f1']:.3f}")
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


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


@click.command(cls=_BlendCommand)
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
@click.option("--calibration", "calibration_path", type=click.Path(),
              help="Calibration applied to the blend's probabilities: a JSON from `keras-cxr calibrate` or a run directory.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def blend(method, biases, val_paths, labels_csv, test_paths, cv_folds, group_by, seed, calibration_path, out_dir):
    """Fit an ensemble on labeled rows; write probs.csv, submission.csv and blend.json."""
    from keras_cxr.blend.files import blend_files

    with Reported(ValueError):
        report = blend_files(val_paths, labels_csv, test_paths, out_dir, method=method, biases=biases,
                             cv_folds=cv_folds, group_by=group_by, seed=seed, calibration=calibration_path)
    for name, score in report["single_models"].items():
        click.echo(f"single model {name}: Macro-F1 {score:.4f} on the labeled rows")
    click.echo(f"{'candidate':<28} in-sample  cross-validated")
    for name, scores in report["candidates"].items():
        mark = " <- chosen" if name == report["chosen"] else ""
        click.echo(f"{name:<28} {scores['in_sample_macro_f1']:9.4f}  {scores['cv_macro_f1']:15.4f}{mark}")
    if "calibration" in report:
        click.echo(f"calibrated with {report['calibration']['file']} ({report['calibration']['method']} scaling)")
    click.echo(f"{report['test_rows']} rows -> {out_dir}/probs.csv, submission.csv, blend.json")


@click.command(name="pseudo-label")
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
        raise UserError("give exactly one of --threshold T or --thresholds CLASS=T,...")
    check_output_file(out_path, "--out")
    with Reported():
        probs = read_probabilities(probs_path)
    try:
        cut = threshold if thresholds is None else parse_thresholds(thresholds, probs.class_names)
        frame = select_pseudo_labels(probs, cut, max_per_class=max_per_class, weight=weight)
    except ValueError as e:
        raise UserError(worded(e)) from None
    if images_dir is not None:
        if not os.path.isdir(images_dir):
            raise UserError(f"--images {images_dir}: folder not found")
        folder = os.path.relpath(os.path.abspath(images_dir), os.path.dirname(os.path.abspath(out_path)))
        frame.insert(1, "source_dir", folder)
    write_csv_atomic(frame, out_path)
    counts = ", ".join(f"{name} {int(frame[name].sum())}" for name in probs.class_names)
    click.echo(f"{len(frame)} of {len(probs)} rows pseudo-labeled at weight {weight:g} ({counts}) -> {out_path}")
