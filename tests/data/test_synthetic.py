"""Tests for the procedural chest-X-ray generator (keras_cxr.data.synthetic).

The class-signal thresholds below were chosen from measurements, not guessed:

* Welch t of the per-class statistics (40 independent patients per class,
  128 px) over generator seeds 0-5 ranged: COVID-19 lower-outer haze 2.5-5.5,
  virus fine-texture 4.9-8.6, bacteria left-right asymmetry 3.5-5.8. The test
  uses one fixed seed and asserts t > 2.
* Logistic regression on 32x32 pixels (300 balanced images, 64 px, 75 %
  train) scored 0.59-0.63 held-out accuracy over seeds 0-4 (0.587 for the
  seed used here; chance 0.25; a linear model cannot undo the patients' pose
  variation). The test asserts 0.45 < accuracy < 0.90. For reference, a
  4-block CNN trained 25 epochs on 600 such images reached 0.93 held-out
  accuracy at 64 px (0.83 with 240 training images, 40 epochs): learnable,
  not trivial.
"""

import os
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from keras_cxr.data import synthetic as syn

HEADER = ["new_filename", "normal", "bacteria", "virus", "COVID-19"]
SMALL = {"train": (3, 4, 3, 2), "val": (1, 2, 1, 1), "test": (2, 1, 1, 1)}


def _zone(im, r0, r1, c0, c1):
    n = im.shape[-1]
    return im[..., int(r0 * n) : int(r1 * n), int(c0 * n) : int(c1 * n)].mean(axis=(-1, -2))


def _welch_t(a, b):
    return (a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))


def _read_split(root, split):
    return pd.read_csv(root / f"{split}.csv")


# --------------------------------------------------------------------------
# render_image
# --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64, 128])
def test_render_shape_dtype_and_anatomy(size):
    for c in range(4):
        img = syn.render_image(c, np.random.default_rng(c), size)
        assert img.shape == (size, size) and img.dtype == np.uint8
        assert img.std() > 20
        f = img.astype(float)
        # dark air outside the body at the upper corners, bright body below
        assert f[: size // 10, : size // 20].mean() < 60
        assert f[int(0.85 * size) :, int(0.3 * size) : int(0.7 * size)].mean() > 150
        # lung fields (one per side) are darker than the mediastinum between them
        lungs = (_zone(f, 0.3, 0.5, 0.15, 0.3) + _zone(f, 0.3, 0.5, 0.7, 0.85)) / 2
        assert lungs < _zone(f, 0.3, 0.5, 0.47, 0.53) - 30


def test_heart_shadow_is_on_the_image_right():
    # patient's left = image right: the heart bulges into the lower right lung
    # field, so that zone is much brighter than its mirror image (min 36 grey
    # levels measured over 40 images)
    imgs = np.stack([syn.render_image(i % 4, np.random.default_rng(i), 64) for i in range(20)]).astype(float)
    heart_side = _zone(imgs, 0.55, 0.72, 0.58, 0.72)
    mirror = _zone(imgs, 0.55, 0.72, 0.28, 0.42)
    assert (heart_side > mirror + 15).all()


def test_render_deterministic():
    for c in range(4):
        a = syn.render_image(c, np.random.default_rng(123), 64)
        b = syn.render_image(c, np.random.default_rng(123), 64)
        d = syn.render_image(c, np.random.default_rng(124), 64)
        np.testing.assert_array_equal(a, b)
        assert np.abs(a.astype(int) - d).mean() > 2


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError):
        syn.render_image(4, np.random.default_rng(0))
    with pytest.raises(ValueError):
        syn.render_image(0, np.random.default_rng(0), size=8)


def test_same_seed_gives_same_patient_and_lesion_map():
    base, base_lesion = syn.render_image(0, np.random.default_rng(7), 64, return_lesion=True)
    assert base_lesion.dtype == np.float32 and not base_lesion.any()
    for c in (1, 2, 3):
        img, lesion = syn.render_image(c, np.random.default_rng(7), 64, return_lesion=True)
        assert lesion.shape == (64, 64) and lesion.max() > 0.05
        diff = np.abs(img.astype(int) - base)
        assert diff.mean() > 0.5
        # far from the finding (after the acquisition blur) the image is unchanged
        far = lesion < 1e-4
        assert diff[far].mean() < 1.0


# --------------------------------------------------------------------------
# class signal
# --------------------------------------------------------------------------


