import math

import numpy as np
import pytest
from PIL import Image, ImageFilter

from keras_cxr.config import ConfigError
from keras_cxr.data import mixing as mixing_module
from keras_cxr.data.augment import Augmentation, affine_matrix, warp_affine
from keras_cxr.data.mixing import Mixing, cutmix, mixup

OFF = Augmentation.off()


def noise_image(seed=0, size=16):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def gray_image(seed=0, size=32, low=100, high=140):
    gray = np.random.default_rng(seed).integers(low, high, (size, size), dtype=np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


# --- configuration -----------------------------------------------------------


def test_defaults_are_the_recipe_and_round_trip():
    aug = Augmentation()
    assert (aug.rotation, aug.translate, aug.scale, aug.shear) == (10.0, 0.08, (0.92, 1.08), 12.0)
    assert (aug.brightness, aug.contrast, aug.erasing_p, aug.erasing_scale) == (0.2, 0.2, 0.35, (0.02, 0.12))
    assert (aug.clahe, aug.clahe_clip, aug.clahe_grid, aug.unsharp, aug.hflip) == (False, 2.5, 8, False, False)
    assert Augmentation.from_dict(aug.to_dict()) == aug
    assert Augmentation.from_dict({"scale": [0.9, 1.1]}).scale == (0.9, 1.1)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"rotation": -1}, "rotation"),
        ({"translate": 1.0}, "translate"),
        ({"scale": (1.1, 0.9)}, "scale"),
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"shear": 90}, "shear"),
        ({"brightness": 1.5}, "brightness"),
        ({"erasing_p": 2}, "erasing_p"),
        ({"erasing_scale": (0.2, 0.1)}, "erasing_scale"),
        ({"clahe_grid": 0}, "clahe_grid"),
        ({"clahe_clip": 0.0}, "clahe_clip"),
    ],
)
def test_validation_names_the_field(changes, field):
    with pytest.raises(ConfigError, match=f"Augmentation.{field}"):
        Augmentation(**changes)


def test_unknown_field_and_wrong_type():
    with pytest.raises(ConfigError, match="did you mean 'rotation'"):
        Augmentation.from_dict({"rotaton": 5})
    with pytest.raises(ConfigError, match="expected true or false"):
        Augmentation(clahe="yes")


# --- geometry ----------------------------------------------------------------


def test_affine_matrix_composition():
    assert np.allclose(affine_matrix((10, 10)), np.eye(3))
    # 90 degrees counter-clockwise about the centre (5, 5): the point right of
    # the centre moves above it (y points down).
    m = affine_matrix((10, 10), angle=90)
    assert np.allclose(m @ [8, 5, 1], [5, 2, 1])
    m = affine_matrix((10, 10), scale=2, translate=(1, -2))
    assert np.allclose(m @ [6, 5, 1], [5 + 2 + 1, 5 - 2, 1])
    m = affine_matrix((10, 10), shear=45)
    assert np.allclose(m @ [5, 7, 1], [7, 7, 1])  # x += tan(45) * (y - cy)


def test_warp_integer_translation_is_an_exact_shift():
    image = noise_image()
    out = warp_affine(image, affine_matrix((16, 16), translate=(3, 0)))
    np.testing.assert_array_equal(out[:, 3:], image[:, :-3])
    assert out[:, :3].max() == 0


def test_warp_quarter_turn_is_rot90():
    image = noise_image()
    out = warp_affine(image, affine_matrix((16, 16), angle=90))
    assert np.abs(out.astype(int) - np.rot90(image).astype(int)).max() <= 1


# --- apply ---------------------------------------------------------------------


def test_disabled_augmentation_is_bit_exact():
    image = noise_image()
    for seed in range(5):
        out = OFF.apply(image, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(OFF.preprocess(image), image)


def test_apply_is_reproducible_and_keeps_shape_and_dtype():
    aug = Augmentation(erasing_p=1.0)
    image = gray_image(size=24)
    a = aug.apply(image, np.random.default_rng(7))
    b = aug.apply(image, np.random.default_rng(7))
    c = aug.apply(image, np.random.default_rng(8))
    assert a.shape == image.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, image)


