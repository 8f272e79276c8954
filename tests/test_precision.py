import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from keras_cxr import precision  # noqa: E402
from keras_cxr.precision import resolve_precision  # noqa: E402
from keras_cxr.precision import set_precision  # noqa: E402


@pytest.mark.parametrize("name", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_explicit_names_resolve_to_themselves(name):
    assert resolve_precision(name) == name


@pytest.mark.parametrize("cuda, native_bfloat16, expected", [
    (True, True, "mixed_float16"), (True, False, "mixed_float16"),
    (False, True, "mixed_bfloat16"), (False, False, "float32")])
def test_auto_follows_the_device(monkeypatch, cuda, native_bfloat16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: native_bfloat16)
    assert resolve_precision("auto") == expected


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, True), (False, True, True), (False, False, False)])
def test_native_bfloat16_is_read_from_torch_cpu_capabilities(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.delenv("KERAS_CXR_CPU_BFLOAT16", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert precision.cpu_has_native_bfloat16() is expected


def test_native_bfloat16_without_torch_probes_is_false(monkeypatch):
    monkeypatch.delenv("KERAS_CXR_CPU_BFLOAT16", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert precision.cpu_has_native_bfloat16() is False


def test_environment_overrides_the_cpu_probe(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setenv("KERAS_CXR_CPU_BFLOAT16", "0")
    assert resolve_precision("auto") == "float32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setenv("KERAS_CXR_CPU_BFLOAT16", "1")
    assert resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.setenv("KERAS_CXR_CPU_BFLOAT16", "yes")
    with pytest.raises(ValueError, match="KERAS_CXR_CPU_BFLOAT16 must be 0 or 1, got 'yes'"):
        resolve_precision("auto")


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
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: False)
    assert set_precision("auto") == "float32"
    assert keras.mixed_precision.dtype_policy().name == "float32"
    with pytest.raises(ValueError):
        set_precision("half")
    assert keras.mixed_precision.dtype_policy().name == "float32"
