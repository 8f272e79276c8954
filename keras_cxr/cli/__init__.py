"""The `keras-cxr` command line: one click group, its commands in one module per concern."""

import click

from keras_cxr.cli import audit, calibrate, download, explain, export, infer, report, tfds, train, weights
from keras_cxr.cli._common import FLAGS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="keras-cxr")
@click.option("--no-accel", is_flag=True,
              help="Run Keras's own code: no keras_cxr.accel patches, glibc's default heap (also KERAS_CXR_ACCEL=0).")
@click.pass_context
def main(ctx, no_accel):
    """Train, evaluate and ensemble chest X-ray classifiers (Keras 3, torch backend)."""
    ctx.obj = {"accelerate": not no_accel}


for _command in (train.fit, train.list_models, train.kfold, train.oof, infer.predict, infer.evaluate, infer.blend,
                 infer.pseudo_label, calibrate.calibrate, audit.audit, explain.explain,
                 report.report, download.download, export.export, tfds.tfds, weights.weights):
    main.add_command(_command)

__all__ = ["FLAGS", "main"]
