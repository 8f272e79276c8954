"""Tests of keras_cxr.models: registry, heads, weights sources, serialisation.

Only the tiny variants (and a few real architectures at small image sizes)
are built: no network, two CPU cores.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_cxr
from keras_cxr import models
from keras_cxr.accel import marks
from keras_cxr.models import cxr_resnet, dinov2, efficientnet_rw, registry, swin

REPO = pathlib.Path(__file__).resolve().parents[2]

TINY = ["tiny_effv2", "tiny_effv2_rw", "tiny_swin", "tiny_dinov2", "tiny_convnext", "cxr_resnet"]
HUB_BACKBONES = {
    "tiny_swin": swin.swin_backbone,
    "tiny_dinov2": dinov2.dinov2_hub_backbone,
    "tiny_effv2_rw": efficientnet_rw.efficientnet_rw_hub_backbone,
}
EXPECTED_NAMES = [
    "convnext_b", "convnext_l", "convnext_s", "convnext_t", "cxr_resnet",
    "dinov2_b", "dinov2_l", "dinov2_s",
    "effv2_l", "effv2_m", "effv2_rw_m", "effv2_rw_s", "effv2_rw_t", "effv2_s",
    "swin_b", "swin_l", "swin_s", "swin_t",
    "tiny_convnext", "tiny_dinov2", "tiny_effv2", "tiny_effv2_rw", "tiny_swin",
]


def _images(size, n=2, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3)).astype("uint8")


def _size(name):
    return models.spec(name).default_image_size


def _params_hint(name):
    hint = models.spec(name).params
    return float(hint[:-1]) * {"k": 1e3, "M": 1e6}[hint[-1]]


def _backbone_weights(model):
    return model.get_layer("backbone").get_weights()


def _assert_same_weights(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# --- registry -------------------------------------------------------------


def test_names_are_sorted_and_complete():
    assert models.names() == EXPECTED_NAMES


def test_spec_defaults():
    def defaults(name):
        return models.spec(name).default_image_size, models.spec(name).default_dropout

    assert defaults("effv2_s") == (384, 0.25)
    assert defaults("effv2_l") == (512, 0.40)
    assert defaults("dinov2_b") == (448, 0.2)
    assert models.spec("swin_l").default_image_size == 384
    assert models.spec("cxr_resnet").default_image_size == 128
    for name in models.names():
        s = models.spec(name)
        assert s.name == name and s.description and s.params
        if name not in ("effv2_s", "effv2_l"):
            assert s.default_dropout == 0.2
        assert (s.pretrained is None) == (name.startswith("tiny_") or name == "cxr_resnet")
    with pytest.raises(Exception):
        models.spec("effv2_s").default_dropout = 0.5  # frozen


def test_bad_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        models.build("effv2_xl")
    message = str(info.value)
    assert "effv2_xl" in message
    for name in EXPECTED_NAMES:
        assert name in message
    with pytest.raises(ValueError, match="tiny_swin"):
        models.spec("nope")


def test_import_keras_cxr_does_not_import_keras_hub():
    # keras_cxr may already be imported by other tests here; check a fresh one.
    code = "import sys, keras_cxr; print('keras_hub' in sys.modules, 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "False"]


def test_listing_models_imports_neither_keras_nor_torch():
    code = (
        "import sys, keras_cxr.models as m; m.names(); m.spec('swin_t'); "
        "loaded = [k for k in ('keras', 'torch', 'keras_hub') if k in sys.modules]; "
        "assert not loaded, loaded"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]


def test_only_keras_cxr_families_are_accelerated():
    assert all(models.spec(name).accelerated for name in models.names())
    model = models.build("tiny_effv2")
    assert marks.is_marked(model)

    def builder(images, name, image_size, source):
        x = keras.layers.Conv2D(4, 3, strides=4, name="conv")(images)
        return keras.layers.GlobalAveragePooling2D(name="pool")(x)

    models.register_family("test_user_family", builder, [("test_user_net", 32, 0.1, "0.1k", "Test.")])
    try:
        assert not models.spec("test_user_net").accelerated
        user_model = models.build("test_user_net")
        assert user_model.predict(_images(32), verbose=0).shape == (2, 4)
        assert not marks.is_marked(user_model)
    finally:
        del registry._REGISTRY["test_user_net"]
    assert "test_user_net" not in models.names()


# --- building ---------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_output_probabilities(name):
    model = models.build(name)
    size = _size(name)
    assert model.input_shape == (None, size, size, 3)
    assert model.name == name
    probs = model.predict(_images(size), verbose=0)
    assert probs.shape == (2, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # uint8 and float32 pixels give the same answer: normalisation is inside.
    as_float = model.predict(_images(size).astype("float32"), verbose=0)
    np.testing.assert_allclose(as_float, probs, atol=1e-6)
    assert model.get_layer("head_dropout").rate == 0.2
    assert abs(model.count_params() - _params_hint(name)) < 0.01 * _params_hint(name)
    if not name.startswith("cxr"):
        assert model.count_params() < 120_000


def test_build_arguments():
    model = models.build("tiny_effv2", num_classes=3, image_size=48, dropout=0.5)
    assert model.input_shape == (None, 48, 48, 3)
    assert model.output_shape == (None, 3)
    assert model.get_layer("head_dropout").rate == 0.5
    bad = [{"num_classes": 1}, {"image_size": 16}, {"image_size": 64.0}, {"dropout": 1.0}]
    for kwargs in bad:
        with pytest.raises(ValueError):
            models.build("tiny_effv2", **kwargs)


def test_family_image_size_checks():
    with pytest.raises(ValueError, match="multiple of 32"):
        models.build("swin_t", image_size=200)
    # Pretrained weights fix the window; from scratch a smaller window fits (see the window test).
    with pytest.raises(ValueError, match="at least 224"):
        models.build("swin_t", image_size=192, weights="imagenet")
    with pytest.raises(ValueError, match="at least 384"):
        models.build("swin_l", image_size=224, weights="imagenet")
    with pytest.raises(ValueError, match="multiple of 14"):
        models.build("tiny_dinov2", image_size=64)


@pytest.mark.parametrize(
    "name,size",
    [("effv2_s", 64), ("convnext_t", 64), ("effv2_rw_t", 64), ("swin_t", 224), ("dinov2_s", 112)],
)
def test_real_architectures_build_offline(name, size):
    model = models.build(name, image_size=size)
    assert model.predict(_images(size, n=1), verbose=0).shape == (1, 4)
    hint = _params_hint(name)
    if not name.startswith("dinov2"):  # DINOv2's count depends on image_size
        assert abs(model.count_params() - hint) < 0.01 * hint


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


def test_imagenet_normalization():
    mean = np.array(models.layers.IMAGENET_MEAN) * 255
    std = np.array(models.layers.IMAGENET_STD) * 255
    x = np.stack([mean, mean + std]).reshape(1, 1, 2, 3).astype("float32")
    y = keras.ops.convert_to_numpy(models.ImageNetNormalization()(x))
    np.testing.assert_allclose(y[0, 0], [[0, 0, 0], [1, 1, 1]], atol=1e-5)


@pytest.mark.parametrize("name", ["tiny_effv2", "tiny_swin"])
def test_mixed_float16_outputs_float32(name):
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = models.build(name)
        assert model.get_layer("backbone").compute_dtype == "float16"
        assert model.get_layer("logits").compute_dtype == "float32"
        probs = model.predict(_images(_size(name)), verbose=0)
        assert probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


# --- weights sources ---------------------------------------------------------


def _hub_tokens(name, backbone, x):
    x = models.ImageNetNormalization()(x)
    return keras.ops.convert_to_numpy(backbone({"images": x} if name == "tiny_dinov2" else x))


def _model_tokens(model, x):
    x = model.get_layer("normalize")(x)
    return keras.ops.convert_to_numpy(model.get_layer("backbone")(x))


@pytest.mark.parametrize("name", sorted(HUB_BACKBONES))
def test_local_preset_directory_round_trip(name, tmp_path):
    size = _size(name)
    backbone = HUB_BACKBONES[name](name, size)
    backbone.save_to_preset(str(tmp_path / "preset"))
    model = models.build(name, weights=str(tmp_path / "preset"))
    x = _images(size).astype("float32")
    np.testing.assert_array_equal(_model_tokens(model, x), _hub_tokens(name, backbone, x))
    if name != "tiny_dinov2":  # DINOv2's position embeddings are re-based
        _assert_same_weights(_backbone_weights(model), backbone.get_weights())
    # Presets are rebuilt for the requested input size.
    bigger = size + 14 if name == "tiny_dinov2" else size + 32
    resized = models.build(name, image_size=bigger, weights=tmp_path / "preset")
    assert resized.input_shape == (None, bigger, bigger, 3)
    assert resized.predict(_images(bigger, n=1), verbose=0).shape == (1, 4)
    if name != "tiny_dinov2":  # DINOv2 re-interpolates its position embeddings
        _assert_same_weights(_backbone_weights(resized), backbone.get_weights())


@pytest.mark.parametrize(
    "name", ["tiny_effv2", "tiny_convnext", "cxr_resnet", "tiny_swin", "tiny_dinov2"]
)
def test_weights_file_loads_into_backbone(name, tmp_path):
    source = models.build(name)
    path = str(tmp_path / "backbone.weights.h5")
    source.get_layer("backbone").save_weights(path)
    model = models.build(name, weights=path)
    _assert_same_weights(_backbone_weights(model), _backbone_weights(source))


@pytest.mark.parametrize("name", sorted(HUB_BACKBONES))
def test_keras_hub_weights_file_loads_into_backbone(name, tmp_path):
    """A keras-hub backbone's weights file (as in a preset) also loads."""
    size = _size(name)
    backbone = HUB_BACKBONES[name](name, size)
    path = str(tmp_path / "model.weights.h5")
    backbone.save_weights(path)
    model = models.build(name, weights=path)
    x = _images(size).astype("float32")
    np.testing.assert_array_equal(_model_tokens(model, x), _hub_tokens(name, backbone, x))


