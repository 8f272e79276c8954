"""The model registry: names, specs, build arguments, light imports, every tiny family's output."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_cxr import models
from keras_cxr.accel import marks
from keras_cxr.models import registry
from tests.models.support import EXPECTED_NAMES, REPO, TINY, default_size, params_hint, random_images


def test_names_are_sorted_and_complete():
    assert models.names() == EXPECTED_NAMES


def test_spec_defaults():
    def defaults(name):
        return models.spec(name).default_image_size, models.spec(name).default_dropout

    assert defaults("effv2_s") == (384, 0.25)
    assert defaults("effv2_l") == (512, 0.40)
    assert defaults("dinov2_b") == (448, 0.2)
    assert models.spec("swin_l").default_image_size == 384
    assert models.spec("cxr_resnet").default_image_size == 128
    for name in models.names():
        s = models.spec(name)
        assert s.name == name and s.description and s.params
        if name not in ("effv2_s", "effv2_l"):
            assert s.default_dropout == 0.2
        # DenseNet-121 starts from PyTorch checkpoints (weights=PATH.pt), not from a download.
        assert (s.pretrained is None) == name.startswith(("tiny_", "densenet", "cxr_resnet"))
    with pytest.raises(Exception):
        models.spec("effv2_s").default_dropout = 0.5  # frozen


def test_bad_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        models.build("effv2_xl")
    message = str(info.value)
    assert "effv2_xl" in message
    for name in EXPECTED_NAMES:
        assert name in message
    with pytest.raises(ValueError, match="tiny_swin"):
        models.spec("nope")


def test_import_keras_cxr_does_not_import_keras_hub():
    # keras_cxr may already be imported by other tests here; check a fresh one.
    code = "import sys, keras_cxr; print('keras_hub' in sys.modules, 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "False"]


def test_listing_models_imports_neither_keras_nor_torch():
    code = (
        "import sys, keras_cxr.models as m; m.names(); m.spec('swin_t'); "
        "loaded = [k for k in ('keras', 'torch', 'keras_hub') if k in sys.modules]; "
        "assert not loaded, loaded"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]


def test_only_keras_cxr_families_are_accelerated():
    assert all(models.spec(name).accelerated for name in models.names())
    model = models.build("tiny_effv2")
    assert marks.is_marked(model)

    def builder(images, name, image_size, source):
        x = keras.layers.Conv2D(4, 3, strides=4, name="conv")(images)
        return keras.layers.GlobalAveragePooling2D(name="pool")(x)

    models.register_family("test_user_family", builder, [("test_user_net", 32, 0.1, "0.1k", "Test.")])
    try:
        assert not models.spec("test_user_net").accelerated
        user_model = models.build("test_user_net")
        assert user_model.predict(random_images(32), verbose=0).shape == (2, 4)
        assert not marks.is_marked(user_model)
    finally:
        del registry._REGISTRY["test_user_net"]
    assert "test_user_net" not in models.names()


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_output_probabilities(name):
    model = models.build(name)
    size = default_size(name)
    assert model.input_shape == (None, size, size, 3)
    assert model.name == name
    probs = model.predict(random_images(size), verbose=0)
    assert probs.shape == (2, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # uint8 and float32 pixels give the same answer: normalisation is inside.
    as_float = model.predict(random_images(size).astype("float32"), verbose=0)
    np.testing.assert_allclose(as_float, probs, atol=1e-6)
    assert model.get_layer("head_dropout").rate == 0.2
    assert abs(model.count_params() - params_hint(name)) < 0.01 * params_hint(name)
    if not name.startswith("cxr"):
        assert model.count_params() < 120_000


def test_build_arguments():
    model = models.build("tiny_effv2", num_classes=3, image_size=48, dropout=0.5)
    assert model.input_shape == (None, 48, 48, 3)
    assert model.output_shape == (None, 3)
    assert model.get_layer("head_dropout").rate == 0.5
    bad = [{"num_classes": 1}, {"image_size": 16}, {"image_size": 64.0}, {"dropout": 1.0}]
    for kwargs in bad:
        with pytest.raises(ValueError):
            models.build("tiny_effv2", **kwargs)


def test_family_image_size_checks():
    with pytest.raises(ValueError, match="multiple of 32"):
        models.build("swin_t", image_size=200)
    # Pretrained weights fix the window; from scratch a smaller window fits (see the window test).
    with pytest.raises(ValueError, match="at least 224"):
        models.build("swin_t", image_size=192, weights="imagenet")
    with pytest.raises(ValueError, match="at least 384"):
        models.build("swin_l", image_size=224, weights="imagenet")
    with pytest.raises(ValueError, match="multiple of 14"):
        models.build("tiny_dinov2", image_size=64)


@pytest.mark.parametrize(
    "name,size",
    [("effv2_s", 64), ("effv2_b0", 64), ("effv2_b3", 64), ("convnext_t", 64), ("effv2_rw_t", 64),
     ("swin_t", 224), ("dinov2_s", 112)],
)
def test_real_architectures_build_offline(name, size):
    model = models.build(name, image_size=size)
    assert model.predict(random_images(size, n=1), verbose=0).shape == (1, 4)
    hint = params_hint(name)
    if not name.startswith("dinov2"):  # DINOv2's count depends on image_size
        assert abs(model.count_params() - hint) < 0.01 * hint


@pytest.mark.parametrize("name", ["tiny_effv2", "tiny_swin"])
def test_mixed_float16_outputs_float32(name):
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = models.build(name)
        assert model.get_layer("backbone").compute_dtype == "float16"
        assert model.get_layer("logits").compute_dtype == "float32"
        probs = model.predict(random_images(default_size(name)), verbose=0)
        assert probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
