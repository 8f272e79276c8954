"""Swin: the attention window follows the image size from scratch, the weights otherwise."""


import pytest


def test_swin_window_follows_the_image_from_scratch_and_the_weights_otherwise():
    from keras_cxr.models import swin
    from keras_cxr.models.weights import WeightsSource

    assert swin.window_size("swin_t", 224) == 7 and swin.window_size("swin_t", 128) == 4
    assert swin.window_size("swin_l", 384) == 12 and swin.window_size("swin_l", 256) == 8
    imagenet = WeightsSource("imagenet")
    assert swin.window_size("swin_t", 128, imagenet) == 7
    swin.check_image_size("swin_t", 128)  # from scratch: window 4 fits
    with pytest.raises(ValueError, match=r"at least 224 \(window 7 \(pretrained weights fix the window\)\), got 128"):
        swin.check_image_size("swin_t", 128, imagenet)
    with pytest.raises(ValueError, match="multiple of 32"):
        swin.check_image_size("swin_t", 100)
