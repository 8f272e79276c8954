"""`keras-cxr weights fetch` and `weights list`: pretrained weights cached once, for machines without a network."""

import click

from keras_cxr.cli._common import Reported, UserError


@click.group()
def weights():
    """Pretrained weights: fetch them on a connected machine, see which are cached."""


@weights.command()
@click.argument("names", metavar="NAME [NAME ...]", nargs=-1, required=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder to fill (copy it to an offline machine and point KERAS_HOME and KAGGLEHUB_CACHE at "
                   "it) [default: the Keras and kagglehub caches].")
@click.option("--quiet", is_flag=True, help="No download progress.")
def fetch(names, out_dir, quiet):
    """Download the pretrained weights of the model NAMEs (ImageNet files, keras-hub presets)."""
    from keras_cxr.models import pretrained

    with Reported(ValueError):
        fetched = pretrained.fetch(names, out_dir, verbose=0 if quiet else 1)
    for one in fetched:
        click.echo(f"{one.model:14s} {one.path}")
    if out_dir is not None:
        click.echo(f"On the offline machine, copy {out_dir} there and set KERAS_HOME and KAGGLEHUB_CACHE to the copy.")


@weights.command(name="list")
@click.option("--dir", "root", type=click.Path(file_okay=False),
              help="Look in this fetched folder instead of the Keras and kagglehub caches.")
def list_weights(root):
    """Show, for every model name, whether its pretrained weights are cached (usable offline) and where."""
    from keras_cxr import models
    from keras_cxr.models import pretrained

    for name in models.names():
        try:
            needed = pretrained.requirement(name, root)
        except ValueError as e:
            raise UserError(str(e)) from None
        if needed is None:
            click.echo(f"{name:14s} -          no pretrained weights")
        elif needed.available():
            click.echo(f"{name:14s} cached     {needed.path}")
        else:
            click.echo(f"{name:14s} missing    {needed.path} (from {needed.origin})")
