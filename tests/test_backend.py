"""`import keras_cxr` pins the torch backend, or says clearly why it cannot."""

import os
import subprocess
import sys

import pytest


def run_python(code, **env_changes):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_selects_torch_when_unset():
    result = run_python("import keras_cxr, keras; print(keras.backend.backend())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch"


def test_refuses_another_requested_backend():
    result = run_python("import keras_cxr", KERAS_BACKEND="jax")
    assert result.returncode == 1
    assert "keras_cxr runs on the torch backend, but KERAS_BACKEND='jax'" in result.stderr


def test_refuses_keras_already_loaded_with_another_backend():
    # A stand-in for Keras already imported with the JAX backend (JAX is not installed here).
    code = (
        "import sys, types\n"
        "fake = types.ModuleType('keras')\n"
        "fake.backend = types.SimpleNamespace(backend=lambda: 'jax')\n"
        "sys.modules['keras'] = fake\n"
        "import keras_cxr\n"
    )
    result = run_python(code)
    assert result.returncode == 1
    assert "Keras is already loaded with the 'jax' backend; keras_cxr needs 'torch'" in result.stderr


@pytest.mark.slow
def test_keras_loaded_with_torch_first_is_fine():
    result = run_python("import keras; import keras_cxr; print('ok')", KERAS_BACKEND="torch")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
