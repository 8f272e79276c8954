"""Weights sources: local keras-hub preset directories, weights files, ImageNet requests, bad arguments."""

import json

import keras
import numpy as np
import pytest

from keras_cxr import models
from tests.models.support import HUB_BACKBONES, assert_same_weights, backbone_weights, default_size, random_images


def _hub_tokens(name, backbone, x):
    x = models.ImageNetNormalization()(x)
    return keras.ops.convert_to_numpy(backbone({"images": x} if name == "tiny_dinov2" else x))


def _model_tokens(model, x):
    x = model.get_layer("normalize")(x)
    return keras.ops.convert_to_numpy(model.get_layer("backbone")(x))


@pytest.mark.parametrize("name", sorted(HUB_BACKBONES))
def test_local_preset_directory_round_trip(name, tmp_path):
    size = default_size(name)
    backbone = HUB_BACKBONES[name](name, size)
    backbone.save_to_preset(str(tmp_path / "preset"))
    model = models.build(name, weights=str(tmp_path / "preset"))
    x = random_images(size).astype("float32")
    np.testing.assert_array_equal(_model_tokens(model, x), _hub_tokens(name, backbone, x))
    if name != "tiny_dinov2":  # DINOv2's position embeddings are re-based
        assert_same_weights(backbone_weights(model), backbone.get_weights())
    # Presets are rebuilt for the requested input size.
    bigger = size + 14 if name == "tiny_dinov2" else size + 32
    resized = models.build(name, image_size=bigger, weights=tmp_path / "preset")
    assert resized.input_shape == (None, bigger, bigger, 3)
    assert resized.predict(random_images(bigger, n=1), verbose=0).shape == (1, 4)
    if name != "tiny_dinov2":  # DINOv2 re-interpolates its position embeddings
        assert_same_weights(backbone_weights(resized), backbone.get_weights())


@pytest.mark.parametrize(
    "name", ["tiny_effv2", "tiny_convnext", "cxr_resnet", "tiny_swin", "tiny_dinov2"]
)
def test_weights_file_loads_into_backbone(name, tmp_path):
    source = models.build(name)
    path = str(tmp_path / "backbone.weights.h5")
    source.get_layer("backbone").save_weights(path)
    model = models.build(name, weights=path)
    assert_same_weights(backbone_weights(model), backbone_weights(source))


@pytest.mark.parametrize("name", sorted(HUB_BACKBONES))
def test_keras_hub_weights_file_loads_into_backbone(name, tmp_path):
    """A keras-hub backbone's weights file (as in a preset) also loads."""
    size = default_size(name)
    backbone = HUB_BACKBONES[name](name, size)
    path = str(tmp_path / "model.weights.h5")
    backbone.save_weights(path)
    model = models.build(name, weights=path)
    x = random_images(size).astype("float32")
    np.testing.assert_array_equal(_model_tokens(model, x), _hub_tokens(name, backbone, x))


def test_bad_weights_arguments(tmp_path):
    missing = str(tmp_path / "nowhere.weights.h5")
    with pytest.raises(ValueError, match="nowhere.weights.h5"):
        models.build("tiny_effv2", weights=missing)
    with pytest.raises(ValueError, match="config.json"):
        models.build("tiny_swin", weights=str(tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="weights.h5"):
        models.build("tiny_effv2", weights=str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="tiny_effv2"):
        models.build("tiny_effv2", weights="imagenet")
    with pytest.raises(ValueError, match="cxr_resnet"):
        models.build("cxr_resnet", weights="imagenet")
    (tmp_path / "config.json").write_text(json.dumps({}))
    with pytest.raises(ValueError, match="preset_dir"):
        models.build("tiny_convnext", weights=str(tmp_path))
    other = models.build("tiny_convnext")
    other.get_layer("backbone").save_weights(str(tmp_path / "convnext.weights.h5"))
    with pytest.raises(ValueError, match="could not load"):
        models.build("tiny_effv2", weights=str(tmp_path / "convnext.weights.h5"))


def test_imagenet_weights_load_the_cached_sources(monkeypatch, tmp_path):
    """The downloads cannot run offline: with the caches faked, check what the builders load."""
    import functools
    import os

    import keras_hub

    from keras_cxr.models import pretrained

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    for name in ["effv2_rw_s", "swin_l", "dinov2_b"]:
        folder = pretrained.requirement(name).path
        os.makedirs(folder)
        for file in ("config.json", "model.weights.h5"):
            open(os.path.join(folder, file), "w").close()
    calls = []

    def fake_from_preset(preset, **kwargs):
        calls.append((preset, kwargs))
        raise RuntimeError("offline")

    monkeypatch.setattr(keras_hub.models.EfficientNetBackbone, "from_preset", fake_from_preset)
    monkeypatch.setattr(keras_hub.models.SwinTransformerBackbone, "from_preset", fake_from_preset)
    monkeypatch.setattr(keras_hub.models.DINOV2Backbone, "from_preset", fake_from_preset)
    for name in ["effv2_rw_s", "swin_l", "dinov2_b"]:
        with pytest.raises(RuntimeError, match="offline"):
            models.build(name, weights="imagenet")
    (rw_preset, rw_kwargs), (swin_preset, swin_kwargs), (dino_preset, dino_kwargs) = calls
    kaggle = tmp_path / "kagglehub" / "models" / "keras"
    assert rw_preset == str(kaggle / "efficientnet" / "keras" / "efficientnet2_rw_s_ra2_imagenet" / "2")
    assert rw_kwargs["num_features"] == 1792 and rw_kwargs["input_shape"] == (384, 384, 3)
    assert swin_preset == str(kaggle / "swin-transformer" / "keras" / "swin_large_patch4_window12_384" / "1")
    assert swin_kwargs["image_shape"] == (384, 384, 3)
    assert (dino_preset, dino_kwargs["image_shape"]) == (str(kaggle / "dinov2" / "keras" / "dinov2_base" / "1"),
                                                         (448, 448, 3))

    @functools.wraps(keras.applications.EfficientNetV2L)  # keras-cxr reads its name and module
    def fake_application(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("offline")

    cached = tmp_path / "keras" / "models" / "efficientnetv2-l_notop.h5"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    monkeypatch.setattr(keras.applications, "EfficientNetV2L", fake_application)
    with pytest.raises(RuntimeError, match="offline"):
        models.build("effv2_l", weights="imagenet")
    # Built without weights, then loaded from the cached file by keras-cxr.
    assert calls[-1]["weights"] is None and calls[-1]["include_top"] is False
    assert calls[-1]["input_shape"] == (512, 512, 3)
