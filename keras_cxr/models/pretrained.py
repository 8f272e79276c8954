"""Pretrained weights on disk: what `weights="imagenet"` fetches, where it is cached, fetching it early.

Every name with pretrained weights (`spec(name).pretrained`) needs one thing
from the network, once:

- keras.applications families: one ImageNet weights file (the
  `..._notop.h5` that `keras.applications` itself downloads), cached as
  ``$KERAS_HOME/models/<file>`` (``KERAS_HOME`` defaults to ``~/.keras``);
- keras-hub families: the preset's folder from Kaggle, cached by kagglehub
  as ``$KAGGLEHUB_CACHE/models/<owner>/<model>/keras/<variant>/<version>``
  (``KAGGLEHUB_CACHE`` defaults to ``~/.cache/kagglehub``).

`requirement(name)` says which, `ensure(name)` returns the local copy
(fetching it into the cache first if it is missing) or raises
`WeightsUnavailable`, a one-line error with the ways out. Model builders
load the local copy, so a cache folder copied from a connected machine
(`fetch(names, root)`, ``keras-cxr weights fetch``) works offline when
``KERAS_HOME`` and ``KAGGLEHUB_CACHE`` point at it. Downloads check the file
hash Keras publishes; a copied cache is trusted as it is.

Only `requirement` for a keras-hub name imports keras_hub (for its preset
table); nothing here imports it at module import.
"""

import dataclasses
import os
import re
import sys

from keras_cxr.errors import FieldError

APPLICATIONS = "keras.applications"
HUB = "keras-hub"
_APPLICATIONS_LABEL = "keras.applications."
_HUB_LABEL = "keras-hub preset "
_PRESET_FILES = ("config.json",)
_PRESET_WEIGHTS = ("model.weights.h5", "model.weights.json")


class WeightsUnavailable(FieldError):
    """A model's pretrained weights are neither cached nor downloadable (fields: `fetch`, `weights`).

    Attributes:
        requirement: the `Requirement` that could not be met.
    """

    def __init__(self, template, requirement, **wording):
        super().__init__(template, **wording)
        self.requirement = requirement

    def __reduce__(self):
        # Whole, fields included, when a data-parallel run hands rank 0's error to the other ranks.
        return _rebuild_unavailable, (self.template, self.requirement, self.wording)


def _rebuild_unavailable(template, requirement, wording):
    return WeightsUnavailable(template, requirement, **wording)


@dataclasses.dataclass(frozen=True)
class Requirement:
    """What one model name's pretrained weights are, and where they are kept.

    Attributes:
        model: the registry name, e.g. `"effv2_l"`.
        source: `"keras.applications"` (a weights file) or `"keras-hub"`
            (a preset folder).
        origin: the URL of the file, or the preset's Kaggle handle
            (`"kaggle://keras/swin-transformer/keras/<variant>/1"`).
        path: the local copy: the cached file, or the cached preset folder.
        root: the cache folder that holds `path` (what ``KERAS_HOME`` or
            ``KAGGLEHUB_CACHE`` names; copy a fetched folder here).
        variable: the environment variable that moves `root`.
        file_hash: the sha256 Keras publishes for the file (applications), else None.
    """

    model: str
    source: str
    origin: str
    path: str
    root: str
    variable: str
    file_hash: str | None = None

    def available(self):
        """Whether the local copy is there (a file, or a preset folder with its config and weights)."""
        if self.source == APPLICATIONS:
            return os.path.isfile(self.path)
        return all(os.path.isfile(os.path.join(self.path, f)) for f in _PRESET_FILES) and any(
            os.path.isfile(os.path.join(self.path, f)) for f in _PRESET_WEIGHTS
        )


def keras_home():
    """Keras's cache folder: ``KERAS_HOME``, else ``~/.keras`` (``/tmp/.keras`` when home is read-only), as Keras's."""
    if os.environ.get("KERAS_HOME"):
        return os.path.expanduser(os.environ["KERAS_HOME"])
    home = os.path.expanduser("~")
    return os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")


