"""`keras_cxr.accel`: nothing patched on import, explicit on/off, scoped, version-gated."""

import subprocess
import sys
import warnings

import keras
import pytest

from keras_cxr import accel
from keras_cxr.accel import dense, patches, switch, versions

pytestmark = pytest.mark.skipif(switch.switched_off(), reason="KERAS_CXR_ACCEL=0: acceleration is off for this run")


def _keras_own():
    """The Keras objects the patches replace, as Keras defines them."""
    from keras.src.backend.torch import nn as torch_nn

    return {"Dense.call": keras.layers.Dense.call, "BatchNormalization.call": keras.layers.BatchNormalization.call,
            "Layer.__call__": keras.layers.Layer.__call__, "conv": torch_nn.conv}


IMPORT_EVERYTHING = """
import sys
import keras_cxr
assert "keras" not in sys.modules and "torch" not in sys.modules, "import keras_cxr loaded keras or torch"
import keras_cxr.accel, keras_cxr.models
import keras_cxr.training, keras_cxr.predictor, keras_cxr.cli, keras_cxr.callbacks
import keras
from keras.src.backend.torch import nn as torch_nn
owners = [keras.layers.Dense.call, keras.layers.BatchNormalization.call, keras.layers.Layer.__call__, torch_nn.conv]
print(" ".join(f.__module__ for f in owners))
"""


@pytest.mark.slow
def test_importing_keras_cxr_patches_nothing():
    run = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["keras.src.layers.core.dense", "keras.src.layers.normalization.batch_normalization",
                                  "keras.src.layers.layer", "keras.src.backend.torch.nn"]


def test_enable_and_disable_swap_keras_code_and_back():
    original = _keras_own()
    assert not accel.active()
    status = accel.enable()
    try:
        assert accel.active() and status["dense"] == status["conv"] == status["graph"] == "on"
        assert keras.layers.Dense.call is dense._dense_call
        assert keras.layers.Layer.__call__ is not original["Layer.__call__"]
        assert accel.enable() == status  # a second call changes nothing
    finally:
        accel.disable()
    assert _keras_own() == original
    assert not accel.active() and set(accel.status().values()) == {"off"}


def test_enabled_scope_restores_and_nests():
    original = _keras_own()
    with accel.enabled():
        with accel.enabled():
            pass
        assert accel.active("dense")  # the inner scope left the outer one's patches on
    assert _keras_own() == original
    accel.enable()
    try:
        with accel.enabled():
            pass
        assert accel.active("dense")  # a scope inside enable() leaves it on
    finally:
        accel.disable()


def test_disabled_inside_enabled_takes_the_patches_off_and_puts_them_back():
    original = _keras_own()
    with accel.enabled():
        on = accel.status()
        with accel.disabled() as inside:
            assert _keras_own() == original
            assert not accel.active() and set(inside.values()) == {"off"}
            with accel.disabled():  # nested: still off, and the outer disabled() is not turned back on
                pass
            assert _keras_own() == original and not accel.active()
        assert accel.active() and accel.status() == on
        assert keras.layers.Dense.call is dense._dense_call
    assert _keras_own() == original and not accel.active()  # the outer enabled() still closes normally
    accel.enable()
    try:
        with accel.disabled():
            assert _keras_own() == original
        assert accel.active("dense")  # an enable() outside is back on too
    finally:
        accel.disable()


def test_disabled_with_nothing_on_changes_nothing(monkeypatch):
    original = _keras_own()
    monkeypatch.setattr(switch, "_apply", lambda patches: pytest.fail("disabled() installed patches"))
    with accel.disabled() as inside:
        assert set(inside.values()) == {"off"} and _keras_own() == original
    assert not accel.active() and set(accel.status().values()) == {"off"} and _keras_own() == original


def test_disabled_restores_when_the_block_raises():
    original = _keras_own()
    with accel.enabled():
        on = accel.status()
        with pytest.raises(RuntimeError, match="inside"):
            with accel.disabled():
                raise RuntimeError("inside")
        assert accel.active() and accel.status() == on
    assert _keras_own() == original
    with pytest.raises(RuntimeError, match="inside"):
        with accel.disabled():
            raise RuntimeError("inside")
    assert not accel.active() and _keras_own() == original


