import math

import keras
import numpy as np
import pytest
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
from PIL import Image

from keras_cxr.data import dataset as dataset_module
from keras_cxr.data import (
    Augmentation,
    CXRDataset,
    Mixing,
    Table,
    class_weights_for,
    draw_epoch,
    load_image,
    read_table,
)

# Rows 0..23 of the generated table: 12 normal, 6 bacteria, 4 virus, 2 COVID-19.
CLASSES = np.array([0] * 12 + [1] * 6 + [2] * 4 + [3] * 2)


@pytest.fixture
def small_table(tmp_path):
    """24 tiny images whose pixels all equal 10 * row, alternately PNG and JPEG."""
    paths = []
    for row in range(len(CLASSES)):
        path = tmp_path / f"{row}.{'png' if row % 2 else 'jpg'}"
        Image.fromarray(np.full((12, 10), 10 * row, np.uint8)).save(path, quality=100)
        paths.append(str(path))
    return Table(
        csv_path="small.csv",
        filenames=[p.rsplit("/", 1)[1] for p in paths],
        paths=paths,
        labels=np.eye(4)[CLASSES],
        sample_weight=CLASSES + 1.0,
        class_names=("normal", "bacteria", "virus", "COVID-19"),
    )


def rows_of(x):
    """Recover generated-table rows from pixel values (JPEG is off by <= 1)."""
    return np.rint(x[:, 0, 0, 0] / 10).astype(int)


def within(observed, expected, n, sigmas=4):
    return abs(observed - expected) < sigmas * math.sqrt(expected * (1 - expected) / n)


# --- sampling -----------------------------------------------------------------


def test_class_weights_for_each_mode():
    ids = np.array([0, 0, 0, 1])
    assert class_weights_for(ids, 3, "balanced").tolist() == [4 / 3, 4 / 3, 4 / 3, 4.0]
    np.testing.assert_allclose(class_weights_for(ids, 3, "sqrt"), [3**-0.5] * 3 + [1.0])
    assert class_weights_for(ids, 3, "none").tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="sampling mode"):
        class_weights_for(ids, 3, "oversample")
    with pytest.raises(ValueError, match="out of range"):
        class_weights_for(ids, 1, "none")


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("balanced", [0.25] * 4),
        ("sqrt", np.sqrt([12, 6, 4, 2]) / np.sqrt([12, 6, 4, 2]).sum()),
        ("none", [12 / 24, 6 / 24, 4 / 24, 2 / 24]),
    ],
)
def test_draw_epoch_class_frequencies(mode, expected):
    rng = np.random.default_rng(0)
    draws = np.concatenate([draw_epoch(CLASSES, mode, rng) for _ in range(200)])
    assert len(draws) == 200 * 24
    frequencies = np.bincount(CLASSES[draws], minlength=4) / len(draws)
    for observed, p in zip(frequencies, expected):
        assert within(observed, p, len(draws)), (mode, frequencies)


def test_draw_epoch_none_is_a_permutation_topped_up():
    rng = np.random.default_rng(0)
    assert sorted(draw_epoch(CLASSES, "none", rng)) == list(range(24))
    topped = draw_epoch(CLASSES, "none", rng, size=30)
    assert sorted(topped[:24]) == list(range(24)) and len(set(topped[24:])) == 6


# --- evaluation mode -------------------------------------------------------------


def test_eval_real_val_every_row_once_in_order(cxr4_dir):
    table = read_table(cxr4_dir / "val.csv", labels="required")
    ds = CXRDataset(table, 32, batch_size=64)
    assert len(ds) == 5 and ds.num_classes == 4 and ds.class_names[3] == "COVID-19"
    batches = [ds[i] for i in range(len(ds))]
    assert [len(b[0]) for b in batches] == [64, 64, 64, 64, 55]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.dtype == np.uint8 and x.shape == (311, 32, 32, 3) and y.dtype == np.float32
    np.testing.assert_array_equal(y, table.labels)
    for row in (0, 200, 310):
        np.testing.assert_array_equal(x[row], load_image(table.paths[row], 32))
    with pytest.raises(IndexError):
        ds[5]


def test_eval_unlabeled_gives_x_only(cxr4_dir):
    table = read_table(cxr4_dir / "test.csv", labels="ignore").subset(range(5))
    batch = CXRDataset(table, 16, batch_size=4)[1]
    assert isinstance(batch, tuple) and len(batch) == 1 and batch[0].shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match="labeled table"):
        CXRDataset(table, 16, training=True)


def test_eval_passes_sample_weights(small_table):
    x, y, w = CXRDataset(small_table, 8, batch_size=24)[0]
    np.testing.assert_array_equal(rows_of(x), np.arange(24))
    np.testing.assert_array_equal(w, CLASSES + 1)
    np.testing.assert_array_equal(y.argmax(axis=1), CLASSES)


def test_eval_applies_preprocessing_but_no_random_augmentation(cxr4_dir):
    table = read_table(cxr4_dir / "val.csv").subset(range(4))
    aug = Augmentation(clahe=True, erasing_p=1.0)
    x, _ = CXRDataset(table, 32, batch_size=4, augmentation=aug)[0]
    for row in range(4):
        expected = aug.preprocess(load_image(table.paths[row], 32))
        assert not np.array_equal(expected, load_image(table.paths[row], 32))
        np.testing.assert_array_equal(x[row], expected)