def test_bad_weights_arguments(tmp_path):
    missing = str(tmp_path / "nowhere.weights.h5")
    with pytest.raises(ValueError, match="nowhere.weights.h5"):
        models.build("tiny_effv2", weights=missing)
    with pytest.raises(ValueError, match="config.json"):
        models.build("tiny_swin", weights=str(tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="weights.h5"):
        models.build("tiny_effv2", weights=str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="tiny_effv2"):
        models.build("tiny_effv2", weights="imagenet")
    with pytest.raises(ValueError, match="cxr_resnet"):
        models.build("cxr_resnet", weights="imagenet")
    (tmp_path / "config.json").write_text(json.dumps({}))
    with pytest.raises(ValueError, match="preset_dir"):
        models.build("tiny_convnext", weights=str(tmp_path))
    other = models.build("tiny_convnext")
    other.get_layer("backbone").save_weights(str(tmp_path / "convnext.weights.h5"))
    with pytest.raises(ValueError, match="could not load"):
        models.build("tiny_effv2", weights=str(tmp_path / "convnext.weights.h5"))


def test_imagenet_weights_request_the_right_sources(monkeypatch):
    """The download paths cannot run offline; check what they would fetch."""
    import keras_hub

    calls = []

    def fake_from_preset(preset, **kwargs):
        calls.append((preset, kwargs))
        raise RuntimeError("offline")

    monkeypatch.setattr(keras_hub.models.EfficientNetBackbone, "from_preset", fake_from_preset)
    monkeypatch.setattr(keras_hub.models.SwinTransformerBackbone, "from_preset", fake_from_preset)
    monkeypatch.setattr(keras_hub.models.DINOV2Backbone, "from_preset", fake_from_preset)
    for name in ["effv2_rw_s", "swin_l", "dinov2_b"]:
        with pytest.raises(RuntimeError, match="offline"):
            models.build(name, weights="imagenet")
    (rw_preset, rw_kwargs), (swin_preset, swin_kwargs), (dino_preset, dino_kwargs) = calls
    assert rw_preset == "efficientnet2_rw_s_ra2_imagenet"
    assert rw_kwargs["num_features"] == 1792 and rw_kwargs["input_shape"] == (384, 384, 3)
    assert swin_preset == "swin_large_patch4_window12_384"
    assert swin_kwargs["image_shape"] == (384, 384, 3)
    assert (dino_preset, dino_kwargs["image_shape"]) == ("dinov2_base", (448, 448, 3))

    def fake_application(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("offline")

    monkeypatch.setattr(keras.applications, "EfficientNetV2L", fake_application)
    with pytest.raises(RuntimeError, match="offline"):
        models.build("effv2_l", weights="imagenet")
    assert calls[-1]["weights"] == "imagenet" and calls[-1]["include_top"] is False
    assert calls[-1]["input_shape"] == (512, 512, 3)


# --- serialisation -------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_tiny_models(tmp_path_factory):
    """Every tiny family, trained a little and saved to .keras.

    Training first matters: keras-hub's DINOv2 reloads its fine-tuned
    position embeddings inexactly unless keras-cxr works around it.
    """
    root = tmp_path_factory.mktemp("saved")
    saved = {}
    labels = keras.utils.to_categorical(np.arange(8) % 4, 4)
    for name in TINY:
        model = models.build(name)
        model.compile(optimizer=keras.optimizers.AdamW(1e-2), loss="categorical_crossentropy")
        for step in range(2):
            model.train_on_batch(_images(_size(name), n=8, seed=10 + step), labels)
        x = _images(_size(name), seed=1)
        path = root / f"{name}.keras"
        model.save(path)
        np.save(root / f"{name}_x.npy", x)
        np.save(root / f"{name}_y.npy", model.predict(x, verbose=0))
        saved[name] = path
    return root, saved


@pytest.mark.parametrize("name", TINY)
def test_keras_file_reloads_to_identical_predictions(name, saved_tiny_models):
    root, saved = saved_tiny_models
    reloaded = keras.saving.load_model(saved[name])
    y = reloaded.predict(np.load(root / f"{name}_x.npy"), verbose=0)
    np.testing.assert_array_equal(y, np.load(root / f"{name}_y.npy"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "imports,load",
    [
        # Keras first: `import keras_cxr` registers the custom layers at once.
        ("import keras; import keras_cxr", "keras.saving.load_model"),
        # keras_cxr.models listed without Keras, then keras-cxr's loader.
        ("import keras_cxr.models; keras_cxr.models.names()", "keras_cxr.load_model"),
    ],
)
def test_keras_files_reload_in_fresh_process(saved_tiny_models, imports, load):
    """A process that only imports keras_cxr can load every family."""
    root, saved = saved_tiny_models
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        {imports}
        assert "keras_hub" not in sys.modules
        root = {str(root)!r}
        for name in {sorted(saved)!r}:
            model = {load}(f"{{root}}/{{name}}.keras")
            y = model.predict(np.load(f"{{root}}/{{name}}_x.npy"), verbose=0)
            diff = np.abs(y - np.load(f"{{root}}/{{name}}_y.npy")).max()
            print(name, diff)
            assert diff == 0, (name, diff)
        print("OK")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.strip().endswith("OK")


@pytest.mark.slow
def test_efficientnet_rw_s_num_features_survive_save_and_load(tmp_path):
    """keras-hub's EfficientNetBackbone.get_config() drops num_features=1792.

    A nested EfficientNetBackbone would come back with a 1280-wide top conv and
    fail to load its weights; keras-cxr nests the plain functional graph.
    """
    model = models.build("effv2_rw_s", image_size=64)
    top = model.get_layer("backbone").get_layer("top_conv")
    assert top.filters == 1792
    x = _images(64, seed=2)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "rw_s.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert reloaded.get_layer("backbone").get_layer("top_conv").filters == 1792
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), expected)


def test_keras_cxr_registers_custom_layers():
    for cls in (models.ImageNetNormalization, models.ClassTokenPooling):
        name = keras.saving.get_registered_name(cls)
        assert name == f"keras_cxr>{cls.__name__}"
        assert keras.saving.get_registered_object(name) is cls
    assert keras.saving.get_registered_name(models.DINOV2Features) == "keras_cxr>DINOV2Features"
    assert dinov2.DINOV2Features is models.DINOV2Features is models.layers.DINOV2Features
    assert keras_cxr.models is models


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
