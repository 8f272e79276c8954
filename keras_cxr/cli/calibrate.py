"""`keras-cxr calibrate`: fit temperature (or vector) scaling on labeled rows."""

import pathlib

import click

from keras_cxr.cli._common import Reported, UserError, check_output_file


def _score_line(name, scores):
    if scores is None:
        return f"{name:<24} {'-':>7}  {'-':>7}  {'-':>7}"
    return f"{name:<24} {scores['ece']:7.4f}  {scores['brier']:7.4f}  {scores['nll']:7.4f}"


@click.command()
@click.argument("probs_path", metavar="PROBS.csv", type=click.Path(dir_okay=False))
@click.option("--labels", "labels_csv", required=True, type=click.Path(dir_okay=False),
              help="Labeled table CSV of the same rows (validation or out-of-fold; never rows to predict).")
@click.option("--method", default="temperature", show_default=True, type=click.Choice(["temperature", "vector"]),
              help="temperature: one T, never changes the argmax; vector: a weight and bias per class, may change it.")
@click.option("--cv-folds", default=5, show_default=True, type=click.IntRange(min=0),
              help="Stratified parts for the cross-validated estimate (0: none).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the cross-validation parts.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Calibration JSON to write (give it to predict or blend with --calibration).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Reliability diagram PNG (default: beside --out, e.g. T.reliability.png).")
def calibrate(probs_path, labels_csv, method, cv_folds, seed, out_path, plot_path):
    """Fit temperature scaling on PROBS.csv's labeled rows; print ECE, Brier and NLL before and after."""
    from keras_cxr.calibration import fit_calibration, labeled_rows
    from keras_cxr.plots import plot_reliability
    from keras_cxr.probabilities import read_probabilities

    if cv_folds == 1:
        raise UserError("--cv-folds 1: give 2 or more parts, or 0 for no cross-validated estimate")
    plot_path = plot_path or str(pathlib.Path(out_path).with_suffix(".reliability.png"))
    check_output_file(out_path, "--out")
    check_output_file(plot_path, "--plot")
    with Reported(table="--labels"):
        probs = read_probabilities(probs_path)
        calibration, report = fit_calibration(probs, labels_csv, method=method, cv_folds=cv_folds, seed=seed)
        calibration.save(out_path, report)
        labeled, y, _ = labeled_rows(probs, labels_csv)
        values = labeled.values
        plot_reliability(y, values, plot_path, calibrated=calibration.apply(values),
                         labels=("before calibration", f"after ({calibration.describe()}, in-sample)"),
                         title=pathlib.Path(probs_path).name)
    argmax = ("argmax unchanged" if calibration.keeps_argmax
              else f"argmax changed on {report['argmax_changed']} of {report['rows']} rows")
    click.echo(f"{method} scaling on {report['rows']} rows of {probs_path}: {calibration.describe()} ({argmax})")
    click.echo(f"{'':<24} {'ECE':>7}  {'Brier':>7}  {'NLL':>7}")
    click.echo(_score_line("before", report["before"]))
    click.echo(_score_line("after, in-sample", report["in_sample"]))
    cv_name = f"after, {report['cv_folds']}-fold CV" if report["cv_folds"] else "after, cross-validated"
    click.echo(_score_line(cv_name, report["cross_validated"])
               + (f"  ({report['cv_note']})" if report.get("cv_note") else ""))
    click.echo(f"-> {out_path}, {plot_path}")

