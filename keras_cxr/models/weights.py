"""Interpretation of the `weights` argument of `keras_cxr.models.build`."""

import dataclasses
import os

NONE = "none"
IMAGENET = "imagenet"
PRESET_DIR = "preset_dir"
FILE = "file"
TORCH = "torch"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's initial weights come from.

    Attributes:
        kind: one of `"none"` (random initialisation), `"imagenet"`,
            `"preset_dir"` (a local keras-hub preset directory), `"file"`
            (a Keras weights file such as `backbone.weights.h5`) or
            `"torch"` (a PyTorch `state_dict` file, converted on loading by
            `keras_cxr.models.torch_weights`).
        path: the local path for `"preset_dir"`, `"file"` and `"torch"`, else None.
    """

    kind: str
    path: str | None = None


def resolve(weights):
    """Turn a user's `weights` argument into a `WeightsSource`.

    Args:
        weights: None, `"imagenet"`, or a path (str or path-like) to a
            keras-hub preset directory, a `.h5` weights file or a PyTorch
            `state_dict` file (`.pt`, `.pth` or `.bin`).

    Returns:
        A `WeightsSource`.

    Raises:
        ValueError: the argument is none of these, or the path does not exist.

    Example:
    ```python
    resolve(None).kind        # "none"
    resolve("imagenet").kind  # "imagenet"
    resolve("xrv.pt").kind    # "torch" (when the file exists)
    ```
    """
    if weights is None:
        return WeightsSource(NONE)
    if isinstance(weights, str) and weights == IMAGENET:
        return WeightsSource(IMAGENET)
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"weights must be None, 'imagenet' or a path, got {weights!r} "
            f"({type(weights).__name__})"
        )
    path = os.fspath(weights)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(
                f"weights={path!r} is a directory without config.json: a preset "
                "directory must be written by keras-hub's `save_to_preset`"
            )
        return WeightsSource(PRESET_DIR, path)
    if os.path.isfile(path):
        if path.endswith(TORCH_SUFFIXES):
            return WeightsSource(TORCH, path)
        if not path.endswith(".h5"):
            raise ValueError(
                f"weights={path!r} is not a Keras weights file: expected a name "
                "ending in '.weights.h5' (or a legacy '.h5'), or a PyTorch "
                "state_dict ending in '.pt', '.pth' or '.bin'"
            )
        return WeightsSource(FILE, path)
    raise ValueError(
        f"weights={path!r} does not exist: expected None, 'imagenet', a keras-hub "
        "preset directory, a '.weights.h5' file or a PyTorch '.pt' state_dict"
    )


def load_file(model, path, model_name):
    """Load a weights file into `model`, naming the model and file on failure."""
    try:
        model.load_weights(path)
    except Exception as e:  # Keras raises several types for mismatched files.
        raise ValueError(
            f"could not load weights file {path!r} into the {model_name!r} "
            f"backbone: {e}"
        ) from e


def unsupported(source, model_name, accepted):
    """The error for a weights kind that a family does not support."""
    return ValueError(
        f"model {model_name!r} does not accept weights of kind {source.kind!r}"
        + (f" ({source.path})" if source.path else "")
        + f"; it accepts: {', '.join(accepted)}"
    )
