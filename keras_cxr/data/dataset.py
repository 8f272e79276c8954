"""`CXRDataset`: a Keras `PyDataset` of uint8 image batches from a `Table`.

Every random choice in a training batch comes from generators seeded by
``(seed, epoch, ...)`` keys, never from global or per-worker state: the epoch's
row order from ``(seed, epoch)``, each image's augmentation from ``(seed,
epoch, its position in the epoch)``, each batch's mixing from ``(seed, epoch,
batch index)``. So a batch is the same whichever thread or process builds it,
a run resumed with `set_epoch` sees the same data as an uninterrupted one, and
ranks of a data-parallel run that each build a slice of a batch together build
exactly the single-process batch.
"""

import functools
import math
import mmap
import multiprocessing as mp

import cv2
import keras
import numpy as np

from keras_cxr.data.images import load_image
from keras_cxr.data.sampling import SAMPLING_MODES, draw_epoch

# Last word of the seed entropy, so the epoch-order stream never equals a
# batch stream: SeedSequence([a, b]) == SeedSequence([a, b, 0]), hence
# fixed-length keys.
_ORDER_STREAM, _BATCH_STREAM, _IMAGE_STREAM = 0, 1, 2


def epoch_rng(seed, epoch):
    """The generator that draws epoch `epoch`'s row order."""
    return np.random.default_rng([seed, epoch, _ORDER_STREAM, 0])


def batch_rng(seed, epoch, index):
    """The generator for the mixing of batch `index` of `epoch`."""
    return np.random.default_rng([seed, epoch, _BATCH_STREAM, index])


def image_rng(seed, epoch, position):
    """The generator for the augmentation of the image at `position` (0-based, in the whole epoch)."""
    return np.random.default_rng([seed, epoch, _IMAGE_STREAM, position])


class _SharedImageCache:
    """Decoded images in anonymous shared memory.

    Keras forks fresh worker processes every epoch; memory mapped with
    MAP_SHARED before the fork is the same physical memory in the parent and
    every worker, so images decoded by one epoch's workers are there for the
    next epoch's. Threads share it trivially.
    """

    def __init__(self, count, size):
        nbytes = count * size * size * 3
        self._buffer = mmap.mmap(-1, nbytes + count)
        self.images = np.frombuffer(self._buffer, np.uint8, count=nbytes).reshape(count, size, size, 3)
        # 0: not decoded yet, 1: RGB, 2: grayscale (read back as one channel)
        self.filled = np.frombuffer(self._buffer, np.uint8, count=count, offset=nbytes)

    def get(self, index):
        state = self.filled[index]
        if not state:
            return None
        return self.images[index, ..., :1] if state == 2 else self.images[index]

    def put(self, index, image):
        self.images[index] = image
        self.filled[index] = 2 if image.shape[-1] == 1 else 1  # written after the pixels, read before them


class _EpochSync(keras.callbacks.Callback):
    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.set_epoch(epoch)


