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
