"""`keras-cxr fit`, `models`, `kfold` and `oof`: training runs and their folds."""

import click

from keras_cxr.cli._common import Reported, UserError, accelerate_command, check_output_file, worded


@click.command()
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with train.csv, val.csv and images/.")
@click.option("--tfds-dir", type=click.Path(file_okay=False),
              help="Train from a TFDS build (`keras-cxr tfds build`): its train and val splits.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run directory (default: the recipe's output).")
@click.option("--epochs", type=int, help="Override recipe.epochs.")
@click.option("--image-size", type=int, help="Override recipe.model.image_size.")
@click.option("--batch-size", type=int, help="Override recipe.batch_size.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Override any recipe field, e.g. --set optimizer.learning_rate=3e-4 (repeatable).")
@click.option("--folds-dir", type=click.Path(file_okay=False),
              help="Train on a fold made by `keras-cxr kfold` (with --fold).")
@click.option("--fold", type=int, help="The fold to train on (0-based; with --folds-dir).")
@click.option("--overwrite", is_flag=True, help="Reuse an --out folder that holds a finished or unfinished run.")
@click.option("--resume", is_flag=True,
              help="Continue the unfinished run in --out from its last completed epoch (same recipe and options).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--nproc", type=click.IntRange(min=1),
              help="Train data-parallel with this many processes on this machine (torch.distributed; one per GPU). "
                   "--batch-size stays the global batch.")
@click.option("--sync-bn", is_flag=True,
              help="Data-parallel runs: BatchNorm uses the statistics of the global batch (default: per process, "
                   "averaged at each epoch end).")
def fit(recipe_file, data_dir, tfds_dir, out_dir, epochs, image_size, batch_size, assignments, folds_dir, fold, overwrite,
        resume, quiet, nproc, sync_bn):
    """Train the recipe in RECIPE_FILE and write a run directory.

    Data-parallel: `keras-cxr fit --nproc N ...` on one machine, or
    `torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT ...]
    -m keras_cxr fit ...` on one or more; rank 0 writes the run directory.
    """
    from keras_cxr import distributed

    _check_data_options(data_dir, tfds_dir, folds_dir, fold)
    options = (recipe_file, data_dir, tfds_dir, folds_dir, fold, epochs, image_size, batch_size, assignments)
    if nproc is not None and nproc > 1 and not distributed.requested():
        recipe = _recipe(*options)  # bad options are told once, here, not by every rank
        if recipe.batch_size % nproc:
            raise UserError(f"--batch-size {recipe.batch_size} is the global batch and must divide by --nproc {nproc}")
        _launch(nproc)
        return
    context = distributed.initialize()
    try:
        _fit(_recipe(*options), out_dir, overwrite, resume, quiet, sync_bn, context)
        if context is not None:
            context.wait_for_all()  # the other ranks wait while rank 0 writes the results, then all leave together
    except click.ClickException as e:
        if context is not None and not context.is_main:
            click.get_current_context().exit(e.exit_code)  # rank 0 says the same
        raise
    except Exception as e:
        if context is not None and distributed.context.is_peer_failure(e):
            click.echo(f"rank {context.rank}: stopped, another rank failed ({str(e).splitlines()[0][:200]})", err=True)
            click.get_current_context().exit(distributed.context.PEER_FAILED_EXIT)
        raise
    finally:
        if context is not None:
            distributed.shutdown()
    if context is not None:
        _end_rank()


def _end_rank():
    """A finished rank ends here, as multiprocessing's workers do (`os._exit` once output is flushed).

    Its work is written and the process group left. Skipping the interpreter's
    teardown keeps native threads (gloo, torch, TensorFlow) from being torn
    down out of order, which once turned a finished CI run into a SIGABRT
    ("terminate called without an active exception") on rank 1.
    """
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _check_data_options(data_dir, tfds_dir, folds_dir, fold):
    if (folds_dir is None) != (fold is None):
        raise UserError("--folds-dir and --fold go together")
    if folds_dir is not None and data_dir is not None:
        raise UserError("--data-dir and --folds-dir cannot be combined (the fold CSVs locate their images)")
    if tfds_dir is not None and (data_dir is not None or folds_dir is not None):
        raise UserError("--tfds-dir replaces --data-dir / --folds-dir: give one of them")


def _launch(nproc):
    """Run this very `fit` command as `nproc` ranks (`python -m keras_cxr ... fit ...` under torch's launcher)."""
    from keras_cxr.distributed.launch import LaunchFailed, launch

    ctx = click.get_current_context()
    args = (["--no-accel"] if not ctx.find_root().obj["accelerate"] else []) + [ctx.info_name]
    for param in ctx.command.params:
        value = ctx.params[param.name]
        if param.name == "nproc" or value is None or value is False or value == ():
            continue
        if isinstance(param, click.Argument):
            args.append(str(value))
        elif param.is_flag:
            args.append(param.opts[0])
        else:
            for item in value if param.multiple else [value]:
                args += [param.opts[0], str(item)]
    try:
        launch(args, nproc)
    except LaunchFailed as e:
        if e.failure.exit_code == UserError.exit_code:
            ctx.exit(UserError.exit_code)  # rank 0 has said why
        raise click.ClickException(f"data-parallel run stopped: {e}") from None


