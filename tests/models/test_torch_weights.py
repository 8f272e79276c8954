"""PyTorch state_dicts into DenseNet backbones: same features as torch, every bad key named, no code unpickled."""

import collections

import keras
import numpy as np
import pytest
import torch

from keras_cxr import models
from keras_cxr.models import densenet, torch_weights, weights
from keras_cxr.models.torch_weights import CheckpointError, CheckpointMismatch, load_torch_state_dict
from tests.models import torch_densenet
from tests.models.support import equivalence_script

TINY = (1, 1, 1, 1)
# conv0 + norm0 (4) + per dense layer 2 convs and 2 norms (10) + per transition conv and norm (5) + norm5 (4)
TINY_TENSORS = 1 + 4 + 4 * 10 + 3 * 5 + 4
TINY_CHANNELS = 68  # 64 + 32 -> 48 + 32 -> 40 + 32 -> 36 + 32


def _images(channels, size=64, seed=0):
    return np.random.RandomState(seed).normal(0, 1, (2, size, size, channels)).astype("float32")


def _keras_features(backbone, images):
    return keras.ops.convert_to_numpy(keras.ops.mean(backbone(images, training=False), axis=(1, 2)))


@pytest.mark.parametrize("in_channels", [3, 1])
def test_converted_tiny_densenet_gives_torch_features(in_channels):
    reference = torch_densenet.reference(TINY, in_channels)
    backbone = densenet.densenet_backbone(64, in_channels, blocks=TINY)
    conversion = load_torch_state_dict(backbone, reference.state_dict(), "densenet")
    assert conversion.tensors == TINY_TENSORS and conversion.family == "densenet"
    assert [key for key, _ in conversion.dropped] == ["classifier.weight", "classifier.bias"]
    x = _images(in_channels)
    expected = torch_densenet.features(reference, x)
    assert expected.shape == (2, 68) and np.abs(expected).max() > 0.1
    np.testing.assert_allclose(_keras_features(backbone, x), expected, atol=1e-5, rtol=0)
    # Keras's BatchNormalization now runs with torch's settings.
    norm = backbone.get_layer("conv1_bn")
    assert (norm.epsilon, norm.momentum) == (1e-5, 0.9)


def test_xrv_keys_prefixes_and_old_spelling_convert():
    """torchxrayvision's extras (18-way classifier, op_threshs), a wrapper prefix and torchvision's old 'norm.1'."""
    reference = torch_densenet.reference(TINY, 1, classes=18, op_threshs=True)
    state = collections.OrderedDict()
    for key, tensor in reference.state_dict().items():
        key = key.replace("denselayer1.norm1.", "denselayer1.norm.1.")
        state["module.model." + key] = tensor
    assert "module.model.op_threshs" in state
    backbone = densenet.densenet_backbone(64, 1, blocks=TINY)
    conversion = load_torch_state_dict(backbone, state, "densenet")
    assert conversion.tensors == TINY_TENSORS
    assert conversion.dropped == (("classifier.weight", (18, 68)), ("classifier.bias", (18,)))
    assert conversion.summary() == (
        f"converted {TINY_TENSORS} tensors (densenet); dropped the checkpoint's classifier (classifier.weight "
        "(18, 68), classifier.bias (18,)): keras-cxr's head is trained for your classes"
    )
    x = _images(1)
    np.testing.assert_allclose(_keras_features(backbone, x), torch_densenet.features(reference, x), atol=1e-5)


def _tiny_state(**kwargs):
    return collections.OrderedDict(torch_densenet.reference(TINY, 3, **kwargs).state_dict())


def _mismatch(state, in_channels=3):
    backbone = densenet.densenet_backbone(64, in_channels, blocks=TINY)
    before = [w.copy() for w in backbone.get_weights()]
    with pytest.raises(CheckpointMismatch) as info:
        load_torch_state_dict(backbone, state, "densenet")
    for a, b in zip(backbone.get_weights(), before):  # nothing is loaded
        np.testing.assert_array_equal(a, b)
    return info.value


def test_missing_unexpected_and_misshaped_keys_are_named():
    state = _tiny_state()
    del state["features.denseblock2.denselayer1.conv2.weight"]
    error = _mismatch(state)
    assert error.missing == ("features.denseblock2.denselayer1.conv2.weight",)
    assert str(error) == ("the state_dict does not fit the densenet backbone: 1 missing key "
                          "('features.denseblock2.denselayer1.conv2.weight').")

    state = _tiny_state()
    state["features.denseblock5.denselayer1.conv1.weight"] = torch.zeros(1)
    error = _mismatch(state)
    assert error.unexpected == ("features.denseblock5.denselayer1.conv1.weight",) and not error.missing
    assert "1 unexpected key ('features.denseblock5.denselayer1.conv1.weight')" in str(error)

    state = _tiny_state()
    state["features.norm5.running_var"] = torch.ones(7)
    error = _mismatch(state)
    assert error.mismatched == (("features.norm5.running_var", (7,), (68,)),)
    assert "1 mis-shaped tensor (features.norm5.running_var: checkpoint (7,), model (68,))" in str(error)


