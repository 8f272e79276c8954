"""`keras-cxr weights fetch` / `list` / `convert`: pretrained weights cached once for offline machines, PyTorch checkpoints converted."""

import click

from keras_cxr.cli._common import Reported, UserError, check_output_file


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

    width = max(map(len, models.names()))
    for name in models.names():
        try:
            needed = pretrained.requirement(name, root)
        except ValueError as e:
            raise UserError(str(e)) from None
        if needed is None:
            click.echo(f"{name:{width}s} -          no pretrained weights")
        elif needed.available():
            click.echo(f"{name:{width}s} cached     {needed.path}")
        else:
            click.echo(f"{name:{width}s} missing    {needed.path} (from {needed.origin})")


@weights.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--model", "model_name", required=True,
              help="The keras-cxr model it is for: densenet121 (torchvision, RGB), densenet121_xrv "
                   "(torchxrayvision, 1 gray channel), effv2_b0 ... effv2_b3 / effv2_s / effv2_m / effv2_l (timm "
                   "tf_efficientnetv2_b0 ... _l), convnext_* or swin_* (timm); see keras-cxr models.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="The Keras weights file to write (FILE.weights.h5); use it with --set model.weights=FILE.weights.h5.")
def convert(checkpoint, model_name, out_path):
    """Convert a PyTorch state_dict CHECKPOINT (.pt, .pth, .bin) into a keras-cxr backbone weights file.

    The checkpoint's classifier is dropped (keras-cxr trains its own head for your classes); any other key
    that does not fit is named in the error.
    """
    if not out_path.endswith(".weights.h5"):
        raise UserError(f"--out {out_path}: the file name must end in .weights.h5")
    check_output_file(out_path, "--out")
    from keras_cxr import models
    from keras_cxr.io import save_weights_atomic
    from keras_cxr.models import torch_weights

    with Reported(ValueError):
        spec = models.spec(model_name)
        if spec.family not in torch_weights.FAMILIES:
            convertible = [n for n in models.names() if models.spec(n).family in torch_weights.FAMILIES]
            raise UserError(f"--model {model_name}: keras-cxr converts PyTorch checkpoints for "
                            f"{', '.join(convertible)}")
        backbone = models.build(model_name).get_layer("backbone")
        conversion = torch_weights.load_torch_state_dict(backbone, checkpoint, spec.family)
    save_weights_atomic(backbone, out_path)
    click.echo(f"{checkpoint} -> {out_path}: {conversion.summary()}")
    click.echo(f"Fine-tune from it: keras-cxr fit RECIPE --set model.name={model_name} "
               f"--set model.weights={out_path}")
