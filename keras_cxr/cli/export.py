"""`keras-cxr export`: a trained model as an ONNX, TorchScript or self-contained `.keras` file."""

import click

from keras_cxr.cli._common import FLAGS, Reported, UserError, check_output_file

# How this command words the export's fields (`keras_cxr.export.ExportError`).
_NAMES = {**FLAGS, "out": "--out", "format": "--format"}


@click.command()
@click.argument("model", type=click.Path())
@click.option("--format", "format_", required=True, type=click.Choice(["onnx", "torchscript", "keras"]),
              help="onnx (.onnx, runs in onnxruntime without torch), torchscript (.pt) or keras (.keras).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="File to write: .onnx, .pt or .keras, as --format says.")
@click.option("--calibration", "calibration_path", type=click.Path(),
              help="Calibration to fold in: a JSON from `keras-cxr calibrate`, or a run directory (its calibration.json).")
def export(model, format_, out_path, calibration_path):
    """Export MODEL (a .keras file or run directory) with its class names and image size inside.

    The exported model takes uint8 RGB images (N, S, S, 3), resized to its
    image size S as keras-cxr resizes them (Pillow bilinear, straight to the
    square), and returns float32 probabilities (N, C), calibrated when
    --calibration is given.
    """
    from keras_cxr.export import ExportError, export_model

    check_output_file(out_path, "--out")
    try:
        with Reported():
            meta = export_model(model, out_path, format_, calibration=calibration_path)
    except ExportError as e:
        raise UserError(e.render(_NAMES)) from None
    calibrated = f"; calibrated: {calibration_path}" if calibration_path else ""
    click.echo(f"{meta['source']} -> {out_path} ({format_}, input uint8 (N, {meta['image_size']}, "
               f"{meta['image_size']}, 3), output {len(meta['class_names'])} probabilities: "
               f"{', '.join(meta['class_names'])}){calibrated}")