def test_findings_have_the_described_location_and_texture():
    """Paired images (same patient, with vs without the finding)."""
    n, size = 24, 64
    stats = {}
    for c in (1, 2, 3):
        bal, lower, outer, hf = [], [], [], []
        for i in range(n):
            base = syn.render_image(0, np.random.default_rng([3, i]), size).astype(float)
            d = np.clip(syn.render_image(c, np.random.default_rng([3, i]), size) - base, 0, None)
            left, right = d[:, : size // 2].sum(), d[:, size // 2 :].sum()
            bal.append(min(left, right) / max(left, right, 1e-9))
            lower.append(d[size // 2 :].sum() / d.sum())
            outer.append((d[:, : size // 4].sum() + d[:, 3 * size // 4 :].sum()) / d.sum())
            hf.append(np.abs(d - syn._blur(d, 1.5)).mean() / d.mean())
        stats[c] = {k: np.array(v) for k, v in dict(bal=bal, lower=lower, outer=outer, hf=hf).items()}
    # bacteria: one focal consolidation in ONE lung
    assert stats[1]["bal"].max() < 0.05
    # virus and COVID-19: bilateral
    for c in (2, 3):
        assert stats[c]["bal"].mean() > 0.5 and stats[c]["bal"].min() > 0.15
    # COVID-19: lower zones and periphery, more than the perihilar virus pattern
    assert stats[3]["lower"].mean() > 0.5
    assert stats[3]["outer"].mean() > stats[2]["outer"].mean() + 0.15
    # virus: fine reticular texture, COVID-19: smooth ground glass
    assert stats[2]["hf"].mean() > 2 * stats[3]["hf"].mean()


def test_class_statistics_differ_between_independent_patients():
    per, size = 40, 128
    imgs = {
        c: np.stack([syn.render_image(c, np.random.default_rng([0, c, i]), size) for i in range(per)]) / 255.0
        for c in range(4)
    }

    def basal_haze(im):  # lower-outer lung zones minus mid lung zones
        low = (_zone(im, 0.55, 0.72, 0.10, 0.24) + _zone(im, 0.55, 0.72, 0.76, 0.90)) / 2
        mid = (_zone(im, 0.25, 0.45, 0.22, 0.36) + _zone(im, 0.25, 0.45, 0.66, 0.78)) / 2
        return low - mid

    def fine_texture(im):  # median horizontal gradient in perihilar lung zones
        g = np.abs(np.diff(np.stack([syn._blur(x, 1.0) for x in im]), axis=2))
        n = im.shape[-1]
        rows = slice(int(0.3 * n), int(0.6 * n))
        z = np.concatenate([g[:, rows, int(0.18 * n) : int(0.36 * n)], g[:, rows, int(0.64 * n) : int(0.82 * n)]], axis=2)
        return np.median(z.reshape(len(z), -1), axis=1)

    def left_right(im):
        return np.stack(
            [_zone(im, r, r + 0.15, 0.12, 0.38) - _zone(im, r, r + 0.15, 0.62, 0.88) for r in (0.2, 0.35, 0.5)], -1
        )

    typical = np.median(left_right(imgs[0]), axis=0)  # normal anatomy is asymmetric (heart)

    def asymmetry(im):
        return np.abs(left_right(im) - typical).max(axis=-1)

    assert _welch_t(basal_haze(imgs[3]), basal_haze(imgs[0])) > 2.0
    assert _welch_t(fine_texture(imgs[2]), fine_texture(imgs[0])) > 2.0
    assert _welch_t(asymmetry(imgs[1]), asymmetry(imgs[0])) > 2.0


def test_logistic_regression_learns_but_not_trivially():
    linear_model = pytest.importorskip("sklearn.linear_model")
    x, y = syn.make_synthetic_arrays((75, 75, 75, 75), image_size=64, seed=0)
    feats = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in x])
    feats = feats.reshape(len(x), -1) / 255.0
    train = np.arange(len(x)) < int(0.75 * len(x))
    mu, sd = feats[train].mean(0), feats[train].std(0) + 1e-6
    z = (feats - mu) / sd
    clf = linear_model.LogisticRegression(C=0.01, max_iter=500, tol=1e-3).fit(z[train], y[train])
    acc = (clf.predict(z[~train]) == y[~train]).mean()
    assert 0.45 < acc < 0.90, acc


def test_make_synthetic_arrays():
    x, y = syn.make_synthetic_arrays((2, 3, 1, 2), image_size=32, seed=5)
    assert x.shape == (8, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.bincount(y, minlength=4).tolist() == [2, 3, 1, 2]
    x2, y2 = syn.make_synthetic_arrays((2, 3, 1, 2), image_size=32, seed=5)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = syn.make_synthetic_arrays((2, 3, 1, 2), image_size=32, seed=6)
    assert not np.array_equal(x, x3)


# --------------------------------------------------------------------------
# dataset on disk
# --------------------------------------------------------------------------


def test_dataset_layout_and_csv_format(tmp_path):
    root = syn.make_synthetic_dataset(tmp_path / "ds", counts=SMALL, image_size=32, seed=1)
    assert root == (tmp_path / "ds").absolute()
    names = []
    for split, counts in SMALL.items():
        text = (root / f"{split}.csv").read_text()
        assert text.splitlines()[0] == ",".join(HEADER)
        df = _read_split(root, split)
        assert list(df.columns) == HEADER
        labels = df[HEADER[1:]]
        assert all(dt.kind == "i" for dt in labels.dtypes)
        assert labels.isin([0, 1]).all().all() and (labels.sum(axis=1) == 1).all()
        assert tuple(labels.sum(axis=0)) == counts
        for name in df["new_filename"]:
            assert re.fullmatch(r"syn_\d{6}\.png", name)
            with Image.open(root / "images" / name) as im:
                assert im.size == (32, 32) and im.mode == "L"
        names += list(df["new_filename"])
    assert len(names) == len(set(names)) == sum(map(sum, SMALL.values()))
    assert sorted(os.listdir(root / "images")) == sorted(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp folders left
    (tmp_path / "plain").mkdir()
    assert root.stat().st_mode == (tmp_path / "plain").stat().st_mode  # umask honoured


def test_dataset_rows_are_shuffled(tmp_path):
    root = syn.make_synthetic_dataset(tmp_path / "ds", counts={"train": (10, 10, 10, 10)}, image_size=16)
    df = _read_split(root, "train")
    cls = df[HEADER[1:]].to_numpy().argmax(axis=1)
    assert not (np.diff(cls) >= 0).all()
    assert not df["new_filename"].is_monotonic_increasing
    assert not (root / "val.csv").exists()


def test_dataset_is_byte_identical_for_a_seed(tmp_path):
    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a = files(syn.make_synthetic_dataset(tmp_path / "a", counts=SMALL, image_size=32, seed=3))
    b = files(syn.make_synthetic_dataset(tmp_path / "b", counts=SMALL, image_size=32, seed=3))
    c = files(syn.make_synthetic_dataset(tmp_path / "c", counts=SMALL, image_size=32, seed=4))
    assert a == b
    assert a["train.csv"] != c["train.csv"]
    assert sum(a[k] != c.get(k) for k in a if k.startswith("images/")) > 0


def test_jpeg_dataset(tmp_path):
    root = syn.make_synthetic_dataset(tmp_path / "j", counts={"test": (1, 1, 1, 1)}, image_size=32, image_format="jpeg")
    df = _read_split(root, "test")
    assert all(n.endswith(".jpeg") for n in df["new_filename"])
    with Image.open(root / "images" / df["new_filename"][0]) as im:
        assert im.format == "JPEG" and im.size == (32, 32)


def test_dataset_reuse_overwrite_and_refusal(tmp_path):
    out = tmp_path / "ds"
    root = syn.make_synthetic_dataset(out, counts=SMALL, image_size=32)
    marker = root / "synthetic.json"
    stamp = marker.stat().st_mtime_ns
    assert syn.make_synthetic_dataset(out, counts=SMALL, image_size=32) == root
    assert marker.stat().st_mtime_ns == stamp  # reused, not rewritten
    with pytest.raises(FileExistsError):
        syn.make_synthetic_dataset(out, counts=SMALL, image_size=48)
    syn.make_synthetic_dataset(out, counts=SMALL, image_size=48, overwrite=True)
    with Image.open(next((out / "images").iterdir())) as im:
        assert im.size == (48, 48)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    # folders this module did not write are never touched, even with overwrite
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        syn.make_synthetic_dataset(other, counts=SMALL, image_size=32, overwrite=True)
    assert (other / "keep.txt").read_text() == "x"
    # an existing empty folder is fine
    (tmp_path / "empty").mkdir()
    syn.make_synthetic_dataset(tmp_path / "empty", counts=SMALL, image_size=16)
    assert (tmp_path / "empty" / "train.csv").is_file()


def test_crash_leaves_no_dataset(tmp_path, monkeypatch):
    real = syn.render_image
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(syn, "render_image", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        syn.make_synthetic_dataset(tmp_path / "ds", counts=SMALL, image_size=16)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(syn, "render_image", real)
    root = syn.make_synthetic_dataset(tmp_path / "ds", counts=SMALL, image_size=16)
    assert (root / "synthetic.json").is_file()


@pytest.mark.parametrize(
    "counts",
    [{"train": (1, 2, 3)}, {"train": (1, 2, 3, -1)}, {"training": (1, 1, 1, 1)}, {"train": (0, 0, 0, 0)}],
)
def test_bad_counts_rejected(tmp_path, counts):
    with pytest.raises(ValueError):
        syn.make_synthetic_dataset(tmp_path / "x", counts=counts)
    assert not (tmp_path / "x").exists()


def test_bad_format_rejected(tmp_path):
    with pytest.raises(ValueError):
        syn.make_synthetic_dataset(tmp_path / "x", counts=SMALL, image_format="bmp")


def test_default_dataset_in_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_CXR_CACHE", str(tmp_path / "cache"))
    d = syn.default_dataset_dir()
    assert d.parent == tmp_path / "cache" and d.name.startswith("synthetic-v")
    assert syn.default_dataset_dir(image_size=64) != d
    assert syn.default_dataset_dir(seed=1) != d
    assert sum(map(sum, syn.DEFAULT_COUNTS.values())) == 352
    root = syn.ensure_default_dataset(counts=SMALL, image_size=16)
    assert root == syn.default_dataset_dir(counts=SMALL, image_size=16)
    stamp = (root / "synthetic.json").stat().st_mtime_ns
    assert syn.ensure_default_dataset(counts=SMALL, image_size=16) == root
    assert (root / "synthetic.json").stat().st_mtime_ns == stamp
    monkeypatch.delenv("KERAS_CXR_CACHE")
    assert syn.default_dataset_dir().parent == syn.Path.home() / ".cache" / "keras_cxr"
