"""What every `keras-cxr` command shares: one-line user errors, flag wording, output checks."""

import click

from keras_cxr.config import ConfigError


class UserError(click.ClickException):
    """An error in the user's input: printed as one line, exit status 2."""

    exit_code = 2


# keras_cxr.explain.METHODS and "auto", spelled out: importing keras_cxr.explain loads pandas and matplotlib.
CAM_METHODS = ("auto", "gradcam", "gradcam++", "integrated-gradients")
cam_method_option = click.option(
    "--method", default="auto", show_default=True, type=click.Choice(CAM_METHODS),
    help="auto: integrated gradients for Swin and DINOv2, Grad-CAM for the CNNs.")

# The library's error fields (its argument names) -> how this command line words them.
FLAGS = {
    "out_dir": "--out", "overwrite": "--overwrite", "resume": "--resume", "assignments": "--set",
    "swa_off": "--set swa.start_epoch=none", "tta": "--tta", "group_by": "--group-by", "val_paths": "--val",
    "test_paths": "--test", "thresholds": "--thresholds", "weight": "--weight", "max_per_class": "--max-per-class",
    "folds_dir": "--folds-dir", "fold": "--fold", "make_folds": "keras-cxr kfold",
    "fold_csvs": "keras-cxr fit --folds-dir DIR --fold K",
    "calibration": "--calibration", "method": "--method", "steps": "--steps", "cv_folds": "--cv-folds", "model": "MODEL", "target": "--class",
    "run_dir": "RUN", "probs": "--probs", "labels": "--labels", "audit": "--audit",
    "competition": "--competition", "raw_dir": "--from", "val_fraction": "--val-fraction",
    "group_regex": "--group-regex", "fetch": "keras-cxr weights fetch", "weights": "--set model.weights=PATH",
}


def worded(error):
    """`error`'s message with its fields named as this command line's flags."""
    from keras_cxr.errors import FieldText

    return error.render(FLAGS) if isinstance(error, FieldText) else str(error)


def user_errors():
    from keras_cxr.data import ImageError, TableError
    from keras_cxr.data.tfds import TfdsError
    from keras_cxr.kfold import FoldError
    from keras_cxr.models.pretrained import WeightsUnavailable
    from keras_cxr.models.torch_weights import CheckpointError
    from keras_cxr.predictor import ModelFileError
    from keras_cxr.probabilities import ProbabilityError
    from keras_cxr.training import RunDirectoryError

    return (ConfigError, TableError, ImageError, RunDirectoryError, FileNotFoundError, ProbabilityError,
            ModelFileError, FoldError, TfdsError, WeightsUnavailable, PermissionError, IsADirectoryError,
            NotADirectoryError, CheckpointError)


class Reported:
    """`with Reported():` turns user errors into one clear line and exit status 2.

    Args:
        *more: further exception types that mean bad input in this block.
        table: the option naming the CSV of this block; a table error
            (which lists every problem) is then told as that option and its
            first problem, with the count of the others.
    """

    def __init__(self, *more, table=None):
        self.more = more
        self.table = table

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        from keras_cxr.data import TableError

        if self.table is not None and isinstance(error, TableError):
            more = len(error.problems) - 1
            raise UserError(f"{self.table} {error.problems[0].strip()}"
                            + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")) from None
        if error is not None and isinstance(error, (*user_errors(), *self.more)):
            raise UserError(worded(error)) from None
        return False


def check_output_file(path, option):
    """Refuse an output file whose folder cannot be created or written, before any work."""
    import os
    import pathlib

    path = pathlib.Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{option} {path}: cannot create its folder ({e.strerror or e})") from None
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"{option} {path}: the folder {path.parent} is not writable")


def accelerate_command():
    """Whether this command runs with `keras_cxr.accel`; sets this process's heap when it does.

    The heap setting (`keras_cxr.accel.keep_freed_memory`) is for the
    command's own process only, and ``KERAS_CXR_HEAP=0`` leaves glibc alone.
    """
    from keras_cxr.accel import keep_freed_memory
    from keras_cxr.accel.switch import switched_off

    accelerate = click.get_current_context().find_root().obj["accelerate"] and not switched_off()
    if accelerate and not switched_off("KERAS_CXR_HEAP"):
        keep_freed_memory()
    return accelerate
