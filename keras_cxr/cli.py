"""The `keras-cxr` command line."""

import sys

import click

from keras_cxr.config import ConfigError


class _UserError(click.ClickException):
    """An error in the user's input: printed as one line, exit status 2."""

    exit_code = 2


def _user_errors():
    from keras_cxr.data import ImageError, TableError
    from keras_cxr.training import RunDirectoryError

    return (ConfigError, TableError, ImageError, RunDirectoryError, FileNotFoundError)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="keras-cxr")
def main():
    """Train, evaluate and ensemble chest X-ray classifiers (Keras 3, torch backend)."""


@main.command()
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with train.csv, val.csv and images/.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run directory (default: the recipe's output).")
@click.option("--epochs", type=int, help="Override recipe.epochs.")
@click.option("--image-size", type=int, help="Override recipe.model.image_size.")
@click.option("--batch-size", type=int, help="Override recipe.batch_size.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override any recipe field, e.g. --set optimizer.learning_rate=3e-4 (repeatable).")
@click.option("--overwrite", is_flag=True, help="Reuse an --out folder that holds a finished run.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def fit(recipe_file, data_dir, out_dir, epochs, image_size, batch_size, assignments, overwrite, quiet):
    """Train the recipe in RECIPE_FILE and write a run directory."""
    from keras_cxr.recipe import apply_overrides, load_recipe

    try:
        recipe = load_recipe(recipe_file)
        flags = []
        if data_dir is not None:
            flags.append(f"data.data_dir={data_dir!r}")
        for key, value in (("epochs", epochs), ("model.image_size", image_size), ("batch_size", batch_size)):
            if value is not None:
                flags.append(f"{key}={value}")
        recipe = apply_overrides(recipe, flags + list(assignments))
        out = out_dir or recipe.output
        from keras_cxr.training import fit_recipe

        metrics = fit_recipe(recipe, out, verbose=0 if quiet else 1, overwrite=overwrite)
    except _user_errors() as e:
        raise _UserError(str(e)) from None
    per_class = " ".join(f"{k}={v['f1']:.3f}" for k, v in metrics["validation"]["per_class"].items())
    click.echo(
        f"val Macro-F1 {metrics['val_macro_f1']:.4f} ({per_class}); "
        + ("best model: SWA" if metrics["best_source"] == "swa" else f"best epoch {metrics['best_epoch']}")
        + f"; {metrics['seconds']:.0f} s; run directory: {out}"
    )


@main.command(name="models")
def list_models():
    """List the model names with their default image size and dropout."""
    from keras_cxr import models

    for name in models.names():
        spec = models.spec(name)
        click.echo(f"{name:14s} {spec.default_image_size:4d} px  dropout {spec.default_dropout:.2f}  {spec.description}")


if __name__ == "__main__":
    sys.exit(main())
