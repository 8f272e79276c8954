import numpy as np
import pytest
from PIL import Image

from keras_cxr.data.images import ImageError, check_image, load_image, to_rgb_uint8


def save(tmp_path, image, name, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_real_jpeg_matches_pillow_reference(cxr4_dir):
    path = cxr4_dir / "images" / "2.jpeg"
    x = load_image(path, 96)
    assert x.shape == (96, 96, 3) and x.dtype == np.uint8
    with Image.open(path) as im:
        reference = np.asarray(im.convert("RGB").resize((96, 96), Image.BILINEAR))
    np.testing.assert_array_equal(x, reference)
    # Grayscale replicated to RGB.
    assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2])


def test_gray_values_are_exact_and_replicated(tmp_path):
    gray = np.array([[0, 17], [200, 255]], np.uint8)
    x = load_image(save(tmp_path, Image.fromarray(gray), "g.png"), 2)
    assert x[..., 0].tolist() == [[0, 17], [200, 255]]
    assert np.array_equal(x[..., 2], gray)


def test_resize_antialiases_when_shrinking(tmp_path):
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    x = load_image(save(tmp_path, Image.fromarray(checker), "c.png"), 8)
    # Averaging a 1-pixel checkerboard gives mid-gray, not 0/255 aliasing.
    assert 120 <= x.min() and x.max() <= 135


def test_non_square_is_stretched(tmp_path):
    wide = np.zeros((10, 40), np.uint8)
    wide[:, 20:] = 255
    x = load_image(save(tmp_path, Image.fromarray(wide), "w.png"), 16)
    assert x.shape == (16, 16, 3)
    assert x[:, :7, 0].max() == 0 and x[:, 9:, 0].min() == 255


def test_16bit_png_is_stretched_by_its_range(tmp_path):
    values = np.array([[1000, 2000], [3000, 5000]], np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    x = load_image(save(tmp_path, image, "a.png"), 2)
    # (v - 1000) / 4000 * 255 = 0, 63.75, 127.5, 255 -> rounded half to even.
    assert x[..., 0].tolist() == [[0, 64], [128, 255]]


def test_float_and_32bit_tiffs_are_stretched_by_their_range(tmp_path):
    floats = np.array([[-1.0, 0.0], [1.0, 3.0]], np.float32)
    x = load_image(save(tmp_path, Image.fromarray(floats), "f.tiff"), 2)
    assert x[..., 1].tolist() == [[0, 64], [128, 255]]
    ints = np.array([[-70000, 0], [70000, 250000]], np.int32)
    x = load_image(save(tmp_path, Image.fromarray(ints), "i.tiff"), 2)
    assert x[..., 1].tolist() == [[0, 56], [112, 255]]  # 70000/320000*255 = 55.78


def test_constant_16bit_image_is_black(tmp_path):
    x = load_image(save(tmp_path, Image.fromarray(np.full((3, 3), 777, np.uint16)), "k.png"), 3)
    assert x.max() == 0


def test_alpha_is_composited_on_black(tmp_path):
    la = Image.fromarray(np.array([[[200, 128], [200, 255], [200, 0]]], np.uint8), mode="LA")
    assert to_rgb_uint8(la).mode == "RGB"
    x = load_image(save(tmp_path, la, "la.png"), 3)  # 3x1 -> 3x3: rows repeat
    assert x[2].tolist() == [[100, 100, 100], [200, 200, 200], [0, 0, 0]]  # 200 * 128 / 255
    rgba = np.array([[[255, 100, 10, 51]]], np.uint8)
    x = load_image(save(tmp_path, Image.fromarray(rgba, mode="RGBA"), "rgba.png"), 1)
    assert x[0, 0].tolist() == [51, 20, 2]  # (v * 51 + 127) // 255


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 200, 100, 50, 90, 90, 90])
    image.putdata([1, 2])
    x = load_image(save(tmp_path, image, "p.png", transparency=2), 2)
    assert x.shape == (2, 2, 3)
    assert x[0, 0].tolist() == [200, 100, 50] and x[0, 1].tolist() == [0, 0, 0]
    plain = load_image(save(tmp_path, image, "q.png"), 2)
    assert plain[0, 1].tolist() == [90, 90, 90]


def test_cmyk_and_one_bit(tmp_path):
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((1, 0), (0, 255, 255, 0))
    x = load_image(save(tmp_path, cmyk, "c.tiff"), 2)
    assert x[0, 0].tolist() == [255, 255, 255] and x[0, 1].tolist() == [255, 0, 0]
    bits = Image.fromarray(np.array([[True, False]]))
    assert bits.mode == "1"
    x = load_image(save(tmp_path, bits, "b.png"), 2)
    assert x[0, 0].tolist() == [255, 255, 255] and x[0, 1].tolist() == [0, 0, 0]