def test_a_patch_outside_its_tested_versions_is_skipped_with_one_warning(monkeypatch):
    untested = versions.Patch("dense", "keras_cxr.accel.dense", ("keras.layers.Dense.call",),
                              {"keras": ("3.0", "3.1")}, "test")
    monkeypatch.setattr(switch, "PATCHES", tuple(untested if p.name == "dense" else p for p in patches.PATCHES))
    monkeypatch.setattr(switch, "_warned", set())
    original = keras.layers.Dense.call
    with pytest.warns(versions.AccelWarning) as caught:
        with accel.enabled() as status:
            assert keras.layers.Dense.call is original  # Keras's own code runs
            assert accel.active("conv")  # the others are on
    assert status["dense"] == f"skipped: tested on keras >=3.0,<3.1; this is keras {keras.__version__}"
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "dense (tested on keras >=3.0,<3.1; this is keras " in message and "conv" not in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with accel.enabled():  # the same skip is not warned about twice
            pass


def test_a_failing_probe_skips_its_patch(monkeypatch):
    monkeypatch.setattr(dense, "probe", lambda: "Dense.call takes ['self', 'x']")
    monkeypatch.setattr(switch, "_warned", set())
    original = keras.layers.Dense.call
    with pytest.warns(versions.AccelWarning, match=r"dense \(Dense.call takes \['self', 'x'\]\)"):
        with accel.enabled() as status:
            assert keras.layers.Dense.call is original
    assert status["dense"].startswith("skipped: Dense.call takes")


def test_a_probe_that_raises_skips_its_patch(monkeypatch):
    def broken():
        raise AttributeError("'BatchNormalization' object has no attribute 'renorm'")

    monkeypatch.setattr(dense, "probe", broken)
    monkeypatch.setattr(switch, "_warned", set())
    with pytest.warns(versions.AccelWarning, match="probe failed: AttributeError"):
        with accel.enabled() as status:
            pass
    assert "renorm" in status["dense"]


def test_environment_turns_it_off(monkeypatch):
    monkeypatch.setenv("KERAS_CXR_ACCEL", "0")
    original = _keras_own()
    with accel.enabled() as status:
        assert not accel.active() and _keras_own() == original
    assert set(status.values()) == {"off"}


def test_every_patch_has_a_module_with_probe_install_uninstall():
    import importlib

    for patch in patches.PATCHES:
        module = importlib.import_module(patch.module)
        assert all(callable(getattr(module, f)) for f in ("probe", "install", "uninstall")), patch.name
        assert module.probe() is None, patch.name  # the installed versions are the tested ones
        outside = versions.untested(patch)
        if patch.tested["keras"] == patches.KERAS_FOR_HUB and keras_before_3_15():
            assert outside, patch.name  # keras-hub's patches are tested on Keras 3.15 only
        else:
            assert outside is None, patch.name


def keras_before_3_15():
    return versions.parse_version(versions.installed_version("keras")) < (3, 15)


def test_fit_recipe_and_predict_csv_turn_it_on_for_their_work_only(monkeypatch):
    from keras_cxr import predictor, training

    seen = []
    monkeypatch.setattr(training, "_fit_recipe", lambda *args: seen.append(accel.active("dense")))
    monkeypatch.setattr(predictor, "_predict_csv", lambda *args: seen.append(accel.active("dense")))
    training.fit_recipe(None, "unused")
    predictor.predict_csv(["unused.keras"], "unused.csv")
    training.fit_recipe(None, "unused", accelerate=False)
    predictor.predict_csv(["unused.keras"], "unused.csv", accelerate=False)
    predictor.predict_csv(["exported.onnx"], "unused.csv")  # onnxruntime only: nothing to accelerate
    assert seen == [True, True, False, False, False]
    assert not accel.active() and set(accel.status().values()) == {"off"}
