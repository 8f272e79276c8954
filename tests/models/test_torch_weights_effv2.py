"""timm tf_efficientnetv2 state_dicts into keras.applications EfficientNetV2: torch's features, bad keys named."""

import collections
import copy

import keras
import numpy as np
import pytest
import torch

from keras_cxr import models
from keras_cxr.models import efficientnet_v2
from keras_cxr.models.torch_weights import CheckpointMismatch, load_torch_state_dict
from tests.models import torch_effv2
from tests.models.support import equivalence_script

# All four block types timm builds: fused expansion 1 (ConvBnAct), fused (EdgeResidual),
# MBConv + SE (InvertedResidual), MBConv expansion 1 (DepthwiseSeparableConv).
WITH_SEPARABLE = copy.deepcopy(efficientnet_v2.TINY_BLOCKS_ARGS) + [
    {"kernel_size": 3, "num_repeat": 1, "input_filters": 32, "output_filters": 32,
     "expand_ratio": 1, "se_ratio": 0.25, "strides": 1, "conv_type": 0},
]
WIDTH = 0.5  # tiny_effv2's width coefficient


def _rounded(blocks_args, width=WIDTH):
    """keras.applications' filter rounding of `blocks_args` (what the Keras model builds)."""
    from keras.src.applications.efficientnet_v2 import round_filters

    out = copy.deepcopy(blocks_args)
    for args in out:
        for key in ("input_filters", "output_filters"):
            args[key] = round_filters(args[key], width, 8, 8)
    return out


def _keras_backbone(blocks_args, size=64):
    from keras.src.applications.efficientnet_v2 import EfficientNetV2

    model = EfficientNetV2(width_coefficient=WIDTH, depth_coefficient=1.0, default_size=size,
                           blocks_args=copy.deepcopy(blocks_args), name="efficientnetv2-tiny",
                           include_top=False, weights=None, input_shape=(size, size, 3))
    return keras.Model(model.inputs[0], model.outputs[0], name="backbone")


def _reference(blocks_args, seed=0):
    torch.manual_seed(seed)
    model = torch_effv2.TorchEfficientNetV2(_rounded(blocks_args), head=640)
    return torch_effv2.randomise_batch_norms(model, seed)


def _images(size=64, seed=0, batch=2):
    return np.random.RandomState(seed).randint(0, 256, (batch, size, size, 3)).astype("float32")


def _keras_features(backbone, images):
    return keras.ops.convert_to_numpy(keras.ops.mean(backbone(images, training=False), axis=(1, 2)))


@pytest.mark.parametrize("blocks_args", [efficientnet_v2.TINY_BLOCKS_ARGS, WITH_SEPARABLE],
                         ids=["tiny_effv2", "with_separable"])
def test_converted_tiny_effv2_gives_torch_features(blocks_args):
    reference = _reference(blocks_args)
    backbone = _keras_backbone(blocks_args)
    conversion = load_torch_state_dict(backbone, reference.state_dict(), "efficientnet_v2")
    expected_tensors = sum(1 for k in reference.state_dict() if not k.endswith("num_batches_tracked")) - 2
    assert conversion.tensors == expected_tensors and conversion.family == "efficientnet_v2"
    assert conversion.dropped == (("classifier.weight", (1000, 640)), ("classifier.bias", (1000,)))
    x = _images()
    expected = torch_effv2.features(reference, x)
    assert expected.shape == (2, 640) and np.abs(expected).max() > 0.1
    np.testing.assert_allclose(_keras_features(backbone, x), expected, atol=1e-5, rtol=0)


def test_timm_key_names_for_each_block_type():
    keys = set(_reference(WITH_SEPARABLE).state_dict())
    for key in ("conv_stem.weight", "bn1.running_var", "blocks.0.0.conv.weight", "blocks.0.0.bn1.weight",
                "blocks.1.0.conv_exp.weight", "blocks.1.0.conv_pwl.weight", "blocks.1.0.bn2.bias",
                "blocks.2.1.conv_pw.weight", "blocks.2.1.conv_dw.weight", "blocks.2.1.se.conv_reduce.bias",
                "blocks.2.1.se.conv_expand.weight", "blocks.2.1.bn3.running_mean",
                "blocks.3.0.conv_dw.weight", "blocks.3.0.conv_pw.weight", "blocks.3.0.bn2.weight",
                "conv_head.weight", "bn2.running_mean"):
        assert key in keys
    backbone = _keras_backbone(WITH_SEPARABLE)
    from keras_cxr.models.from_torch import efficientnet_v2 as effv2_keys

    assert set(effv2_keys.targets(backbone)) == {k for k in keys if not k.endswith("num_batches_tracked")
                                                 and not k.startswith("classifier.")}


