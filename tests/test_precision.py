import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from keras_cxr.precision import resolve_precision  # noqa: E402
from keras_cxr.precision import set_precision  # noqa: E402


@pytest.mark.parametrize("name", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_explicit_names_resolve_to_themselves(name):
    assert resolve_precision(name) == name


def test_auto_follows_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_precision("auto") == "mixed_float16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto") == "float32"


@pytest.mark.parametrize("bad", ["fp16", "float16", "bfloat16", "", None, "Float32"])
def test_unknown_names_are_rejected(bad):
    with pytest.raises(ValueError, match="Unknown precision"):
        resolve_precision(bad)


def test_set_precision_sets_the_global_policy(monkeypatch):
    assert set_precision("mixed_float16") == "mixed_float16"
    assert keras.mixed_precision.dtype_policy().name == "mixed_float16"
    layer = keras.layers.Dense(2)
    assert layer.compute_dtype == "float16" and layer.variable_dtype == "float32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert set_precision("auto") == "float32"
    assert keras.mixed_precision.dtype_policy().name == "float32"
    with pytest.raises(ValueError):
        set_precision("half")
    assert keras.mixed_precision.dtype_policy().name == "float32"
