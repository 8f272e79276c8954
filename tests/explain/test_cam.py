"""Class-activation maps: where they point, what they depend on, and their layouts per family."""

import keras
import numpy as np
import pytest

from keras_cxr import models
from keras_cxr.explain import ClassActivationMapper, ExplainError, feature_model
from keras_cxr.seeding import set_seed
from tests.explain.marks import grown_boxes, marked_images, pointing_rate


def _train(name, image_size, epochs, seed=0):
    set_seed(seed)
    x, y, _ = marked_images(640, image_size, mark_size=image_size // 4, seed=seed)
    model = models.build(name, image_size=image_size, num_classes=4)
    model.compile(keras.optimizers.AdamW(2e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    return model


@pytest.fixture(scope="module")
def marked_resnet():
    return _train("cxr_resnet", 96, epochs=3)


@pytest.fixture(scope="module")
def held_out():
    return marked_images(100, 96, mark_size=24, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "integrated-gradients"])
def test_cnn_map_peaks_inside_the_mark_that_decides_the_class(marked_resnet, held_out, method):
    x, y, boxes = held_out
    result = ClassActivationMapper(marked_resnet, method)(x)
    correct = result.targets == y
    rate, counted = pointing_rate(result.maps, boxes, correct)
    print(f"{method}: accuracy {correct.mean():.2f}, peak inside the mark for {rate:.2f} of {counted}")
    assert counted >= 50 and rate >= 0.8


@pytest.mark.slow
def test_map_follows_the_explained_class(marked_resnet, held_out):
    x, y, _ = held_out
    mapper = ClassActivationMapper(marked_resnet)
    marked = y > 0
    one, two = mapper(x[marked], targets=1).maps, mapper(x[marked], targets=2).maps
    assert (mapper(x[marked], targets=1).targets == 1).all()
    differences = np.abs(one - two).reshape(len(one), -1).max(axis=1)
    assert np.median(differences) > 0.2
    # The predicted class's map is the map of that class id.
    predicted = mapper(x[:8])
    by_id = mapper(x[:8], targets=predicted.targets)
    np.testing.assert_allclose(predicted.maps, by_id.maps, atol=1e-6)


@pytest.mark.slow
def test_swin_token_map_peaks_inside_the_mark(held_out):
    """The default token map (integrated gradients per token) peaks inside the mark, as the CNN's Grad-CAM does.

    The gradient-weighted token map (Grad-CAM on the tokens entering the last
    stage) is coarser: measured here inside the mark for about 0.57 of the
    images, within one token (8 px) for about 0.80, so it is held to the latter.
    """
    x, y, boxes = held_out
    model = _train("tiny_swin", 96, epochs=15)
    mapper = ClassActivationMapper(model)
    assert mapper.method == "integrated-gradients" and mapper.layout.grid == (12, 12)
    result = mapper(x)
    correct = result.targets == y
    inside, counted = pointing_rate(result.maps, boxes, correct)
    gradcam = ClassActivationMapper(model, "gradcam")(x)
    np.testing.assert_array_equal(gradcam.targets, result.targets)
    grown = grown_boxes(boxes, 8, 96)
    gradcam_inside, _ = pointing_rate(gradcam.maps, boxes, correct)
    gradcam_near, _ = pointing_rate(gradcam.maps, grown, correct)
    print(f"tiny_swin: accuracy {correct.mean():.2f}; peak inside the mark: integrated gradients {inside:.2f}, "
          f"gradcam {gradcam_inside:.2f} (within 8 px {gradcam_near:.2f})")
    assert correct.mean() >= 0.9 and counted >= 50
    assert inside >= 0.8  # the mark covers 6% of the image: chance is about 0.06
    assert gradcam_near >= 0.75 and gradcam_inside >= 0.3
    other = ClassActivationMapper(model)(x[y > 0], targets=(y[y > 0] % 3) + 1)  # another marked class
    differences = np.abs(other.maps - result.maps[y > 0]).reshape(len(other.maps), -1).max(axis=1)
    assert np.median(differences) > 0.2


@pytest.mark.parametrize("name, kind, grid, prefix", [
    ("cxr_resnet", "map", (4, 4), 0),
    ("tiny_effv2", "map", (8, 8), 0),
    ("tiny_effv2_rw", "map", (8, 8), 0),
    ("tiny_convnext", "map", (2, 2), 0),
    ("tiny_swin", "tokens", (8, 8), 0),
    ("tiny_dinov2", "tokens", (4, 4), 1),
])
def test_every_family_gives_maps_and_the_models_own_probabilities(name, kind, grid, prefix):
    set_seed(0)
    model = models.build(name, image_size=64 if name == "cxr_resnet" else None)
    size = model.input_shape[1]
    images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3)).astype(np.uint8)
    mapper = ClassActivationMapper(model, steps=2)
    assert (mapper.layout.kind, mapper.layout.grid, mapper.layout.prefix_tokens) == (kind, grid, prefix)
    assert mapper.method == ("integrated-gradients" if kind == "tokens" else "gradcam")
    result = mapper(images)
    assert result.maps.shape == (3, size, size) and result.maps.dtype == np.float32
    assert result.maps.min() >= 0 and np.isclose(result.maps.max(axis=(1, 2)), 1).any()
    np.testing.assert_allclose(result.probs, model.predict(images, verbose=0), atol=1e-5)
    np.testing.assert_array_equal(result.targets, result.probs.argmax(axis=1))


def test_gradcam_of_a_pooled_linear_head_is_the_class_activation_map():
    """With global average pooling then a linear layer, Grad-CAM's weights are the class's weights / cells."""
    set_seed(0)
    model = models.build("cxr_resnet", image_size=64)
    images = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    features, _ = feature_model(model)[0](images, training=False)
    features = keras.ops.convert_to_numpy(features)
    weights = model.get_layer("logits").get_weights()[0][:, 3]
    cam = np.maximum(features @ weights, 0)
    import torch

    expected = torch.nn.functional.interpolate(torch.tensor(cam)[:, None], size=(64, 64), mode="bilinear")[:, 0]
    expected = expected.numpy() / expected.numpy().max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(ClassActivationMapper(model)(images, targets=3).maps, expected, atol=1e-5)


def test_models_without_a_map_are_refused_with_a_reason():
    plain = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(4)])
    with pytest.raises(ExplainError, match="no 'backbone' and 'logits' layers"):
        ClassActivationMapper(plain)
    images = keras.Input((8, 8, 3), name="images")
    pooled = keras.Model(images, keras.layers.GlobalAveragePooling2D()(images), name="backbone")
    logits = keras.layers.Dense(4, name="logits")(pooled(images))
    flat = keras.Model(images, keras.layers.Softmax(name="probs")(logits))
    with pytest.raises(ExplainError, match="holds no 4-D feature map or token sequence"):
        ClassActivationMapper(flat)


def test_bad_method_and_target_are_refused():
    model = models.build("cxr_resnet", image_size=32)
    with pytest.raises(ExplainError, match=r"'scorecam' is not one of auto, gradcam, gradcam\+\+, integrated-grad"):
        ClassActivationMapper(model, "scorecam")
    with pytest.raises(ExplainError, match="class ids must be in 0..3"):
        ClassActivationMapper(model)(np.zeros((1, 32, 32, 3), np.uint8), targets=4)
