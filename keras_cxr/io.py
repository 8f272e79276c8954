"""Atomic artifact writing.

Every file keras-cxr produces (checkpoints, CSVs, JSON reports) is written to
a temporary file in the destination folder, flushed and fsync'ed, then moved
over the destination with `os.replace`. A crash or an exception mid-write
leaves the previous file untouched and no partial file behind.

Example:

```python
from keras_cxr.io import atomic_write, write_json_atomic

with atomic_write("runs/exp1/notes.txt") as f:
    f.write("hello\\n")
write_json_atomic({"macro_f1": 0.87}, "runs/exp1/metrics.json")
```
"""

import contextlib
import json
import os
import sys
import tempfile


def _fsync_dir(folder):
    """Persist the directory entry after a rename (best effort, POSIX only)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _split(path):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    return path, folder, os.path.basename(path)


@contextlib.contextmanager
def atomic_write(path, mode="w", encoding=None, newline=None):
    """Open a temporary file that replaces `path` when the block succeeds.

    The temporary file lives in the same folder as `path` (so `os.replace` is
    atomic), is flushed and fsync'ed before the replace, and is deleted if the
    block raises, in which case an existing `path` is left unchanged. Missing
    parent folders are created.

    Args:
        path: destination file path (str or path-like).
        mode: `"w"` (text, default) or `"wb"` (binary). Appending modes are
            rejected: an atomic write always produces the whole file.
        encoding: text encoding; defaults to `"utf-8"` in text mode.
        newline: passed to `open` in text mode.

    Yields:
        The open file object.
    """
    if mode not in ("w", "wb", "wt", "w+", "wb+", "w+b"):
        raise ValueError(f"atomic_write supports write modes only ('w' or 'wb'), got {mode!r}")
    path, folder, name = _split(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    with _replace_on_success(tmp, path, folder):
        if "b" in mode:
            f = os.fdopen(fd, mode)
        else:
            f = os.fdopen(fd, mode, encoding=encoding or "utf-8", newline=newline)
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def _replace_on_success(tmp, path, folder):
    """Move the written `tmp` over `path` when the block succeeds.

    The block writes and fsyncs `tmp`. Then `tmp` gets `path`'s permissions
    and replaces it, and their `folder` is fsync'ed. If the block or the
    replace raises, `tmp` is deleted and `path` is left as it was.
    """
    try:
        yield
        _copy_mode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def _copy_mode(path, tmp):
    """Give the new file the old file's permissions, or the umask default.

    `mkstemp` creates files readable by the owner only; artifacts should get
    the same permissions as a plain `open(path, "w")` would give them.
    """
    try:
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)


@contextlib.contextmanager
def tensorflow_left_unimported():
    """Within: Keras's "is TensorFlow installed?" answers no unless TensorFlow is already imported.

    Keras's serializer asks `module_utils.tensorflow.available` for every
    object it writes, only to test `isinstance(obj, tf.TensorShape)`, and the
    question imports TensorFlow (installed beside keras-hub): 3 s and ~460 MB
    of memory in a torch-only process, once per `keras-cxr fit`. Before
    TensorFlow is imported no object can be one of its types, so what is
    saved does not change. Keras's own check runs when TensorFlow is already
    imported, when Keras has already answered, or when its lazy module does
    not look as expected (another Keras version).
    """
    try:
        from keras.src.utils import module_utils

        lazy = module_utils.tensorflow
    except (ImportError, AttributeError):
        lazy = None
    unanswered = lazy is not None and getattr(lazy, "_available", True) is None and getattr(lazy, "module", True) is None
    if "tensorflow" in sys.modules or not unanswered:
        yield
        return
    lazy._available = False
    try:
        yield
    finally:
        lazy._available = None


def save_model_atomic(model, path):
    """Save a Keras model to `path` (a `.keras` file) atomically.

    The model is saved to `<dir>/.<name>.tmp.keras` and then moved over
    `path`; on failure the temporary file is removed and any previous `path`
    is kept. Saving does not import TensorFlow (`tensorflow_left_unimported`).

    Args:
        model: a `keras.Model`.
        path: destination, must end in `.keras`.

    Returns:
        The destination path as a string.
    """
    with tensorflow_left_unimported():
        return _save_atomic(model.save, path, ".keras", "save_model_atomic")


def save_weights_atomic(model, path):
    """Save a Keras model's weights to `path` (a `.weights.h5` file) atomically.

    Written to `<dir>/.<name>.tmp.weights.h5`, then moved over `path`; on
    failure the temporary file is removed and any previous `path` is kept.

    Args:
        model: a `keras.Model` (or layer).
        path: destination, must end in `.weights.h5`.

    Returns:
        The destination path as a string.

    Example:
    ```python
    save_weights_atomic(model.get_layer("backbone"), "densenet121_xrv.weights.h5")
    ```
    """
    return _save_atomic(model.save_weights, path, ".weights.h5", "save_weights_atomic")


def _save_atomic(save, path, suffix, caller):
    """`save(tmp)` beside `path` (which must end in `suffix`), fsync, then move it over `path`."""
    path, folder, name = _split(path)
    if not name.endswith(suffix):
        raise ValueError(f"{caller} expects a path ending in '{suffix}', got {path!r}")
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name[: -len(suffix)]}.tmp{suffix}")
    with _replace_on_success(tmp, path, folder):
        save(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    return path


def write_csv_atomic(df, path, index=False, **to_csv_kwargs):
    """Write a pandas DataFrame to CSV atomically (`index=False` by default).

    Args:
        df: a `pandas.DataFrame`.
        path: destination file.
        index: whether to write the row index (default `False`).
        **to_csv_kwargs: forwarded to `DataFrame.to_csv`.
    """
    with atomic_write(path, "w", newline="") as f:
        df.to_csv(f, index=index, **to_csv_kwargs)
    return os.fspath(path)


def _json_default(obj):
    # numpy scalars and arrays, without importing numpy at module import.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def write_json_atomic(obj, path, indent=2, sort_keys=False):
    """Write `obj` as JSON atomically; numpy scalars/arrays and paths are converted.

    Args:
        obj: a JSON-serialisable object.
        path: destination file.
        indent: JSON indentation (default 2).
        sort_keys: sort dictionary keys (default `False`).
    """
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=sort_keys, default=_json_default)
        f.write("\n")
    return os.fspath(path)
