"""`keras-cxr report`: one self-contained HTML page about a run."""

import click

from keras_cxr.cli._common import Reported, cam_method_option, check_output_file


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option("--probs", "probs", type=click.Path(dir_okay=False),
              help="Score this probability file instead of the run's validation probabilities (with --labels).")
@click.option("--labels", "labels", type=click.Path(dir_okay=False), help="The labeled table CSV of --probs.")
@click.option("--audit", "audit", type=click.Path(file_okay=False), help="A folder written by `keras-cxr audit`.")
@click.option("--cams", "cams_per_class", default=2, show_default=True, type=click.IntRange(min=0),
              help="Correct and wrong rows mapped per class (0: no class-activation maps).")
@cam_method_option
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="The HTML file to write.")
def report(run_dir, probs, labels, audit, cams_per_class, method, out_path):
    """Write one self-contained HTML page about RUN: curves, scores, calibration, maps, audit, recipe."""
    from keras_cxr.explain import ExplainError
    from keras_cxr.report import ReportError, write_report

    check_output_file(out_path, "--out")
    with Reported(ReportError, ExplainError, table="--labels"):
        write_report(run_dir, out_path, probs=probs, labels=labels, audit=audit, cams_per_class=cams_per_class,
                     method=method)
    click.echo(f"report of {run_dir} -> {out_path}")