def test_brightness_multiplies_by_the_drawn_factor():
    image = gray_image(low=0, high=256)
    out = OFF.replace(brightness=0.2).apply(image, np.random.default_rng(3))
    factor = np.random.default_rng(3).uniform(0.8, 1.2)
    expected = np.rint(np.clip(image.astype(np.float32) * np.float32(factor), 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_contrast_blends_with_the_mean_luma():
    image = noise_image(size=8)
    out = OFF.replace(contrast=0.5).apply(image, np.random.default_rng(4))
    factor = np.random.default_rng(4).uniform(0.5, 1.5)
    mean = (image.astype(np.float64) @ [0.299, 0.587, 0.114]).mean()
    expected = np.clip(factor * image + (1 - factor) * mean, 0, 255)
    assert np.abs(out - expected).max() <= 0.5 + 1e-3


def test_erasing_fills_one_box_of_the_configured_area():
    aug = OFF.replace(erasing_p=1.0, erasing_scale=(0.05, 0.1))
    image = np.full((40, 40, 3), 7, np.uint8)
    for seed in range(20):
        out = aug.apply(image, np.random.default_rng(seed))
        rows, cols = np.nonzero((out != 7).any(axis=-1))
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        # Everything outside the bounding box of the changes is untouched...
        box = np.zeros((40, 40), bool)
        box[top:bottom, left:right] = True
        assert (out[~box] == 7).all()
        # ...and its area matches the drawn fraction (within rounding of sides).
        fraction = (bottom - top) * (right - left) / 1600
        assert 0.035 <= fraction <= 0.125, fraction


def test_erasing_probability():
    aug = OFF.replace(erasing_p=0.35)
    image = np.zeros((12, 12, 3), np.uint8)
    rng = np.random.default_rng(0)
    n = 1000
    erased = sum(aug.apply(image, rng).any() for _ in range(n))
    assert abs(erased / n - 0.35) < 4 * math.sqrt(0.35 * 0.65 / n)


def test_hflip_flips_half_the_time():
    image = noise_image()
    aug = OFF.replace(hflip=True)
    rng = np.random.default_rng(1)
    outs = [aug.apply(image, rng) for _ in range(400)]
    flipped = sum(np.array_equal(o, image[:, ::-1]) for o in outs)
    same = sum(np.array_equal(o, image) for o in outs)
    assert flipped + same == 400
    assert abs(flipped / 400 - 0.5) < 4 * math.sqrt(0.25 / 400)
    assert not any(np.array_equal(OFF.apply(image, rng), image[:, ::-1]) for _ in range(20))


def test_apply_leaves_the_input_alone():
    image = gray_image()
    copy = image.copy()
    Augmentation(erasing_p=1.0).apply(image, np.random.default_rng(0))
    np.testing.assert_array_equal(image, copy)


# --- deterministic preprocessing ---------------------------------------------


def test_clahe_is_preprocessing_not_random():
    import cv2

    image = gray_image(low=100, high=140, size=64)
    aug = OFF.replace(clahe=True)
    out = aug.preprocess(image)
    expected = cv2.createCLAHE(clipLimit=2.5, tileGridSize=(8, 8)).apply(np.ascontiguousarray(image[..., 0]))
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], expected)
    assert out[..., 0].std() > 2 * image[..., 0].std()  # low contrast stretched
    np.testing.assert_array_equal(aug.apply(image, np.random.default_rng(0)), image)


def test_clahe_on_a_colour_image_stretches_lightness():
    image = gray_image(size=64)
    image[..., 0] = np.clip(image[..., 0].astype(int) + 40, 0, 255)  # reddish, low contrast
    out = OFF.replace(clahe=True).preprocess(image)
    luma = [0.299, 0.587, 0.114]
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (out @ luma).std() > 2 * (image @ luma).std()
    assert (out[..., 0].astype(int) - out[..., 1]).mean() > 10  # still reddish


def test_unsharp_matches_pillow():
    image = gray_image(low=0, high=256)
    out = OFF.replace(unsharp=True).preprocess(image)
    expected = np.asarray(Image.fromarray(image).filter(ImageFilter.UnsharpMask()))
    np.testing.assert_array_equal(out, expected)
    assert not np.array_equal(out, image)


# --- mixing --------------------------------------------------------------------


def test_mixing_config():
    assert Mixing() == Mixing(mixup_p=0.0, mixup_alpha=1.2, cutmix_p=0.0, cutmix_alpha=1.0)
    assert not Mixing().enabled and Mixing(cutmix_p=0.5).enabled
    with pytest.raises(ConfigError, match="Mixing.mixup_p"):
        Mixing(mixup_p=1.5)
    with pytest.raises(ConfigError, match="Mixing.cutmix_alpha"):
        Mixing(cutmix_alpha=0)


def test_mixup_values():
    x = np.stack([np.full((2, 2, 3), 100, np.uint8), np.full((2, 2, 3), 200, np.uint8)])
    y = np.eye(2, dtype=np.float32)
    w = np.array([1.0, 3.0], np.float32)
    mx, my, mw = mixup(x, y, w, 0.25, np.array([1, 0]))
    assert mx.dtype == np.uint8
    assert mx[0].max() == mx[0].min() == 175 and mx[1].min() == 125
    np.testing.assert_allclose(my, [[0.25, 0.75], [0.75, 0.25]])
    np.testing.assert_allclose(mw, [2.5, 1.5])
    assert x[0, 0, 0, 0] == 100  # inputs untouched


