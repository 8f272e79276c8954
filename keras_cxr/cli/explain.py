"""`keras-cxr explain`: class-activation maps of a trained model on the rows of a CSV."""

import os

import click

from keras_cxr.cli._common import Reported, UserError, cam_method_option


@click.command()
@click.argument("model", type=click.Path())
@click.option("--csv", "csv_path", required=True, type=click.Path(dir_okay=False),
              help="Table CSV of the images to explain (labels, if any, are shown as the true class).")
@click.option("--images", "images_dir", type=click.Path(file_okay=False),
              help="Image folder (default: images/ beside the CSV).")
@click.option("--class", "target_class", metavar="NAME",
              help="Explain this class for every image (default: each image's predicted class).")
@cam_method_option
@click.option("--steps", default=16, show_default=True, type=click.IntRange(min=1),
              help="Path points of integrated gradients (each one a forward and backward pass).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N rows.")
@click.option("--sheet", default=16, show_default=True, type=click.IntRange(min=0),
              help="Images on contact_sheet.png (0: none).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for maps/, explain.csv, contact_sheet.png and explain.json.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def explain(model, csv_path, images_dir, target_class, method, steps, limit, sheet, batch_size, out_dir, quiet):
    """Class-activation maps of MODEL (.keras file or run directory) for the images of a CSV."""
    from keras_cxr.explain import ExplainError, explain_csv

    if images_dir is not None and not os.path.isdir(images_dir):
        raise UserError(f"--images {images_dir}: folder not found")
    with Reported(ExplainError, table="--csv"):
        frame = explain_csv(model, csv_path, out_dir, images_dir=images_dir, target_class=target_class,
                            method=method, limit=limit, sheet=sheet, batch_size=batch_size,
                            verbose=0 if quiet else 1, steps=steps)
    labeled = frame["true"].astype(bool)
    correct = (frame["true"] == frame["predicted"])[labeled]
    accuracy = f"; {int(correct.sum())} of {int(labeled.sum())} predicted correctly" if labeled.any() else ""
    click.echo(f"{len(frame)} maps ({frame.attrs['method']}) -> {out_dir}/maps/, explain.csv"
               + (", contact_sheet.png" if sheet else "") + accuracy)