def _recipe(recipe_file, data_dir, tfds_dir, folds_dir, fold, epochs, image_size, batch_size, assignments):
    """The recipe in `recipe_file` with the command's options applied."""
    from keras_cxr.recipe import apply_overrides, load_recipe

    with Reported():
        recipe = load_recipe(recipe_file)
        flags = []
        if data_dir is not None:
            flags.append(f"data.data_dir={data_dir!r}")
        if tfds_dir is not None:
            flags += ["data.data_dir=None", f"data.tfds_dir={tfds_dir!r}"]
        if folds_dir is not None:
            from keras_cxr.kfold import fold_csvs

            train_csv, val_csv = fold_csvs(folds_dir, fold)
            flags += [f"data.data_dir={folds_dir!r}", f"data.train_csv={train_csv!r}", f"data.val_csv={val_csv!r}"]
        for key, value in (("epochs", epochs), ("model.image_size", image_size), ("batch_size", batch_size)):
            if value is not None:
                flags.append(f"{key}={value}")
        return apply_overrides(recipe, flags + list(assignments))


def _fit(recipe, out_dir, overwrite, resume, quiet, sync_bn, context):
    from keras_cxr.training import TrainingDiverged, fit_recipe

    out = out_dir or recipe.output
    with Reported():
        try:
            metrics = fit_recipe(recipe, out, verbose=0 if quiet else 1, overwrite=overwrite, resume=resume,
                                 accelerate=accelerate_command(), sync_batch_norm=sync_bn)
        except TrainingDiverged as e:
            raise click.ClickException(str(e)) from None
    if metrics is None:
        return  # not rank 0
    per_class = " ".join(f"{k}={v['f1']:.3f}" for k, v in metrics["validation"]["per_class"].items())
    click.echo(
        f"val Macro-F1 {metrics['val_macro_f1']:.4f} ({per_class}); "
        + ("best model: SWA" if metrics["best_source"] == "swa" else f"best epoch {metrics['best_epoch']}")
        + (f"; bacteria/virus confusion {pair['rate']:.3f}" if (pair := metrics["validation"].get("bacteria_virus_confusion")) else "")
        + f"; {metrics['seconds']:.0f} s; run directory: {out}"
    )


@click.command(name="models")
def list_models():
    """List the model names with their default image size and dropout."""
    from keras_cxr import models

    width = max(map(len, models.names()))
    for name in models.names():
        spec = models.spec(name)
        click.echo(f"{name:{width}s} {spec.default_image_size:4d} px  dropout {spec.default_dropout:.2f}  {spec.description}")


@click.command()
@click.argument("csv_paths", metavar="CSV [CSV ...]", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--folds", default=5, show_default=True, type=int)
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--group-by", metavar="COLUMN", help="Column naming each row's patient (e.g. patient_id).")
@click.option("--group-regex", metavar="REGEX", help="Patient id from the filename (first capture group).")
@click.option("--images", "images_dir", type=click.Path(file_okay=False),
              help="Image folder of the CSVs (default: images/ beside each CSV).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def kfold(csv_paths, folds, seed, group_by, group_regex, images_dir, out_dir):
    """Merge labeled CSVs and split them into patient-grouped, stratified folds."""
    from keras_cxr.kfold import make_folds

    with Reported():
        summary = make_folds(list(csv_paths), out_dir, folds=folds, seed=seed, group_by=group_by,
                             group_regex=group_regex, images_dir=images_dir)
    click.echo(summary.to_string(index=False))
    if summary.attrs.get("warning"):
        click.echo("warning: " + worded(summary.attrs["warning"]), err=True)
    click.echo(f"{folds} folds -> {out_dir} (folds.csv, fold{{k}}_train.csv, fold{{k}}_val.csv, summary.csv)")


@click.command()
@click.argument("run_dirs", metavar="RUN_DIR [RUN_DIR ...]", nargs=-1, required=True,
                type=click.Path(file_okay=False))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
def oof(run_dirs, out_path):
    """Gather the folds' validation probabilities into one out-of-fold file."""
    from keras_cxr.kfold import gather_oof

    check_output_file(out_path, "--out")
    with Reported():
        probs = gather_oof(run_dirs, out_path)
    click.echo(f"{len(probs)} out-of-fold rows from {len(run_dirs)} runs -> {out_path}")
