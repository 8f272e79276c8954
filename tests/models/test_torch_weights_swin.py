"""timm Swin Transformer state_dicts -> keras-hub Swin backbones (`keras_cxr.models.from_torch.swin`)."""

import keras
import numpy as np
import pytest
import torch

import keras_cxr.accel
from keras_cxr import models
from keras_cxr.models import swin
from keras_cxr.models.torch_weights import CheckpointMismatch, load_torch_state_dict
from tests.models import torch_swin
from tests.models.support import equivalence_script

ACCEL = pytest.mark.parametrize("accel", [keras_cxr.accel.disabled, keras_cxr.accel.enabled], ids=["keras", "accel"])
# patch_embed (4) + per block 2 norms (4), qkv, proj, fc1, fc2 (8) and the bias table (1) + one merging (3) + norm (2)
TINY_TENSORS = 4 + 4 * 13 + 3 + 2


def _images(size=64, seed=0):
    return np.random.RandomState(seed).normal(0, 1, (2, size, size, 3)).astype("float32")


def _tiny_state():
    return torch_swin.reference().state_dict()


@ACCEL
def test_converted_tiny_swin_gives_torch_features(accel):
    reference = torch_swin.reference()
    backbone = swin.swin_backbone("tiny_swin", 64)
    conversion = load_torch_state_dict(backbone, reference.state_dict(), "swin")
    assert conversion.tensors == TINY_TENSORS and conversion.family == "swin"
    assert [key for key, _ in conversion.dropped] == ["head.fc.weight", "head.fc.bias"]
    x = _images()
    expected = torch_swin.features(reference, x)
    assert expected.shape == (2, 32) and np.abs(expected).max() > 0.1
    with accel():
        got = keras.ops.convert_to_numpy(keras.ops.mean(backbone(x, training=False), axis=1))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_buffers_are_ignored_and_keys_named():
    state = _tiny_state()
    assert "layers.0.blocks.1.attn_mask" in state and "layers.1.blocks.0.attn.relative_position_index" in state
    backbone = swin.swin_backbone("tiny_swin", 64)

    del state["layers.1.blocks.0.attn.relative_position_bias_table"]
    state["layers.1.blocks.1.attn.qkv.weight"] = torch.zeros(32, 32)
    with pytest.raises(CheckpointMismatch) as info:
        load_torch_state_dict(backbone, state, "swin")
    error = info.value
    assert error.missing == ("layers.1.blocks.0.attn.relative_position_bias_table",) and not error.unexpected
    assert error.mismatched == (("layers.1.blocks.1.attn.qkv.weight", (32, 32), (96, 32)),)
    assert str(error) == (
        "the state_dict does not fit the swin backbone: 1 missing key "
        "('layers.1.blocks.0.attn.relative_position_bias_table'); 1 mis-shaped tensor "
        "(layers.1.blocks.1.attn.qkv.weight: checkpoint (32, 32), model (96, 32)).")


def test_patch_merging_one_stage_off_gets_a_layout_hint():
    """The original Swin / timm < 0.9 keeps a stage's merging at its end: layers.i.downsample is then i + 1's."""
    state = _tiny_state()
    state["layers.1.downsample.reduction.weight"] = torch.zeros(64, 128)
    with pytest.raises(CheckpointMismatch, match=r"original Swin / timm < 0.9 layout .* with timm >= 0.9"):
        load_torch_state_dict(swin.swin_backbone("tiny_swin", 64), state, "swin")


def test_another_window_is_named():
    state = torch_swin.reference(window=2).state_dict()  # timm's window-12 Swin-B for swin_b, say
    with pytest.raises(CheckpointMismatch, match=r"(?s)4 mis-shaped tensors \(layers.0.blocks.0.attn.relative_position_"
                                                 r"bias_table: checkpoint \(9, 1\), model \(49, 1\).*The checkpoint's "
                                                 r"attention window is 2, the model's 4 .*does not resize bias tables"):
        load_torch_state_dict(swin.swin_backbone("tiny_swin", 64), state, "swin")


@ACCEL
def test_build_takes_a_timm_state_dict_file(tmp_path, accel):
    reference = torch_swin.reference(classes=5)
    path = tmp_path / "tiny_swin.pth"
    torch.save(reference.state_dict(), path)
    model = models.build("tiny_swin", weights=str(path))
    pooled = keras.Model(model.inputs, model.get_layer("pool").output)
    images = np.random.RandomState(0).randint(0, 256, (2, 64, 64, 3)).astype("float32")
    normalised = (images / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    expected = torch_swin.features(reference, normalised.astype("float32"))
    with accel():
        got = keras.ops.convert_to_numpy(pooled({"images": images}, training=False))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)




@pytest.mark.slow
def test_timm_swin_tiny_equivalence(capsys):
    """timm's own swin_tiny_patch4_window7_224 (random, eval mode) against the converted swin_t, within 1e-4."""
    script = equivalence_script("timm", "tests/models/test_torch_weights_swin.py")
    assert script.compare_swin(image_size=224, batch=2, seed=0) <= 1e-4
    assert "swin_t           224px batch 2: max |keras - torch|" in capsys.readouterr().out


@pytest.mark.slow
def test_fit_checks_a_swin_t_checkpoint_at_the_recipe_size(tmp_path):
    """A pretrained window 7 needs 224 px: `fit`'s early check builds at the recipe's size, not a quick 32 px."""
    from keras_cxr import training
    from keras_cxr.recipe import Model

    path = tmp_path / "swin_t.pt"
    arch = swin.ARCHS["swin_t"]
    torch.save(torch_swin.TorchSwin(224, arch["embed_dim"], arch["depths"], arch["num_heads"], 7).state_dict(), path)
    training.check_checkpoint(Model(name="swin_t", weights=str(path)))
    with pytest.raises(ValueError, match="swin_t needs image_size to be a multiple of 32 and at least 224"):
        training.check_checkpoint(Model(name="swin_t", image_size=128, weights=str(path)))
