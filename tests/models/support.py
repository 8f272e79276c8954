"""Names, tiny inputs and weight comparisons shared by the model tests (no network, two CPU cores)."""

import pathlib

import numpy as np

from keras_cxr import models
from keras_cxr.models import dinov2, efficientnet_rw, swin

REPO = pathlib.Path(__file__).resolve().parents[2]

TINY = ["tiny_effv2", "tiny_effv2_rw", "tiny_swin", "tiny_dinov2", "tiny_convnext", "cxr_resnet"]
HUB_BACKBONES = {
    "tiny_swin": swin.swin_backbone,
    "tiny_dinov2": dinov2.dinov2_hub_backbone,
    "tiny_effv2_rw": efficientnet_rw.efficientnet_rw_hub_backbone,
}
EXPECTED_NAMES = [
    "convnext_b", "convnext_l", "convnext_s", "convnext_t", "cxr_resnet", "cxr_resnet_deep", "cxr_resnet_wide",
    "densenet121", "densenet121_xrv",
    "dinov2_b", "dinov2_l", "dinov2_s",
    "effv2_b0", "effv2_b1", "effv2_b2", "effv2_b3",
    "effv2_l", "effv2_m", "effv2_rw_m", "effv2_rw_s", "effv2_rw_t", "effv2_s",
    "swin_b", "swin_l", "swin_s", "swin_t",
    "tiny_convnext", "tiny_dinov2", "tiny_effv2", "tiny_effv2_rw", "tiny_swin",
]


def random_images(size, n=2, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3)).astype("uint8")


def default_size(name):
    return models.spec(name).default_image_size


def params_hint(name):
    hint = models.spec(name).params
    return float(hint[:-1]) * {"k": 1e3, "M": 1e6}[hint[-1]]


def backbone_weights(model):
    return model.get_layer("backbone").get_weights()


def assert_same_weights(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def equivalence_script(requires, test_file):
    """benchmarks/torch_equivalence.py as a module once `requires` ("torchvision" or "timm") imports, else a skip
    naming the install command and `test_file`'s slow run (neither is a keras-cxr dependency)."""
    import importlib.util

    import pytest

    spec = importlib.util.spec_from_file_location("torch_equivalence", REPO / "benchmarks" / "torch_equivalence.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    try:
        script.import_timm() if requires == "timm" else script.import_torchvision()
    except ImportError:
        pytest.skip(f"{requires} is not installed (no dependency); install it beside the venv: "
                    f"{script.TIMM_INSTALL} && PYTHONPATH=/tmp/tvlib .venv/bin/python -m pytest -m slow {test_file}")
    return script