# --- training mode ---------------------------------------------------------------


def test_training_epoch_is_class_balanced_on_real_data(cxr4_dir):
    table = read_table(cxr4_dir / "train.csv", labels="required")
    ds = CXRDataset(table, 32, batch_size=24, training=True)
    assert len(ds) == 60
    ids = np.concatenate([table.class_ids[ds.epoch_indices(e)] for e in range(3)])
    assert len(ids) == 3 * 60 * 24
    for observed in np.bincount(ids, minlength=4) / len(ids):
        assert within(observed, 0.25, len(ids))


def test_training_batches_are_full_augmented_and_soft(cxr4_dir):
    table = read_table(cxr4_dir / "train.csv", labels="required").subset(range(40))
    mixing = Mixing(mixup_p=1.0)
    ds = CXRDataset(table, 48, batch_size=16, training=True, augmentation=Augmentation(), mixing=mixing)
    assert [len(ds[i][0]) for i in range(len(ds))] == [16, 16, 16]
    x, y = ds[0]
    assert x.dtype == np.uint8 and x.shape == (16, 48, 48, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(axis=1), 1, rtol=1e-6)
    assert (y.max(axis=1) < 1).sum() >= 8


def test_training_weights_follow_rows_and_mixing(small_table):
    plain = CXRDataset(small_table, 8, batch_size=8, training=True)
    x, y, w = plain[1]
    rows = plain.epoch_indices()[8:16]
    np.testing.assert_array_equal(rows_of(x), rows)
    np.testing.assert_array_equal(w, CLASSES[rows] + 1)
    mixed = CXRDataset(small_table, 8, batch_size=8, training=True, mixing=Mixing(mixup_p=1.0))
    x, y, w = mixed[1]
    np.testing.assert_allclose(w, y @ [1, 2, 3, 4], rtol=1e-5)  # weight = class + 1, mixed alike


def test_batches_depend_only_on_seed_epoch_and_index(small_table):
    def make(seed):
        return CXRDataset(
            small_table, 8, batch_size=8, training=True, augmentation=Augmentation(erasing_p=1.0),
            mixing=Mixing(mixup_p=0.5, cutmix_p=0.5), seed=seed,
        )

    a, b = make(0), make(0)
    b[2], b[0]  # touching other batches first changes nothing
    for i in range(3):
        for ax, bx in zip(a[i], b[i]):
            np.testing.assert_array_equal(ax, bx)
    first = a[0][0]
    a.on_epoch_end()
    assert a.epoch == 1 and not np.array_equal(a[0][0], first)
    a.set_epoch(0)
    np.testing.assert_array_equal(a[0][0], first)
    assert not np.array_equal(make(1)[0][0], first)
    with pytest.raises(ValueError, match="epoch"):
        a.set_epoch(-1)


def test_cache_decodes_each_image_once(small_table, monkeypatch):
    calls = []
    real = dataset_module.load_image
    monkeypatch.setattr(dataset_module, "load_image", lambda path, size, **kw: calls.append(path) or real(path, size, **kw))
    cached = CXRDataset(small_table, 8, batch_size=10, cache=True)
    first = [cached[i][0] for i in range(3)]
    second = [cached[i][0] for i in range(3)]
    assert len(calls) == 24
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    uncached = CXRDataset(small_table, 8, batch_size=10)
    [uncached[i] for i in range(3)] + [uncached[i] for i in range(3)]
    assert len(calls) == 24 + 48


@pytest.mark.parametrize("use_multiprocessing", [False, True], ids=["threads", "processes"])
def test_workers_build_the_same_batches_as_a_single_thread(small_table, use_multiprocessing):
    options = dict(
        batch_size=6, training=True, augmentation=Augmentation(erasing_p=1.0),
        mixing=Mixing(mixup_p=0.5, cutmix_p=0.5), seed=3,
    )
    reference = CXRDataset(small_table, 8, **options)
    ds = CXRDataset(small_table, 8, cache=True, workers=2, use_multiprocessing=use_multiprocessing, **options)
    adapter = PyDatasetAdapter(ds, shuffle=False)
    for epoch in range(2):
        adapter.on_epoch_begin()
        batches = list(adapter.get_numpy_iterator())
        adapter.on_epoch_end()
        reference.set_epoch(epoch)
        assert len(batches) == 4
        for i, batch in enumerate(batches):
            for got, want in zip(batch, reference[i]):
                np.testing.assert_array_equal(got, want)
    assert ds.epoch == 2
    # Workers (threads, or processes forked each epoch) filled the shared
    # cache, which the parent sees: exactly the rows the two epochs drew.
    drawn = set(ds.epoch_indices(0)) | set(ds.epoch_indices(1))
    assert 10 < len(drawn) < 24
    assert set(np.flatnonzero(ds._cache.filled)) == drawn


