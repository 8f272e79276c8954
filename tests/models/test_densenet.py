"""`densenet121` / `densenet121_xrv`: torch's layout and BN settings, xrv input scaling, weights files, .keras files."""

import keras
import numpy as np
import pytest

from keras_cxr import models
from keras_cxr.models import densenet
from tests.models.support import assert_same_weights, backbone_weights, random_images


def test_xrv_normalization_is_gray_on_minus_to_plus_1024():
    images = np.array([[[[0, 0, 0], [255, 255, 255]], [[30, 60, 90], [255, 0, 0]]]], "uint8")
    got = keras.ops.convert_to_numpy(models.XRVNormalization()(images))
    assert got.shape == (1, 2, 2, 1)
    np.testing.assert_allclose(got[0, :, :, 0], [[-1024.0, 1024.0], [-542.1176, -341.3333]], atol=1e-3)


def test_backbone_layout_and_torch_batchnorm():
    backbone = densenet.densenet_backbone(64, in_channels=1, blocks=(1, 1, 1, 1))
    assert backbone.input_shape == (None, 64, 64, 1) and backbone.output_shape == (None, 2, 2, 68)
    norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 2 + 2 * 4 + 3 and {(n.epsilon, n.momentum) for n in norms} == {(1e-5, 0.9)}
    assert backbone.get_layer("conv1_conv").kernel.shape == (7, 7, 1, 64)
    with pytest.raises(ValueError, match="in_channels must be 1 or 3"):
        densenet.densenet_backbone(64, in_channels=2)


@pytest.mark.slow
def test_densenet121_xrv_weights_file_and_keras_file_round_trip(tmp_path):
    model = models.build("densenet121_xrv", image_size=64)
    assert model.get_layer("normalize").__class__.__name__ == "XRVNormalization"
    assert model.get_layer("backbone").output_shape == (None, 2, 2, 1024)
    assert model.count_params() == 7_035_332
    path = str(tmp_path / "backbone.weights.h5")
    model.get_layer("backbone").save_weights(path)
    again = models.build("densenet121_xrv", image_size=64, weights=path)
    assert_same_weights(backbone_weights(again), backbone_weights(model))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    x = random_images(64)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
