"""Turning the patches on and off: `enable`, `disable`, `enabled`, `disabled`, and their status."""

import contextlib
import importlib
import os
import threading

from keras_cxr.accel import versions
from keras_cxr.accel.patches import PATCHES

_OFF = ("0", "false", "off", "no")
_SKIPPED = "skipped: "
_lock = threading.RLock()
_state = {}  # patch name -> "on", "waiting" (for keras_hub) or "skipped: <reason>", while enabled
_active = False
_warned = set()  # the skip sets already warned about in this process


def switched_off(variable="KERAS_CXR_ACCEL"):
    """Whether the environment turns `variable` off (0/false/off/no)."""
    return os.environ.get(variable, "1").strip().lower() in _OFF


def _module(patch):
    return importlib.import_module(patch.module)


def _probe(module):
    try:
        return module.probe()
    except Exception as e:  # noqa: BLE001  - a probe that cannot even run means the target changed
        return f"probe failed: {type(e).__name__}: {e}"


def _install(patch):
    """Install `patch` unless its versions or probe say no; returns its new state."""
    module = _module(patch)
    reason = versions.untested(patch)
    if reason is None:
        if hasattr(module, "ready") and not module.ready():  # a library imported later (keras-hub's Swin)
            return "waiting"
        reason = _probe(module)
    if reason is not None:
        return _SKIPPED + reason
    module.install()
    return "on"


def _apply(patches):
    """Install `patches`, record their states, and warn once about those skipped."""
    skipped = {}
    for patch in patches:
        _state[patch.name] = _install(patch)
        if _state[patch.name].startswith(_SKIPPED):
            skipped[patch.name] = _state[patch.name][len(_SKIPPED):]
    _warn(skipped)


def enable():
    """Apply every patch whose versions are tested and whose probe passes.

    Process-wide until `disable()`: while enabled, every Keras model in the
    process uses the fast kernels (same results to float32 rounding), and
    marked keras-cxr models also take the fast graph and trace paths.
    Patches outside their tested versions, or whose target no longer looks as
    expected, are skipped with one `AccelWarning` naming them and the
    versions; Keras's own code runs for them. Calling it again is a no-op
    (apart from installing the Swin patch once keras_hub is imported).
    ``KERAS_CXR_ACCEL=0`` in the environment makes it do nothing.

    Returns:
        `status()`.
    """
    global _active
    with _lock:
        if switched_off():
            return status()
        if not _active:
            _apply(PATCHES)
            _active = True
        else:
            install_waiting()
        return status()


def install_waiting():
    """Install the patches that were waiting for their library (keras-hub's Swin) once it is imported."""
    with _lock:
        _apply([patch for patch in PATCHES if _state.get(patch.name) == "waiting"])


def _warn(skipped):
    key = frozenset(skipped.items())
    if skipped and key not in _warned:
        _warned.add(key)
        versions.warn_skipped(skipped)


def disable():
    """Restore Keras's, keras-hub's and torch's own code (a no-op when not enabled)."""
    global _active
    with _lock:
        for patch in reversed(PATCHES):
            if _state.get(patch.name) == "on":
                _module(patch).uninstall()
        _state.clear()
        _active = False


@contextlib.contextmanager
def enabled():
    """`with enabled():` runs the block with the patches on, then restores what was there.

    Inside an outer `enable()` or `enabled()` it changes nothing, so library
    functions can use it freely.

    Example:

    ```python
    with keras_cxr.accel.enabled():
        model = keras_cxr.models.build("cxr_resnet", image_size=128)
        model.fit(...)
    ```
    """
    with _lock:
        outer = _active
        if not outer:
            enable()
    try:
        yield status()
    finally:
        if not outer:
            disable()


@contextlib.contextmanager
def disabled():
    """`with disabled():` runs the block with Keras's own code, then restores what was there.

    The mirror of `enabled`: inside an outer `enable()` or `enabled()` it
    takes the patches off for the block and puts them back after (also when
    the block raises), so the outer scope goes on as before; with nothing on
    it changes nothing. For work that must see Keras's own operations, such
    as tracing a model for export.

    Example:

    ```python
    with keras_cxr.accel.disabled():
        torch.onnx.export(module, example, "model.onnx")
    ```
    """
    global _active
    with _lock:
        outer = _active
        if outer:
            disable()
    try:
        yield status()
    finally:
        if outer:
            with _lock:  # back as the outer scope had it (even if the environment switched it off meanwhile)
                _apply(PATCHES)
                _active = True


def active(name=None):
    """Whether acceleration is enabled, or (with `name`) whether that patch is on."""
    return _active if name is None else _state.get(name) == "on"


def status():
    """Patch name -> "on", "off", "waiting" (for keras_hub) or "skipped: <reason>"."""
    return {patch.name: _state.get(patch.name, "off") for patch in PATCHES}
