"""cxr_resnet: its widths, blocks and stem are arguments."""


import pytest

from keras_cxr import models
from keras_cxr.models import cxr_resnet


def test_cxr_resnet_structure_is_tunable():
    backbone = cxr_resnet.cxr_resnet_backbone(
        64, widths=(8, 16, 24), blocks=(1, 2, 1), stem_width=8
    )
    assert backbone.output_shape == (None, 8, 8, 24)  # stem /2, then stages 2-3 /2
    assert backbone.get_layer("stage2_block2_1_conv").strides == (1, 1)
    assert backbone.get_layer("stage2_block1_proj_conv").strides == (2, 2)
    default = models.build("cxr_resnet").get_layer("backbone")
    assert default.output_shape == (None, 8, 8, 256)  # 128 px / 16
    assert default.get_layer("stem_conv").filters == 32
    assert default.get_layer("rescale").scale == pytest.approx(1 / 127.5)
    with pytest.raises(ValueError):
        cxr_resnet.cxr_resnet_backbone(64, widths=(8, 16), blocks=(1,))


def test_wide_and_deep_variants():
    wide = models.build("cxr_resnet_wide", image_size=64).get_layer("backbone")
    assert wide.output_shape == (None, 4, 4, 384) and wide.get_layer("stem_conv").filters == 48
    assert "stage1_block2_1_conv" not in [layer.name for layer in wide.layers]
    deep = models.build("cxr_resnet_deep", image_size=64).get_layer("backbone")
    assert deep.output_shape == (None, 4, 4, 256)
    assert deep.get_layer("stage4_block2_1_conv").strides == (1, 1)
    assert "stage4_block3_1_conv" not in [layer.name for layer in deep.layers]