def _mismatch(state):
    backbone = _keras_backbone(efficientnet_v2.TINY_BLOCKS_ARGS)
    before = [w.copy() for w in backbone.get_weights()]
    with pytest.raises(CheckpointMismatch) as info:
        load_torch_state_dict(backbone, state, "efficientnet_v2")
    for a, b in zip(backbone.get_weights(), before):  # nothing is loaded
        np.testing.assert_array_equal(a, b)
    return info.value


def test_missing_and_misshaped_keys_are_named():
    state = collections.OrderedDict(_reference(efficientnet_v2.TINY_BLOCKS_ARGS).state_dict())
    del state["blocks.2.1.se.conv_reduce.weight"]
    error = _mismatch(state)
    assert error.missing == ("blocks.2.1.se.conv_reduce.weight",) and not error.unexpected
    assert str(error) == ("the state_dict does not fit the efficientnet_v2 backbone: 1 missing key "
                          "('blocks.2.1.se.conv_reduce.weight').")

    state = collections.OrderedDict(_reference(efficientnet_v2.TINY_BLOCKS_ARGS).state_dict())
    state["blocks.2.0.conv_dw.weight"] = torch.zeros(32, 1, 5, 5)
    error = _mismatch(state)
    assert error.mismatched == (("blocks.2.0.conv_dw.weight", (32, 1, 5, 5), (32, 1, 3, 3)),)
    assert "1 mis-shaped tensor (blocks.2.0.conv_dw.weight: checkpoint (32, 1, 5, 5), model (32, 1, 3, 3))" \
        in str(error)


def test_build_tiny_effv2_from_a_state_dict_file(tmp_path):
    reference = _reference(efficientnet_v2.TINY_BLOCKS_ARGS)
    path = tmp_path / "tiny_effv2.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in reference.state_dict().items()}}, path)
    model = models.build("tiny_effv2", image_size=64, weights=str(path))
    pooled = keras.Model(model.inputs, model.get_layer("pool").output)
    images = _images()
    got = keras.ops.convert_to_numpy(pooled({"images": images}, training=False))
    np.testing.assert_allclose(got, torch_effv2.features(reference, images), atol=1e-5, rtol=0)
    assert model.predict(images.astype("uint8"), verbose=0).shape == (2, 4)




@pytest.mark.slow
def test_timm_tf_efficientnetv2_s_equivalence(capsys):
    """timm's own tf_efficientnetv2_s (random, BN statistics set and perturbed, eval) against converted effv2_s."""
    script = equivalence_script("timm", "tests/models/test_torch_weights_effv2.py")
    assert script.compare("effv2_s", image_size=128, batch=2, seed=0) <= 1e-4
    assert "effv2_s          128px batch 2: max |keras - torch|" in capsys.readouterr().out


@pytest.mark.slow
def test_timm_tf_efficientnetv2_b0_equivalence(capsys):
    """The same check for the smallest variant (MBConv blocks with expansion, no expansion-1 separable ones)."""
    script = equivalence_script("timm", "tests/models/test_torch_weights_effv2.py")
    assert script.compare("effv2_b0", image_size=128, batch=2, seed=0) <= 1e-4
    assert "effv2_b0         128px batch 2: max |keras - torch|" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("size, tensors", [("b0", 359), ("b1", 441), ("b2", 460), ("b3", 536), ("m", 961),
                                           ("l", 1329)])
def test_timm_tf_efficientnetv2_keys_fit(size, tensors):
    """Every key of timm's tf_efficientnetv2_<size> has its effv2_<size> layer, same shape.

    No forward check: random 57- and 79-block networks amplify float32 rounding past any useful tolerance
    (keras-vs-timm is the size of timm float32-vs-float64 there).
    """
    timm = equivalence_script("timm", "tests/models/test_torch_weights_effv2.py").import_timm()
    reference = timm.create_model(f"tf_efficientnetv2_{size}", pretrained=False)
    backbone = efficientnet_v2.efficientnet_v2_backbone(f"effv2_{size}", 64)
    conversion = load_torch_state_dict(backbone, reference.state_dict(), "efficientnet_v2")
    assert conversion.tensors == tensors and [key for key, _ in conversion.dropped] == ["classifier.weight",
                                                                                          "classifier.bias"]