def kagglehub_cache():
    """kagglehub's cache folder: ``KAGGLEHUB_CACHE``, else ``~/.cache/kagglehub``."""
    return os.path.expanduser(os.environ.get("KAGGLEHUB_CACHE") or os.path.join("~", ".cache", "kagglehub"))


def requirement(name, root=None):
    """The pretrained weights of model `name`: origin and local copy, or None if it has none.

    Args:
        name: a registered model name.
        root: the cache folder to place the copy in; None means Keras's
            (applications) or kagglehub's (keras-hub) own cache.

    Returns:
        A `Requirement`, or None for names without pretrained weights.

    Raises:
        ValueError: unknown name, or a `spec(name).pretrained` this module
            cannot read.

    Example:
    ```python
    requirement("effv2_l").origin
    # "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/efficientnetv2-l_notop.h5"
    requirement("swin_t").origin   # "kaggle://keras/swin-transformer/keras/swin_tiny_patch4_window7_224/1"
    ```
    """
    from keras_cxr.models.registry import spec

    label = spec(name).pretrained
    if label is None:
        return None
    if label.startswith(_APPLICATIONS_LABEL):
        return _application_requirement(name, label.removeprefix(_APPLICATIONS_LABEL), root)
    if label.startswith(_HUB_LABEL):
        return _hub_requirement(name, label.removeprefix(_HUB_LABEL), root)
    raise ValueError(f"model {name!r}: cannot tell where its pretrained weights ({label}) come from")


def _application_requirement(name, constructor_name, root):
    """The `_notop.h5` file a `keras.applications` constructor downloads, as it names and checks it."""
    import inspect

    import keras

    constructor = getattr(keras.applications, constructor_name)
    module = sys.modules[inspect.unwrap(constructor).__module__]
    model_name = inspect.signature(constructor).parameters["name"].default
    file_name = model_name + "_notop.h5"
    # The constructors key their hashes by a part of the model name
    # ("-l" for "efficientnetv2-l", "convnext_tiny" for "convnext_tiny").
    hashes = [pair[1] for key, pair in module.WEIGHTS_HASHES.items() if key in model_name]
    root = keras_home() if root is None else os.fspath(root)
    return Requirement(name, APPLICATIONS, module.BASE_WEIGHTS_PATH + file_name,
                       os.path.join(root, "models", file_name), root, "KERAS_HOME",
                       hashes[0] if len(hashes) == 1 else None)


def _hub_requirement(name, preset, root):
    """The Kaggle handle of a keras-hub preset and kagglehub's cache folder for it."""
    import keras_hub  # noqa: F401  - registers the presets
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    handle = BUILTIN_PRESETS[preset]["kaggle_handle"]
    parts = handle.removeprefix("kaggle://").split("/")
    if len(parts) != 5:
        raise ValueError(f"model {name!r}: keras-hub preset {preset!r} has no versioned Kaggle handle ({handle})")
    root = kagglehub_cache() if root is None else os.fspath(root)
    return Requirement(name, HUB, handle, os.path.join(root, "models", *parts), root, "KAGGLEHUB_CACHE")


def _download_file(requirement, verbose):
    """Download an applications weights file into its cache path, checking its hash (Keras's downloader)."""
    from keras.src.utils import file_utils, io_utils

    quiet = not verbose and io_utils.is_interactive_logging_enabled()
    if quiet:
        io_utils.disable_interactive_logging()
    try:
        file_utils.get_file(os.path.basename(requirement.path), requirement.origin, cache_subdir="models",
                            file_hash=requirement.file_hash, cache_dir=requirement.root)
    finally:
        if quiet:
            io_utils.enable_interactive_logging()


def _download_preset(requirement, verbose):
    """Download a keras-hub preset folder into kagglehub's cache layout under `requirement.root`."""
    import kagglehub

    before = os.environ.get("KAGGLEHUB_CACHE")
    os.environ["KAGGLEHUB_CACHE"] = requirement.root
    try:
        kagglehub.model_download(requirement.origin.removeprefix("kaggle://"))
    finally:
        if before is None:
            del os.environ["KAGGLEHUB_CACHE"]
        else:
            os.environ["KAGGLEHUB_CACHE"] = before