def test_cutmix_lambda_is_the_clipped_box_area():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = np.stack([np.zeros((20, 30, 3), np.uint8), np.full((20, 30, 3), 255, np.uint8)])
        y = np.eye(2, dtype=np.float32)
        mx, my, _, lam = cutmix(x, y, None, rng.uniform(0.1, 0.9), np.array([1, 0]), rng)
        pasted = (mx[0, ..., 0] == 255).mean()
        assert math.isclose(pasted, 1 - lam)
        np.testing.assert_allclose(my[0], [lam, 1 - lam], rtol=1e-6)
        assert ((mx[1, ..., 0] == 0) == (mx[0, ..., 0] == 255)).all()


def test_mixing_apply_soft_targets_and_weights():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    y = np.eye(4, dtype=np.float32)
    w = np.array([1, 2, 3, 4], np.float32)
    for mixing in (Mixing(mixup_p=1.0), Mixing(cutmix_p=1.0)):
        mx, my, mw = mixing.apply(x, y, w, np.random.default_rng(5))
        assert mx.shape == x.shape and mx.dtype == np.uint8 and my.dtype == np.float32
        np.testing.assert_allclose(my.sum(axis=1), 1, rtol=1e-6)
        assert (my.max(axis=1) < 1).sum() >= 2  # soft wherever the permutation moved a row
        np.testing.assert_allclose(mw, my @ w, rtol=1e-5)  # weights mixed like targets
    unchanged = Mixing().apply(x, y, None, rng)
    assert unchanged[0] is x and unchanged[1] is y and unchanged[2] is None


def test_mixing_chooses_mixup_then_cutmix(monkeypatch):
    calls = {"mixup": 0, "cutmix": 0}

    def fake(name):
        def record(x, y, w, *args):
            calls[name] += 1
            return (x, y, w) if name == "mixup" else (x, y, w, 1.0)

        return record

    monkeypatch.setattr(mixing_module, "mixup", fake("mixup"))
    monkeypatch.setattr(mixing_module, "cutmix", fake("cutmix"))
    mixing = Mixing(mixup_p=0.6, cutmix_p=0.5)
    x, y = np.zeros((2, 4, 4, 3), np.uint8), np.eye(2, dtype=np.float32)
    rng = np.random.default_rng(0)
    n = 2000
    for _ in range(n):
        mixing.apply(x, y, None, rng)
    for name, p in (("mixup", 0.6), ("cutmix", 0.4 * 0.5)):
        assert abs(calls[name] / n - p) < 4 * math.sqrt(p * (1 - p) / n), calls


def test_warp_affine_matches_pillows_bilinear_transform():
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    image = (127 + 60 * np.sin(xx / 7.0) * np.cos(yy / 11.0)).astype(np.uint8)[..., None].repeat(3, axis=-1)
    for _ in range(5):
        matrix = affine_matrix((96, 96), angle=rng.uniform(-10, 10), translate=(rng.uniform(-8, 8), 0),
                               scale=rng.uniform(0.92, 1.08), shear=rng.uniform(-12, 12))
        inverse = np.linalg.inv(matrix)
        pil = np.asarray(Image.fromarray(image).transform((96, 96), Image.AFFINE, data=tuple(inverse[:2].reshape(-1)),
                                                          resample=Image.BILINEAR, fillcolor=(0, 0, 0)))
        ours = warp_affine(image, matrix)
        # Compare where both sample inside the source, a pixel away from the filled border.
        inside = warp_affine(np.full_like(image, 255), matrix)[..., 0] == 255
        inside[1:-1, 1:-1] &= inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]
        inside[[0, -1]] = False
        inside[:, [0, -1]] = False
        diff = np.abs(ours[inside].astype(int) - pil[inside].astype(int))
        assert inside.mean() > 0.6 and diff.mean() < 0.6 and diff.max() <= 2
        gray = warp_affine(image[..., :1], matrix)
        assert gray.shape == (96, 96, 1)
        np.testing.assert_array_equal(gray[..., 0], ours[..., 0])


def test_gray_images_augment_like_their_rgb_copies():
    aug = Augmentation(erasing_p=0.0)
    rng_image = np.random.default_rng(1)
    gray = rng_image.integers(0, 256, (40, 40, 1), dtype=np.uint8)
    rgb = np.repeat(gray, 3, axis=-1)
    for seed in range(5):
        out_gray = aug.apply(gray, np.random.default_rng(seed))
        out_rgb = aug.apply(rgb, np.random.default_rng(seed))
        assert out_gray.shape == (40, 40, 1)
        assert np.abs(out_gray[..., 0].astype(int) - out_rgb[..., 0].astype(int)).max() <= 1
