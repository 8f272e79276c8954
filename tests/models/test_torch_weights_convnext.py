"""timm ConvNeXt state_dicts into keras.applications ConvNeXt backbones: torch's features, bad keys named."""

import collections

import keras
import numpy as np
import pytest
import torch

from keras_cxr import models
from keras_cxr.models import convnext, weights
from keras_cxr.models.torch_weights import CheckpointMismatch, load_torch_state_dict
from tests.models import torch_convnext
from tests.models.support import equivalence_script

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
# stem conv + LN (4), per stage one block (conv_dw, norm, fc1, fc2: 2 each; gamma),
# 3 downsamplings (LN + conv: 4), head.norm (2)
TINY_TENSORS = 4 + 4 * 9 + 3 * 4 + 2


def _images(size=64, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (2, size, size, 3)).astype("float32")


def _torch_features(reference, images):
    """timm's input convention: ImageNet mean / std on [0, 1] images."""
    return torch_convnext.features(reference, ((images / 255 - MEAN) / STD).astype("float32"))


def _backbone():
    return convnext.convnext_backbone("tiny_convnext", 64)


def test_converted_tiny_convnext_gives_torch_features():
    reference = torch_convnext.reference()
    backbone = _backbone()
    conversion = load_torch_state_dict(backbone, reference.state_dict(), "convnext")
    assert conversion.tensors == TINY_TENSORS and conversion.family == "convnext"
    assert conversion.dropped == (("head.fc.weight", (1000, 48)), ("head.fc.bias", (1000,)))
    x = _images()
    expected = _torch_features(reference, x)
    assert expected.shape == (2, 48) and np.abs(expected).max() > 0.1
    got = keras.ops.convert_to_numpy(backbone(x, training=False))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def _mismatch(state):
    backbone = _backbone()
    before = [w.copy() for w in backbone.get_weights()]
    with pytest.raises(CheckpointMismatch) as info:
        load_torch_state_dict(backbone, state, "convnext")
    for a, b in zip(backbone.get_weights(), before):  # nothing is loaded
        np.testing.assert_array_equal(a, b)
    return info.value


def test_missing_and_misshaped_keys_are_named():
    state = collections.OrderedDict(torch_convnext.reference().state_dict())
    del state["stages.2.blocks.0.gamma"]
    state["stages.1.downsample.1.weight"] = torch.zeros(24, 16, 3, 3)
    state["head.norm.bias"] = torch.zeros(7)
    error = _mismatch(state)
    assert error.missing == ("stages.2.blocks.0.gamma",)
    assert set(error.mismatched) == {("stages.1.downsample.1.weight", (24, 16, 3, 3), (24, 16, 2, 2)),
                                     ("head.norm.bias", (7,), (48,))}
    assert "1 missing key ('stages.2.blocks.0.gamma')" in str(error)
    assert "stages.1.downsample.1.weight: checkpoint (24, 16, 3, 3), model (24, 16, 2, 2)" in str(error)


def test_a_full_size_checkpoint_is_named_with_its_model():
    state = collections.OrderedDict(torch_convnext.reference().state_dict())
    state["stem.0.weight"] = torch.zeros(96, 3, 4, 4)
    state["stages.0.blocks.1.gamma"] = torch.zeros(16)
    error = _mismatch(state)
    assert error.unexpected == ("stages.0.blocks.1.gamma",)
    assert str(error).endswith("A 96-channel stem is timm's layout for convnext_t or convnext_s")


def test_build_takes_a_timm_state_dict_file(tmp_path):
    reference = torch_convnext.reference(classes=4)
    path = tmp_path / "convnext.pth"
    torch.save({"model": {"module." + k: v for k, v in reference.state_dict().items()}}, path)
    assert weights.resolve(path) == weights.WeightsSource(weights.TORCH, str(path))
    model = models.build("tiny_convnext", weights=str(path))
    x = _images()
    features = keras.Model(model.inputs, model.get_layer("head_dropout").input)  # the backbone output
    got = keras.ops.convert_to_numpy(features({"images": x}, training=False))
    np.testing.assert_allclose(got, _torch_features(reference, x), atol=1e-5, rtol=0)
    assert model.predict(x.astype("uint8"), verbose=0).shape == (2, 4)


@pytest.mark.slow
def test_timm_convnext_tiny_equivalence(capsys):
    """timm's own convnext_tiny (random, layer scales and norms randomised, eval) against the converted convnext_t."""
    script = equivalence_script("timm", "tests/models/test_torch_weights_convnext.py")
    assert script.compare("convnext_t", image_size=64, batch=2, seed=0) <= 1e-4
    assert "convnext_t       64px batch 2: max |keras - torch|" in capsys.readouterr().out