class CXRDataset(keras.utils.PyDataset):
    """Batches of `(x, y[, sample_weight])` from a `Table`, for `Model.fit`.

    `x` is uint8 `(B, S, S, 3)` (models take 0-255 input and normalise
    inside; Keras casts it to the Input's float dtype), `y` is float32
    `(B, C)` and `sample_weight` float32 `(B,)`, returned whenever the table
    has sample weights. An unlabeled table gives `(x,)`.

    Training mode (`training=True`): each epoch draws `len(self) *
    batch_size` row indices with `draw_epoch` (class-balanced with
    replacement by default; ``"none"`` is a permutation topped up to full
    batches), then augments each image and mixes each batch. The row order
    of epoch `e` comes from `epoch_rng(seed, e)`; batch `i`'s augmentation
    and mixing from `batch_rng(seed, e, i)`; the image at position `p` of
    the epoch is augmented with `image_rng(seed, e, p)`.

    Evaluation mode: the table's rows in CSV order, each exactly once, the
    last batch partial; only the deterministic `Augmentation.preprocess`
    (CLAHE / unsharp, when on) is applied.

    Data-parallel training (`shard`, e.g. a `keras_cxr.distributed.Context`):
    `batch_size` is the global batch and must divide by the world size `W`.
    In training, rank `r` gets rows `[r * b, (r + 1) * b)` (`b =
    batch_size / W`) of every global batch, so the ranks' batches together
    are exactly the single-process epoch (with mixing on, each rank builds
    the whole global batch and keeps its slice, since a mixing partner may
    sit in another rank's slice). In evaluation, rank `r` gets a contiguous
    `1/W` of the rows in batches of `b`, and `keras_cxr.predict` gathers the
    ranks' predictions back into CSV order (`shard.gather`).

    Epochs: `epoch` starts at 0 and `on_epoch_end` adds 1. `Model.fit` calls
    `on_epoch_end` once more before training starts, so without help epoch
    `k` of `fit` uses dataset epoch `k + 1`. Pass `epoch_callback()` to
    `fit` to use Keras's own epoch numbers (resuming with `initial_epoch`
    then needs nothing else); without it, call `set_epoch(initial_epoch)`
    before a resumed `fit`. Worker processes are forked after the callback
    and after `on_epoch_end`, so they always see the current epoch.

    Args:
        table: a `Table`; must be labeled when `training=True`. Its images
            are its files, or its stored `images` (e.g. a TFDS build read
            with `keras_cxr.data.tfds.read_tfds_table`; those are read by
            worker threads, and forked worker processes are refused).
        image_size: side length `S` of the square images.
        batch_size: rows per batch.
        training: training mode (sampling, augmentation, mixing) or
            evaluation mode.
        augmentation: an `Augmentation`, or `None` for none.
        mixing: a `Mixing`, or `None` for none; used in training only.
        sampling: ``"balanced"``, ``"sqrt"`` or ``"none"`` (training only).
        seed: non-negative integer seed.
        cache: keep decoded, resized (and preprocessed) images in shared
            memory, `N * S * S * 3` bytes, so later epochs skip decoding.
        shard: `None` (one process), or an object with `rank`,
            `world_size` and `gather(array)` (a
            `keras_cxr.distributed.Context`) for data-parallel training.
        workers, use_multiprocessing, max_queue_size: as `PyDataset`.

    Example:

    ```python
    train = CXRDataset(read_table("cxr4/train.csv", labels="required"), 384,
                       batch_size=24, training=True,
                       augmentation=Augmentation(), mixing=Mixing(mixup_p=0.6),
                       workers=4, use_multiprocessing=True)
    val = CXRDataset(read_table("cxr4/val.csv", labels="required"), 384)
    model.fit(train, validation_data=val, epochs=45,
              callbacks=[train.epoch_callback()])
    ```
    """

    def __init__(
        self,
        table,
        image_size,
        batch_size=32,
        training=False,
        augmentation=None,
        mixing=None,
        sampling="balanced",
        seed=0,
        cache=False,
        shard=None,
        workers=1,
        use_multiprocessing=False,
        max_queue_size=10,
    ):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        for name, value in (("image_size", image_size), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
        if len(table) == 0:
            raise ValueError(f"{table.csv_path}: the table has no rows")
        if training and not table.is_labeled:
            raise ValueError(f"{table.csv_path}: training needs a labeled table")
        start_method = mp.get_start_method(allow_none=True) or mp.get_all_start_methods()[0]  # without fixing it
        if use_multiprocessing and not getattr(table.images, "fork_safe", True) and start_method == "fork":
            raise ValueError(f"{table.csv_path}: its stored images cannot be read in forked worker processes; "
                             "use worker threads (use_multiprocessing=False)")
        world_size = 1 if shard is None else int(shard.world_size)
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must divide by the world size {world_size} "
                             "(it is the global batch)")
        self._table = table
        self.shard = shard if world_size > 1 else None
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.training = bool(training)
        self.augmentation = augmentation
        self.mixing = mixing if training else None
        self.sampling = sampling
        self.seed = int(seed)
        self.epoch = 0
        self._order = None  # (epoch, indices), recomputed lazily per epoch
        self._cache = _SharedImageCache(len(table), self.image_size) if cache else None

    # Pickled copies (spawn-started workers) cannot share the mapping.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    @property
    def table(self):
        return self._table

    @property
    def class_names(self):
        return self._table.class_names

    @property
    def num_classes(self):
        return len(self._table.class_names)

    @property
    def local_batch_size(self):
        """Rows of each batch this process builds: `batch_size / world_size`."""
        return self.batch_size if self.shard is None else self.batch_size // self.shard.world_size

    @functools.cached_property
    def _local_rows(self):
        """This rank's contiguous evaluation rows (all rows without a shard)."""
        n = len(self._table)
        if self.shard is None:
            return np.arange(n)
        return np.array_split(np.arange(n), self.shard.world_size)[self.shard.rank]

    def __len__(self):
        if self.training:
            return math.ceil(len(self._table) / self.batch_size)
        return math.ceil(len(self._local_rows) / self.local_batch_size)

    def set_epoch(self, epoch):
        """Make the next batches those of `epoch` (e.g. when resuming)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)

    def on_epoch_end(self):
        self.epoch += 1

    def epoch_callback(self):
        """A Keras callback that sets this dataset's epoch to `fit`'s epoch."""
        return _EpochSync(self)

    def epoch_indices(self, epoch=None):
        """Row indices of every global batch of `epoch` (default: the current one), in order.

        In evaluation mode: this rank's rows.
        """
        if not self.training:
            return self._local_rows
        epoch = self.epoch if epoch is None else epoch
        cached = self._order
        if cached is not None and cached[0] == epoch:
            return cached[1]
        order = draw_epoch(
            self._table.class_ids, self.sampling, epoch_rng(self.seed, epoch), size=len(self) * self.batch_size
        )
        self._order = (epoch, order)  # one tuple store: safe for worker threads
        return order

    def load(self, row):
        """The resized, preprocessed uint8 image of table row `row`.

        `(S, S, 1)` for a grayscale file (augmenting one channel is 3x
        cheaper; batches repeat it into RGB), else `(S, S, 3)`.
        """
        image = self._cache.get(row) if self._cache is not None else None
        if image is None:
            image = load_image(self._table.image_source(row), self.image_size, keep_gray=True)
            if self.augmentation is not None:
                image = self.augmentation.preprocess(image)
            if self._cache is not None:
                self._cache.put(row, image)
        return image

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        epoch = self.epoch
        if not self.training:
            b = self.local_batch_size
            return self._batch(self.epoch_indices(epoch)[index * b : (index + 1) * b], None)
        start = index * self.batch_size
        positions = np.arange(start, start + self.batch_size)
        whole = self.shard is None or self.mixing is not None
        if not whole:
            b = self.local_batch_size
            positions = positions[self.shard.rank * b : (self.shard.rank + 1) * b]
        rows = self.epoch_indices(epoch)[positions]
        batch = self._batch(rows, [image_rng(self.seed, epoch, p) for p in positions])
        if self.mixing is not None and len(batch) > 1:
            x, y, w = self.mixing.apply(*batch[:2], batch[2] if len(batch) > 2 else None,
                                        batch_rng(self.seed, epoch, index))
            batch = (x, y) if w is None else (x, y, w)
        if whole and self.shard is not None:
            b = self.local_batch_size
            batch = tuple(part[self.shard.rank * b : (self.shard.rank + 1) * b] for part in batch)
        return tuple(np.asarray(part, np.float32) if i else part for i, part in enumerate(batch))

    def _batch(self, rows, rngs):
        """`(x, y[, w])` (or `(x,)` unlabeled) of table rows `rows`, augmented with `rngs` when given."""
        x = np.empty((len(rows), self.image_size, self.image_size, 3), np.uint8)
        for j, row in enumerate(rows):
            image = self.load(row)
            if rngs is not None and self.augmentation is not None:
                image = self.augmentation.apply(image, rngs[j])
            if image.shape[-1] == 1:
                cv2.cvtColor(image, cv2.COLOR_GRAY2RGB, dst=x[j])  # a SIMD copy into all three channels
            else:
                x[j] = image
        table = self._table
        if not table.is_labeled:
            return (x,)
        y = np.asarray(table.labels[rows], np.float32)
        return (x, y) if table.sample_weight is None else (x, y, np.asarray(table.sample_weight[rows], np.float32))
