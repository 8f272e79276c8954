"""`keras-cxr audit`: suspected label errors from out-of-fold probabilities (cleanlab)."""

import os

import click

from keras_cxr.cli._common import Reported, UserError, check_output_file, worded


@click.command()
@click.argument("probs_path", metavar="PROBS.csv", type=click.Path(dir_okay=False))
@click.option("--labels", "labels_csv", required=True, type=click.Path(dir_okay=False),
              help="Labeled table CSV of those rows (e.g. folds.csv of keras-cxr kfold).")
@click.option("--images", "images_dir", type=click.Path(file_okay=False),
              help="Image folder (default: images/ beside the labels CSV, or its source_dir column).")
@click.option("--top", default=24, show_default=True, type=click.IntRange(min=0),
              help="Suspects on the contact sheet suspects.png (0: no sheet).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for suspects.csv, pairs.csv, audit.json and suspects.png.")
def audit(probs_path, labels_csv, images_dir, top, out_dir):
    """Rank suspected label errors in LABELS from out-of-fold probabilities PROBS.csv."""
    from keras_cxr.audit import AuditError, audit_labels, write_audit

    check_output_file(os.path.join(out_dir, "audit.json"), "--out")
    if images_dir is not None and not os.path.isdir(images_dir):
        raise UserError(f"--images {images_dir}: folder not found")
    with Reported(AuditError):
        result = audit_labels(probs_path, labels_csv, images_dir=images_dir)
        try:
            written = write_audit(result, out_dir, top=top)
        except AuditError as e:
            hint = "; give the image folder with --images" if images_dir is None and "image not found" in str(e) else ""
            raise UserError(worded(e) + hint) from None
    for message in result.settings["warnings"]:
        click.echo(f"warning: cleanlab: {message}", err=True)
    click.echo(result.summary())
    click.echo(f"-> {out_dir}: " + ", ".join(os.path.basename(p) for p in written.values()))
