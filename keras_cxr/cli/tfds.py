"""`keras-cxr tfds build`: a Kaggle-format folder as a versioned TFDS dataset (array_record)."""

import os
import time

import click

from keras_cxr.cli._common import Reported


@click.group()
def tfds():
    """TensorFlow Datasets builds of keras-cxr folders (read by index, no tf.data)."""


@tfds.command()
@click.argument("data_dir", metavar="DATA_DIR", type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to build in; the build lands in OUT/keras_cxr_folder/<version>.")
@click.option("--overwrite", is_flag=True, help="Replace a build of the same version in --out.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1),
              help="Threads decoding the images in the check before writing.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def build(data_dir, out_dir, overwrite, workers, quiet):
    """Write DATA_DIR's train/val/test CSVs (whichever exist) and their images as TFDS records.

    Every image is decoded once first; an unreadable one stops the build
    before anything is written. Read a split back with
    keras_cxr.data.tfds.read_tfds_table(OUT, "train").
    """
    from keras_cxr.data.tfds import TfdsError, build_tfds

    start = time.perf_counter()
    with Reported(TfdsError, table=f"DATA_DIR {data_dir}:"):
        builder = build_tfds(data_dir, out_dir, overwrite=overwrite, workers=workers, verbose=0 if quiet else 1)
    seconds = time.perf_counter() - start
    version_dir = os.fspath(builder.data_path)
    size = sum(entry.stat().st_size for entry in os.scandir(version_dir) if entry.is_file())
    splits = ", ".join(f"{name} {split.num_examples:,}" for name, split in builder.info.splits.items())
    click.echo(f"{splits} examples; {size / 1e6:.1f} MB in {seconds:.1f} s -> {version_dir}")
