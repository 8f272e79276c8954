"""Pretrained weights: where they come from, where they are cached, one clear error when neither works (offline)."""

import os
import pickle

import h5py
import keras
import numpy as np
import pytest

from keras_cxr import models
from keras_cxr.models import pretrained
from tests.models.support import assert_same_weights, backbone_weights

UNREACHABLE = "http://127.0.0.1:9/"  # the discard port: the connection is refused at once


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty Keras and kagglehub caches; ImageNet files and presets cannot be downloaded."""
    import kagglehub
    from keras.src.applications import convnext, efficientnet_v2

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setattr(efficientnet_v2, "BASE_WEIGHTS_PATH", UNREACHABLE)
    monkeypatch.setattr(convnext, "BASE_WEIGHTS_PATH", UNREACHABLE)

    def offline(handle, path=None, **kwargs):  # as requests words it under kagglehub
        raise ConnectionError(
            "HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries exceeded with url: "
            "/v1/models.ModelApiService/ListModelInstanceVersionFiles (Caused by NameResolutionError(\"<urllib3."
            "connection.HTTPSConnection object>: Failed to resolve 'api.kaggle.com' ([Errno -2] Name or service "
            "not known)\"))")

    monkeypatch.setattr(kagglehub, "model_download", offline)
    return tmp_path


def fake_imagenet_file(path, constructor):
    """Random weights of `constructor`'s notop model, in the legacy .h5 layout of Keras's ImageNet files."""
    from keras.src.legacy.saving import legacy_h5_format

    model = constructor(include_top=False, weights=None, input_shape=(32, 32, 3), include_preprocessing=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return model


def test_requirements_name_what_keras_and_keras_hub_fetch(tmp_path, monkeypatch):
    from keras.src.applications import convnext, efficientnet_v2

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    effv2 = pretrained.requirement("effv2_l")
    assert effv2.origin == efficientnet_v2.BASE_WEIGHTS_PATH + "efficientnetv2-l_notop.h5"
    assert effv2.path == str(tmp_path / "keras" / "models" / "efficientnetv2-l_notop.h5")
    assert effv2.file_hash == efficientnet_v2.WEIGHTS_HASHES["-l"][1]
    assert (effv2.source, effv2.variable, effv2.available()) == ("keras.applications", "KERAS_HOME", False)
    b0 = pretrained.requirement("effv2_b0")  # hash keys "b0" ... "b3" sit in the model name like "-l"
    assert b0.origin == efficientnet_v2.BASE_WEIGHTS_PATH + "efficientnetv2-b0_notop.h5"
    assert b0.file_hash == efficientnet_v2.WEIGHTS_HASHES["b0"][1]
    tiny = pretrained.requirement("convnext_t")
    assert tiny.origin == convnext.BASE_WEIGHTS_PATH + "convnext_tiny_notop.h5"
    assert tiny.file_hash == convnext.WEIGHTS_HASHES["convnext_tiny"][1]
    swin = pretrained.requirement("swin_t")
    assert swin.origin == "kaggle://keras/swin-transformer/keras/swin_tiny_patch4_window7_224/1"
    assert swin.path == str(tmp_path / "kagglehub" / "models" / "keras" / "swin-transformer" / "keras"
                            / "swin_tiny_patch4_window7_224" / "1")
    assert swin.variable == "KAGGLEHUB_CACHE"
    # A preset folder counts once it holds its config and weights.
    os.makedirs(swin.path)
    open(os.path.join(swin.path, "config.json"), "w").close()
    assert not swin.available()
    open(os.path.join(swin.path, "model.weights.h5"), "w").close()
    assert swin.available()
    # Another root (a fetched folder) holds both layouts.
    assert pretrained.requirement("effv2_s", tmp_path / "usb").path == str(
        tmp_path / "usb" / "models" / "efficientnetv2-s_notop.h5")
    assert pretrained.requirement("dinov2_s", tmp_path / "usb").path == str(
        tmp_path / "usb" / "models" / "keras" / "dinov2" / "keras" / "dinov2_small" / "1")
    for name in ["tiny_effv2", "cxr_resnet", "tiny_swin"]:
        assert pretrained.requirement(name) is None


def test_a_blocked_download_is_one_clear_error(caches):
    with pytest.raises(pretrained.WeightsUnavailable) as raised:
        models.build("effv2_s", image_size=32, weights="imagenet")
    message = str(raised.value)
    target = caches / "keras" / "models" / "efficientnetv2-s_notop.h5"
    assert "\n" not in message and "--" not in message  # the CLI words its fields as flags
    for part in ["model 'effv2_s'", UNREACHABLE + "efficientnetv2-s_notop.h5", "Connection refused",
                 f"local copy at {target}", "set KERAS_HOME=DIR", "keras_cxr.models.pretrained.fetch of effv2_s into DIR",
                 "model.weights=PATH"]:
        assert part in message, (part, message)
    assert not target.exists()
    assert raised.value.requirement.model == "effv2_s"
    assert raised.value.render({"fetch": "keras-cxr weights fetch"}).count("keras-cxr weights fetch effv2_s") == 1
    # Data-parallel ranks receive rank 0's error pickled: it arrives whole.
    copy = pickle.loads(pickle.dumps(raised.value))
    assert (type(copy), str(copy), copy.requirement, copy.fields) == (
        pretrained.WeightsUnavailable, message, raised.value.requirement, ("fetch", "out_dir", "weights"))


def test_a_blocked_keras_hub_preset_is_one_clear_error(caches):
    with pytest.raises(pretrained.WeightsUnavailable) as raised:
        models.build("swin_t", weights="imagenet")
    message = str(raised.value)
    for part in ["model 'swin_t'",
                 "keras-hub preset kaggle://keras/swin-transformer/keras/swin_tiny_patch4_window7_224/1",
                 "(cannot resolve api.kaggle.com)", str(caches / "kagglehub" / "models" / "keras"),
                 "set KAGGLEHUB_CACHE=DIR"]:
        assert part in message, (part, message)


@pytest.fixture
def fake_downloads(monkeypatch):
    """Keras's and kagglehub's downloaders write empty files where the real ones would; returns their calls:
    `(fname, origin, cache_subdir, file_hash, cache_dir)` per file, `(handle, KAGGLEHUB_CACHE)` per preset."""
    import kagglehub
    from keras.src.utils import file_utils

    calls = []

    def fake_get_file(fname, origin, cache_subdir, file_hash, cache_dir):
        calls.append((fname, origin, cache_subdir, file_hash, cache_dir))
        os.makedirs(os.path.join(cache_dir, cache_subdir), exist_ok=True)
        open(os.path.join(cache_dir, cache_subdir, fname), "wb").close()

    def fake_model_download(handle):
        calls.append((handle, os.environ["KAGGLEHUB_CACHE"]))
        folder = os.path.join(os.environ["KAGGLEHUB_CACHE"], "models", *handle.split("/"))
        os.makedirs(folder)
        for name in ("config.json", "model.weights.h5"):
            open(os.path.join(folder, name), "w").close()

    monkeypatch.setattr(file_utils, "get_file", fake_get_file)
    monkeypatch.setattr(kagglehub, "model_download", fake_model_download)
    return calls


def test_fetch_downloads_into_the_folder_given(tmp_path, monkeypatch, fake_downloads):
    """Keras's downloader gets the origin, file name, hash and folder; kagglehub the handle and its cache."""
    calls = fake_downloads
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "elsewhere"))
    fetched = pretrained.fetch(["effv2_s", "dinov2_s"], tmp_path / "out", verbose=0)
    assert [one.available() for one in fetched] == [True, True]
    effv2 = fetched[0]
    assert calls == [
        ("efficientnetv2-s_notop.h5", effv2.origin, "models", effv2.file_hash, str(tmp_path / "out")),
        ("keras/dinov2/keras/dinov2_small/1", str(tmp_path / "out")),
    ]
    assert os.environ["KAGGLEHUB_CACHE"] == str(tmp_path / "elsewhere")  # restored
    pretrained.fetch(["effv2_s", "dinov2_s"], tmp_path / "out")
    assert len(calls) == 2  # cached: nothing downloaded again
    with pytest.raises(ValueError, match="'tiny_effv2' has no pretrained weights"):
        pretrained.fetch(["tiny_effv2"], tmp_path / "out")


@pytest.mark.slow
def test_a_copied_weights_file_builds_offline(caches):
    """A fetched file (faked from random weights) in KERAS_HOME is what `weights="imagenet"` loads, offline."""
    needed = pretrained.requirement("effv2_s")
    source = fake_imagenet_file(needed.path, keras.applications.EfficientNetV2S)
    assert needed.available()
    model = models.build("effv2_s", image_size=32, weights="imagenet")
    assert_same_weights(backbone_weights(model), source.get_weights())
    assert model.predict(np.zeros((1, 32, 32, 3), "uint8"), verbose=0).shape == (1, 4)


@pytest.mark.slow
def test_a_copied_keras_hub_preset_builds_offline(caches):
    """A preset folder in kagglehub's cache layout (faked from a random tiny Swin) is what `swin_t` loads."""
    from keras_cxr.models import swin

    needed = pretrained.requirement("swin_t")
    source = swin.swin_backbone("tiny_swin", 64)
    source.save_to_preset(needed.path)
    assert needed.available()
    model = models.build("swin_t", weights="imagenet")
    assert_same_weights(backbone_weights(model), source.get_weights())
    assert model.predict(np.zeros((1, 224, 224, 3), "uint8"), verbose=0).shape == (1, 4)