class Recorder(keras.layers.Layer):
    """Remembers the generated-table rows of every training batch."""

    def __init__(self, record, **kwargs):
        super().__init__(**kwargs)
        self.record = record  # a function: Keras would copy a list attribute

    def call(self, x, training=None):
        if training:
            self.record(rows_of(x.detach().cpu().numpy()))
        return x


@pytest.mark.parametrize("use_multiprocessing", [False, True], ids=["threads", "processes"])
def test_fit_epochs_see_their_own_batches(small_table, use_multiprocessing):
    ds = CXRDataset(small_table, 8, batch_size=6, training=True, workers=2, use_multiprocessing=use_multiprocessing)
    val = CXRDataset(small_table, 8, batch_size=10)
    seen = []
    inputs = keras.Input((8, 8, 3))  # float32: Keras casts the uint8 batches
    hidden = keras.layers.GlobalAveragePooling2D()(Recorder(seen.append)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(hidden))
    model.compile("sgd", "categorical_crossentropy")
    # Build the compiled metrics first: otherwise fit pulls one batch through
    # the worker queue to build them, and batches prefetched then leak into
    # later epochs (Keras enqueuer behaviour, not the dataset's).
    model.evaluate(*val[0][:2], verbose=0)
    model.fit(ds, epochs=2, shuffle=False, verbose=0, callbacks=[ds.epoch_callback()])
    assert len(seen) == 8
    for epoch in range(2):
        order = ds.epoch_indices(epoch)
        for i in range(4):
            np.testing.assert_array_equal(seen[4 * epoch + i], order[6 * i : 6 * i + 6])
    assert model.predict(val, verbose=0).shape == (24, 4)


def test_argument_checks(small_table):
    with pytest.raises(ValueError, match="sampling"):
        CXRDataset(small_table, 8, sampling="oversample")
    with pytest.raises(ValueError, match="image_size"):
        CXRDataset(small_table, 0)
    with pytest.raises(ValueError, match="seed"):
        CXRDataset(small_table, 8, seed=-1)
    with pytest.raises(ValueError, match="no rows"):
        CXRDataset(small_table.subset([]), 8)


def test_gray_images_fill_all_three_channels(cxr4_dir):
    from keras_cxr.data import Augmentation

    table = read_table(cxr4_dir / "train.csv", labels="required").subset(np.arange(12))
    evaluation = CXRDataset(table, 48, batch_size=6, augmentation=Augmentation(unsharp=True), cache=True)
    for _ in range(2):  # decoded, then from the cache
        x, _ = evaluation[1]
        expected = np.stack([Augmentation(unsharp=True).preprocess(load_image(p, 48)) for p in table.paths[6:]])
        np.testing.assert_array_equal(x, expected)
    training = CXRDataset(table, 48, batch_size=6, training=True, augmentation=Augmentation(), seed=3)
    x, _ = training[0]
    np.testing.assert_array_equal(x[..., 0], x[..., 1])
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


class _Shard:
    def __init__(self, rank, world_size):
        self.rank, self.world_size = rank, world_size

    def gather(self, array):
        raise AssertionError("not used here")


@pytest.mark.parametrize("mixing", [None, Mixing(mixup_p=0.5, cutmix_p=0.5)])
def test_ranks_slices_of_each_batch_are_the_single_process_batch(small_table, mixing):
    kwargs = dict(batch_size=8, training=True, augmentation=Augmentation(), mixing=mixing, seed=3)
    whole = CXRDataset(small_table, 32, **kwargs)
    ranks = [CXRDataset(small_table, 32, shard=_Shard(r, 2), **kwargs) for r in range(2)]
    for dataset in (whole, *ranks):
        dataset.set_epoch(2)
    assert len(ranks[0]) == len(whole)
    for index in range(len(whole)):
        expected = whole[index]
        parts = [dataset[index] for dataset in ranks]
        assert parts[0][0].shape[0] == 4
        for k, part in enumerate(expected):
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), part)


def test_evaluation_shards_cover_the_rows_in_order(small_table):
    ranks = [CXRDataset(small_table, 32, batch_size=6, shard=_Shard(r, 3)) for r in range(3)]  # 2 rows a batch
    whole = CXRDataset(small_table, 32, batch_size=4)
    assert np.array_equal(np.concatenate([d.epoch_indices() for d in ranks]), np.arange(len(small_table)))
    got = np.concatenate([d[i][0] for d in ranks for i in range(len(d))])
    np.testing.assert_array_equal(got, np.concatenate([whole[i][0] for i in range(len(whole))]))


def test_global_batch_must_divide_by_the_world_size(small_table):
    with pytest.raises(ValueError, match="batch_size 6 must divide by the world size 4"):
        CXRDataset(small_table, 32, batch_size=6, shard=_Shard(0, 4))


def test_an_image_augmentation_depends_on_its_epoch_position_only(small_table):
    from keras_cxr.data.dataset import image_rng

    a = image_rng(0, 1, 5).random(3)
    assert np.array_equal(a, image_rng(0, 1, 5).random(3))
    assert not np.array_equal(a, image_rng(0, 1, 6).random(3))
    assert not np.array_equal(a, image_rng(0, 2, 5).random(3))