def download(requirement, verbose=1):
    """Download `requirement` into its local path (whatever is there already is kept).

    Raises:
        WeightsUnavailable: the download failed, or left no usable copy.
    """
    try:
        if requirement.source == APPLICATIONS:
            _download_file(requirement, verbose)
        else:
            _download_preset(requirement, verbose)
    except (Exception, KeyboardInterrupt) as e:  # urllib, requests and kagglehub raise many types
        if isinstance(e, KeyboardInterrupt):
            raise
        raise unavailable(requirement, _reason(e, requirement.origin)) from None
    if not requirement.available():
        raise unavailable(requirement, "the download left no usable copy")


def _reason(error, origin):
    text = " ".join(str(error).split()) or type(error).__name__
    # Keras words it "URL fetch failure on <origin>: <code> -- <reason>": the origin is named already.
    if (keras_failure := re.fullmatch(rf"URL fetch failure on {re.escape(origin)}: \S+ -- (.+)", text)):
        text = keras_failure.group(1)
    # requests (under kagglehub) nests its cause in a retry message.
    if (resolve := re.search(r"Failed to resolve '([^']+)'", text)):
        return f"cannot resolve {resolve.group(1)}"
    if "Max retries exceeded" in text and (host := re.search(r"host='([^']+)'", text)):
        return f"cannot reach {host.group(1)}"
    return text if len(text) <= 200 else text[:197] + "..."


def unavailable(requirement, reason):
    """The `WeightsUnavailable` for `requirement` whose download failed for `reason`."""
    kind = "ImageNet weights file" if requirement.source == APPLICATIONS else "keras-hub preset"
    name = requirement.model
    return WeightsUnavailable(
        f"model {name!r} needs its pretrained weights ({kind} {requirement.origin}) and cannot fetch them "
        f"({reason}); keras-cxr looks for a local copy at {requirement.path}. Either fetch them on a connected "
        f"machine ({{fetch}} {name} {{out_dir}} DIR), copy DIR here and set {requirement.variable}=DIR "
        f"(or copy its contents into {requirement.root}), or start from a local weights file or preset folder "
        "with {weights}",
        requirement,
        fetch="keras_cxr.models.pretrained.fetch of", out_dir="into", weights="model.weights=PATH",
    )


def ensure(name, verbose=1):
    """The local copy of model `name`'s pretrained weights, fetched into the cache now if missing.

    Args:
        name: a registered model name with pretrained weights.
        verbose: 0 hides Keras's download progress.

    Returns:
        The path of the cached weights file (applications) or preset
        folder (keras-hub).

    Raises:
        WeightsUnavailable: not cached, and the download failed.
        ValueError: `name` has no pretrained weights.

    Example:
    ```python
    ensure("effv2_s")  # "/root/.keras/models/efficientnetv2-s_notop.h5"
    ```
    """
    needed = requirement(name)
    if needed is None:
        raise ValueError(f"model {name!r} has no pretrained weights")
    if not needed.available():
        download(needed, verbose)
    return needed.path


def fetch(names, root=None, verbose=1):
    """Download the pretrained weights of `names` into a cache folder; returns their `Requirement`s.

    A folder fetched here and copied to another machine serves `ensure`
    there when ``KERAS_HOME`` (applications) and ``KAGGLEHUB_CACHE``
    (keras-hub) point at it: both layouts fit in one folder.

    Args:
        names: registered model names, each with pretrained weights.
        root: the folder to fill; None means Keras's and kagglehub's own
            caches.
        verbose: 0 hides the download progress.

    Raises:
        ValueError: a name without pretrained weights (before any download).
        WeightsUnavailable: a download failed (those before it are kept).

    Example:
    ```python
    fetch(["effv2_l", "swin_l"], "/mnt/usb/weights")
    ```
    """
    needed = []
    for name in names:
        one = requirement(name, root)
        if one is None:
            raise ValueError(f"model {name!r} has no pretrained weights to fetch")
        needed.append(one)
    for one in needed:
        if not one.available():
            download(one, verbose)
    return needed