def test_all_problems_in_one_message_with_counts_and_a_layout_hint():
    state = _tiny_state()
    for key in [k for k in state if k.startswith("features.transition")]:
        del state[key]  # 3 x (conv + 4 BN tensors + num_batches_tracked)
    state["extra.weight"] = torch.zeros(1)
    state["features.conv0.weight"] = torch.zeros(64, 1, 7, 7)
    error = _mismatch(state)
    message = str(error)
    assert len(error.missing) == 15 and "15 missing keys ('features.transition1.norm.weight'," in message
    assert "and 10 more)" in message and "1 unexpected key ('extra.weight')" in message
    assert "features.conv0.weight: checkpoint (64, 1, 7, 7), model (64, 3, 7, 7)" in message
    assert message.endswith("A 1-channel conv0 is torchxrayvision's layout: use model densenet121_xrv")


def test_files_are_read_weights_only(tmp_path):
    reference = torch_densenet.reference(TINY, 3)
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": reference.state_dict(), "epoch": 3}, path)  # a training checkpoint
    backbone = densenet.densenet_backbone(64, 3, blocks=TINY)
    assert load_torch_state_dict(backbone, path, "densenet").tensors == TINY_TENSORS

    whole = tmp_path / "whole_model.pt"
    torch.save(reference, whole)  # a pickled module: unpickling it would run code
    with pytest.raises(CheckpointError, match="cannot be read as a state_dict without running code") as info:
        torch_weights.read_state_dict(whole)
    assert str(whole) in str(info.value) and "torch.save(model.state_dict(), 'state_dict.pt')" in str(info.value)

    torch.save({"features.conv0.weight": torch.zeros(1), "note": "hi"}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"not a state_dict of tensors: 'note' are not tensors"):
        torch_weights.read_state_dict(tmp_path / "mixed.pt")
    (tmp_path / "text.pt").write_text("not a torch file")
    with pytest.raises(CheckpointError, match="text.pt cannot be read"):
        torch_weights.read_state_dict(tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        torch_weights.read_state_dict(tmp_path / "nowhere.pt")
    with pytest.raises(ValueError, match="no PyTorch conversion for family 'dinov2'; families with one: densenet"):
        load_torch_state_dict(backbone, path, "dinov2")


def test_build_takes_a_state_dict_file_for_densenet_only(tmp_path):
    path = tmp_path / "xrv.pth"
    torch.save(torch_densenet.reference(in_channels=1, classes=18).state_dict(), path)
    assert weights.resolve(path) == weights.WeightsSource(weights.TORCH, str(path))
    with pytest.raises(ValueError, match=r"model 'cxr_resnet' cannot load PyTorch checkpoints .*densenet121, "
                                         r"densenet121_xrv"):
        models.build("cxr_resnet", weights=path)
    with pytest.raises(CheckpointMismatch, match="use model densenet121_xrv"):
        models.build("densenet121", image_size=64, weights=path)


@pytest.mark.slow
def test_densenet121_xrv_from_a_state_dict_file_matches_torch(tmp_path):
    """The full DenseNet-121 through `models.build`: 0-255 RGB in, torchxrayvision's gray [-1024, 1024] inside."""
    reference = torch_densenet.reference(densenet.BLOCKS, in_channels=1, classes=18, op_threshs=True)
    path = tmp_path / "xrv.pt"
    torch.save(reference.state_dict(), path)
    model = models.build("densenet121_xrv", image_size=64, weights=str(path))
    pooled = keras.Model(model.inputs, model.get_layer("pool").output)
    images = np.random.RandomState(0).randint(0, 256, (2, 64, 64, 3)).astype("uint8")
    xrv_input = (images.astype("float32").mean(axis=-1, keepdims=True) / 255 * 2 - 1) * 1024
    expected = torch_densenet.features(reference, xrv_input)
    assert expected.shape == (2, 1024)
    got = keras.ops.convert_to_numpy(pooled({"images": images.astype("float32")}))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert model.predict(images, verbose=0).shape == (2, 4)




@pytest.mark.slow
@pytest.mark.parametrize("name", ["densenet121", "densenet121_xrv"])
def test_torchvision_densenet121_equivalence(name, capsys):
    """torchvision's own densenet121 (random, eval mode) against the converted keras-cxr model, within 1e-4."""
    script = equivalence_script("torchvision", "tests/models/test_torch_weights.py")
    assert script.compare(name, image_size=64, batch=2, seed=0) <= 1e-4
    assert f"{name:16s} 64px batch 2: max |keras - torch|" in capsys.readouterr().out