def test_exif_orientation_is_ignored(tmp_path):
    pixels = np.zeros((32, 32), np.uint8)
    pixels[:, :16] = 255  # bright left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = save(tmp_path, Image.fromarray(pixels), "o.jpg", exif=exif, quality=95)
    x = load_image(path, 32)[..., 0].astype(int)
    assert x[:, :12].mean() > 240 and x[:, 20:].mean() < 15


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("new_filename,normal\n"), "cannot read image"),
        (lambda p: p.mkdir(), "cannot read image"),
    ],
    ids=["missing", "zero-byte", "not-an-image", "directory"],
)
def test_unreadable_files(tmp_path, make, message):
    path = tmp_path / "bad.jpeg"
    make(path)
    with pytest.raises(ImageError, match=message) as e:
        load_image(path, 8)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "make, message",
    [(lambda p: None, "file not found"), (lambda p: p.write_bytes(b""), "empty file"),
     (lambda p: p.write_text("x"), "cannot read image")],
    ids=["missing", "zero-byte", "not-an-image"],
)
def test_unreadable_files_fail_the_quick_check_too(tmp_path, make, message):
    path = tmp_path / "bad.jpeg"
    make(path)
    with pytest.raises(ImageError, match=message):
        check_image(path)


@pytest.mark.parametrize("side, keep", [(64, 600), (1024, 0.5), (1024, 0.98)])
def test_truncated_jpeg(tmp_path, side, keep):
    """Cut anywhere, even 2% short of the end of a large file: both the full decode and the quick check fail."""
    noise = np.random.default_rng(0).integers(0, 256, (side, side), np.uint8)
    path = save(tmp_path, Image.fromarray(noise), "t.jpeg")
    data = path.read_bytes()
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(ImageError, match="t.jpeg: cannot read image"):
        load_image(path, 8)
    with pytest.raises(ImageError, match="t.jpeg: cannot read image"):
        check_image(path)


def test_quick_check_passes_every_readable_kind(tmp_path):
    rng = np.random.default_rng(1)
    for name, image in [("g.jpeg", Image.fromarray(rng.integers(0, 256, (300, 200), np.uint8))),
                        ("c.jpeg", Image.fromarray(rng.integers(0, 256, (40, 40, 4), np.uint8), "CMYK")),
                        ("w.png", Image.fromarray(rng.integers(0, 4096, (30, 30), np.uint16))),
                        ("a.png", Image.fromarray(rng.integers(0, 256, (9, 9, 4), np.uint8), "RGBA"))]:
        check_image(save(tmp_path, image, name))  # does not raise


def test_decompression_bomb_is_an_image_error(tmp_path, monkeypatch):
    path = save(tmp_path, Image.new("L", (100, 100)), "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # Pillow only warns below 2x
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageError, match="decompression-bomb limit"):
        load_image(path, 8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # Pillow raises above 2x
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path, 8)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_size(tmp_path, size):
    with pytest.raises(ValueError, match="size must be a positive integer"):
        load_image(tmp_path / "x.png", size)


def test_gray_files_keep_one_channel_and_match_the_rgb_resize(cxr4_dir):
    from PIL import Image

    path = cxr4_dir / "images" / "2.jpeg"
    for size in (64, 300, 384):
        rgb = load_image(path, size)
        gray = load_image(path, size, keep_gray=True)
        assert gray.shape == (size, size, 1) and rgb.shape == (size, size, 3)
        np.testing.assert_array_equal(np.repeat(gray, 3, axis=-1), rgb)
        # Resizing the one band equals Pillow resizing the RGB image.
        with Image.open(path) as image:
            expected = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
        np.testing.assert_array_equal(rgb, expected)


def test_file_object_decodes_like_its_path_and_errors_name_it(tmp_path, cxr4_dir):
    import io

    path = cxr4_dir / "images" / "2.jpeg"
    data = io.BytesIO(path.read_bytes())
    data.name = "cxr4:2.jpeg"
    np.testing.assert_array_equal(load_image(data, 64), load_image(path, 64))
    broken = io.BytesIO(path.read_bytes()[:500])
    broken.name = "record 7"
    with pytest.raises(ImageError, match=r"^record 7: cannot read image"):
        load_image(broken, 64)
    with pytest.raises(ImageError, match=r"^<bytes>: cannot read image: empty file"):
        check_image(io.BytesIO(b""))
