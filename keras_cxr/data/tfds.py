"""A Kaggle-format folder as a versioned TFDS dataset, and its splits read back as `Table`s.

`build_tfds` turns a folder holding ``train.csv`` / ``val.csv`` /
``test.csv`` (whichever exist) and their images into a TensorFlow Datasets
build in the ``array_record`` file format: one example per CSV row, in CSV
order, holding the image file's original bytes (never re-encoded, so
`load_image` decodes exactly the pixels it decodes from the file), its
filename and original path, the one-hot label (or a mark that the row is
unlabeled), ``patient_id`` and ``sample_weight`` when the CSV has them.

`read_tfds_table` reads one split back as a `Table` whose images come from
the records by index (`tfds.data_source`, no ``tf.data``), so `CXRDataset`
gives the same batches as from the CSV and its files.

TensorFlow Datasets is imported inside the functions of this module only;
``import keras_cxr.data`` never imports it.

Example:

```python
build_tfds("cxr4", "cxr4_tfds")
train = read_tfds_table("cxr4_tfds", "train")
batches = CXRDataset(train, 384, batch_size=24, training=True)
```
"""

import contextlib
import functools
import glob
import os
import shutil
import tempfile
import threading

import numpy as np

from keras_cxr.constants import CLASS_NAMES
from keras_cxr.data.images import ImageError
from keras_cxr.data.table import LABEL_MODES, Table, TableError, _read_frame, _table_from_frame
from keras_cxr.errors import FieldError

SPLITS = ("train", "val", "test")
BUILDER_NAME = "keras_cxr_folder"
VERSION = "1.0.0"
RELEASE_NOTES = {
    "1.0.0": "One example per CSV row in CSV order: original image bytes, filename, source path, "
             "one-hot label with a labeled flag, patient_id, sample_weight.",
}
# The section of a build's metadata.json that marks it as written by `build_tfds`.
_METADATA_KEY = "keras_cxr"
_FORMAT = 1


class TfdsError(FieldError):
    """A TFDS build cannot be made or read; the message starts with the folder or split (see `FieldError`)."""


def _tfds():
    import tensorflow_datasets as tfds

    return tfds


def _folder_split_tables(data_dir, class_names, filename_column, images_dir):
    """`{split: (table, patient ids or None)}` for each split CSV found in `data_dir`."""
    found = {}
    for split in SPLITS:
        csv_path = os.path.abspath(os.path.join(data_dir, f"{split}.csv"))
        if not os.path.isfile(csv_path):
            continue
        # One read of the CSV for both the table (as `read_table` builds it) and its patient ids.
        frame = _read_frame(csv_path, os.path.basename(csv_path))
        table = _table_from_frame(frame, csv_path, images_dir=os.path.join(data_dir, images_dir),
                                  class_names=class_names, filename_column=filename_column, labels="auto",
                                  check_files=True)
        patients = None
        if "patient_id" in frame.columns:
            rows = [record for record in frame.to_dict("records") if any(record.values())]  # as read_table
            patients = [record["patient_id"] for record in rows]
        found[split] = (table, patients)
    if not found:
        raise TfdsError(f"{data_dir}: no split CSV found (looked for {', '.join(s + '.csv' for s in SPLITS)})")
    return found


def _first_unreadable(tables, workers, verbose):
    """Raise an `ImageError` for the first image of `tables` that does not decode (with the count of others)."""
    from keras_cxr.data.image_check import find_unreadable

    bad = []
    for table in tables:
        if verbose:
            print(f"Checking the {len(table)} images of {os.path.basename(table.csv_path)}.")
        bad += [f"{os.path.basename(table.csv_path)} row {table.filenames[i]!r}: {message}"
                for i, message in find_unreadable(table, workers=workers, verbose=verbose)]
    if bad:
        more = f" (and {len(bad) - 1} more unreadable image{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
        raise ImageError(bad[0] + more)


@functools.cache
def _builder_class():
    """The `GeneratorBasedBuilder` subclass, defined on first use so that TFDS is imported only then."""
    tfds = _tfds()

    class KerasCxrFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Every split CSV of one Kaggle-format folder, one example per row in CSV order.

        Args:
            splits: `{split: (Table, patient ids or None)}`, as read from the folder.
            source_dir: the folder the tables came from (recorded in the metadata).
            verbose: 1 prints a progress bar per split.
            **kwargs: `tfds.core.GeneratorBasedBuilder` arguments (`data_dir`, `file_format`).
        """

        VERSION = tfds.core.Version(VERSION)
        RELEASE_NOTES = RELEASE_NOTES
        # Downloads nothing, so has no URL checksums file beside its code (and TFDS's look-up
        # of one needs the importlib_resources package).
        code_path = None

        def __init__(self, *, splits, source_dir, verbose=0, **kwargs):
            self._splits = splits
            self._source_dir = os.path.abspath(source_dir)
            self._verbose = verbose
            self._class_names = next(iter(splits.values()))[0].class_names
            super().__init__(**kwargs)

        # TFDS prints where it writes, which is our temporary folder; `build_tfds` says where the build went.
        def _log_download_bytes(self):
            pass

        def _log_download_done(self):
            pass

        def _info(self):
            text = tfds.features.Text()
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"keras-cxr tables of {self._source_dir}",
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # the file's bytes, as stored
                    "filename": text,
                    "path": text,
                    "label": tfds.features.Tensor(shape=(len(self._class_names),), dtype=np.float32),
                    "labeled": tfds.features.Tensor(shape=(), dtype=np.bool_),
                    "patient_id": text,
                    "sample_weight": tfds.features.Tensor(shape=(), dtype=np.float32),
                }),
                metadata=tfds.core.MetadataDict(),
                disable_shuffling=True,  # keep CSV order
            )

        def _split_generators(self, dl_manager):
            self.info.metadata[_METADATA_KEY] = {
                "format": _FORMAT,
                "source_dir": self._source_dir,
                "class_names": list(self._class_names),
                "splits": {
                    split: {"csv": os.path.basename(table.csv_path), "rows": len(table),
                            "labeled": table.is_labeled, "sample_weight": table.sample_weight is not None,
                            "patient_id": patients is not None}
                    for split, (table, patients) in self._splits.items()
                },
            }
            return {split: self._generate_examples(split) for split in self._splits}

        def _generate_examples(self, split):
            import keras

            table, patients = self._splits[split]
            progress = keras.utils.Progbar(len(table), unit_name="image") if self._verbose else None
            if progress is not None:
                print(f"Writing {split} ({os.path.basename(table.csv_path)}).")
            for row, path in enumerate(table.paths):
                with open(path, "rb") as f:
                    data = f.read()
                yield row, {
                    "image": data,
                    "filename": table.filenames[row],
                    "path": path,
                    "label": table.labels[row] if table.is_labeled else np.zeros(table.num_classes, np.float32),
                    "labeled": table.is_labeled,
                    "patient_id": patients[row] if patients is not None else "",
                    "sample_weight": table.sample_weight[row] if table.sample_weight is not None else 1.0,
                }
                if progress is not None and ((row + 1) % 64 == 0 or row + 1 == len(table)):
                    progress.update(row + 1)

    return KerasCxrFolder


def build_tfds(data_dir, out_dir, class_names=CLASS_NAMES, filename_column="new_filename", images_dir="images",
               overwrite=False, workers=2, verbose=0):
    """Write the split CSVs of `data_dir` and their images as an ``array_record`` TFDS build under `out_dir`.

    Every image is decoded once first; nothing is written when one fails.
    The build is made in a temporary folder inside `out_dir` and moved to
    ``<out_dir>/keras_cxr_folder/<version>`` when complete, so a failed or
    interrupted build leaves no partial dataset (and an existing one, when
    overwriting, stays until the new one is complete).

    Args:
        data_dir: a Kaggle-format folder: ``train.csv``, ``val.csv`` and/or
            ``test.csv`` (``new_filename``, one 0/1 column per class, and
            optionally ``patient_id``, ``source_dir``, ``sample_weight``;
            a test CSV may leave the label cells empty) and its images.
        out_dir: the folder to build in (created if missing).
        class_names: the label columns, in order.
        filename_column: the CSV column holding image file names.
        images_dir: the image folder inside `data_dir`.
        overwrite: replace a build of the same version already in `out_dir`.
        workers: threads that decode the images in the up-front check.
        verbose: 1 prints progress.

    Returns:
        A read-only `tfds.core.DatasetBuilder` of the finished build
        (`.info.splits`, `.data_path`, `.as_data_source(split)`).

    Raises:
        TfdsError: `data_dir` has no split CSV, or `out_dir` already holds
            this build and `overwrite` is false.
        TableError: a CSV is invalid (every problem listed).
        ImageError: an image does not decode; names the file.

    Example:

    ```python
    builder = build_tfds("cxr4", "cxr4_tfds")
    print({name: split.num_examples for name, split in builder.info.splits.items()})
    ```
    """
    data_dir, out_dir = os.path.abspath(os.fspath(data_dir)), os.path.abspath(os.fspath(out_dir))
    if not os.path.isdir(data_dir):
        raise TfdsError(f"{data_dir}: {'is not a folder' if os.path.exists(data_dir) else 'folder not found'}")
    final = os.path.join(out_dir, BUILDER_NAME, VERSION)
    if os.path.exists(final) and not overwrite:
        raise TfdsError(f"{{out_dir}} {final}: a build of version {VERSION} is already there; "
                        "replace it with {overwrite} or build in another folder", out_dir="out_dir",
                        overwrite="overwrite=True")
    splits = _folder_split_tables(data_dir, tuple(class_names), filename_column, images_dir)
    _first_unreadable([table for table, _ in splits.values()], workers, verbose)

    tfds = _tfds()
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".keras-cxr-tfds-", dir=out_dir)
    try:
        builder = _builder_class()(splits=splits, source_dir=data_dir, verbose=verbose, data_dir=work,
                                   file_format="array_record")
        with _without_tfds_progress_bars(tfds):
            builder.download_and_prepare(download_dir=os.path.join(work, "downloads"))
        os.makedirs(os.path.dirname(final), exist_ok=True)
        if os.path.exists(final):
            os.replace(final, os.path.join(work, "replaced"))  # removed with `work` below
        os.replace(builder.data_path, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tfds.builder_from_directory(final)


@contextlib.contextmanager
def _without_tfds_progress_bars(tfds):
    """TFDS's own tqdm bars off for a block (they name temporary files), then as they were."""
    from tensorflow_datasets.core.utils import tqdm_utils

    was = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(was)


def find_build(tfds_dir):
    """The version folder of the keras-cxr build in `tfds_dir`; with several versions, the newest.

    `tfds_dir` is the folder given to `build_tfds`, or the version folder itself.

    Raises:
        TfdsError: `tfds_dir` holds no keras-cxr build.
    """
    tfds_dir = os.path.abspath(os.fspath(tfds_dir))
    if not os.path.isdir(tfds_dir):
        raise TfdsError(f"{tfds_dir}: {'is not a folder' if os.path.exists(tfds_dir) else 'folder not found'}")
    if os.path.isfile(os.path.join(tfds_dir, "dataset_info.json")):
        return tfds_dir
    found = glob.glob(os.path.join(glob.escape(tfds_dir), BUILDER_NAME, "*", "dataset_info.json"))
    if not found:
        raise TfdsError(f"{tfds_dir}: not a keras-cxr TFDS build (no {BUILDER_NAME}/<version>/dataset_info.json "
                        "inside; make one with build_tfds)")

    def version(path):
        name = os.path.basename(os.path.dirname(path))
        return tuple(int(p) if p.isdigit() else -1 for p in name.split("."))

    return os.path.dirname(max(found, key=version))


def _opened_build(version_dir):
    """`(read-only builder, keras-cxr metadata)` of a build's version folder."""
    tfds = _tfds()
    try:
        builder = tfds.builder_from_directory(version_dir)
        metadata = builder.info.metadata
    except Exception as e:  # noqa: BLE001  - TFDS raises many kinds for a damaged or foreign folder
        raise TfdsError(f"{version_dir}: not a readable TFDS build ({type(e).__name__}: {e})") from None
    section = (metadata or {}).get(_METADATA_KEY)
    if not isinstance(section, dict) or section.get("format") != _FORMAT:
        raise TfdsError(f"{version_dir}: a TFDS build, but not one made by keras-cxr's build_tfds "
                        f"(its metadata.json has no {_METADATA_KEY!r} section of format {_FORMAT})")
    if builder.info.file_format is None or builder.info.file_format.value != "array_record":
        raise TfdsError(f"{version_dir}: stored as {builder.info.file_format}, not array_record; rebuild it")
    return builder, section


def tfds_splits(tfds_dir):
    """`{split: rows}` of the keras-cxr build in `tfds_dir`, in build order.

    Raises:
        TfdsError: `tfds_dir` holds no keras-cxr build.
    """
    _, section = _opened_build(find_build(tfds_dir))
    return {split: info["rows"] for split, info in section["splits"].items()}


# The process that has read records: a process forked from it hangs when it opens
# an array_record reader through TFDS, so such a child is refused instead.
_READ_IN_PID = None


def _check_not_forked(name):
    global _READ_IN_PID
    if _READ_IN_PID is not None and _READ_IN_PID != os.getpid():
        raise TfdsError(f"{name}: TFDS records cannot be read in a process forked from one that read them "
                        "(array_record readers hang there); use worker threads (use_multiprocessing=False) "
                        "or processes started with 'spawn'")
    _READ_IN_PID = os.getpid()


class TfdsImages:
    """The image bytes of one split of a build, by row: `images[row] -> bytes`.

    Opens the split's `tfds.data_source` on first use, so it serves loader
    threads and pickled copies in processes started with ``spawn`` (which
    carry only the folder and split). A process forked from one that read
    records is refused with a `TfdsError` (see `fork_safe`), never left
    hanging.

    Args:
        version_dir: the build's version folder (see `find_build`).
        split: the split name.
        rows: the split's row count.
    """

    def __init__(self, version_dir, split, rows):
        self.version_dir = version_dir
        self.split = split
        self._rows = int(rows)
        self._lock = threading.Lock()
        self._source = None  # (pid, data source)

    fork_safe = False  # see the class docstring; `CXRDataset` checks it

    def __len__(self):
        return self._rows

    def __getstate__(self):
        return {"version_dir": self.version_dir, "split": self.split, "_rows": self._rows}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock(), _source=None)

    def _data_source(self):
        opened = self._source
        if opened is None or opened[0] != os.getpid():
            _check_not_forked(f"{self.version_dir} [{self.split}]")
            with self._lock:
                opened = self._source
                if opened is None or opened[0] != os.getpid():
                    builder = _tfds().builder_from_directory(self.version_dir)
                    opened = (os.getpid(), builder.as_data_source(self.split))
                    self._source = opened
        return opened[1]

    def __getitem__(self, row):
        if not 0 <= row < self._rows:
            raise IndexError(f"row {row} out of range for {self._rows} rows")
        return self._data_source()[int(row)]["image"]


def read_tfds_table(tfds_dir, split, labels="auto"):
    """One split of a keras-cxr TFDS build as a `Table` whose images are read from its records.

    The table equals `read_table` of the split's CSV at build time: same
    filenames, labels, class names and sample weights, in CSV order; its
    `paths` are the files' paths when built (used to name and compare rows,
    never read), and its images are the stored bytes.

    Args:
        tfds_dir: the folder given to `build_tfds` (or the build's version folder).
        split: ``"train"``, ``"val"`` or ``"test"``, as built.
        labels: ``"auto"`` (as built), ``"required"`` (an unlabeled split
            is an error) or ``"ignore"`` (read without labels).

    Returns:
        A `Table` with `images` set.

    Raises:
        TfdsError: `tfds_dir` holds no keras-cxr build, or has no `split`.
        TableError: `labels="required"` and the split is unlabeled.

    Example:

    ```python
    val = read_tfds_table("cxr4_tfds", "val", labels="required")
    scores = model.predict(CXRDataset(val, 384))
    ```
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
    version_dir = find_build(tfds_dir)
    builder, section = _opened_build(version_dir)
    info = section["splits"].get(split)
    if info is None:
        raise TfdsError(f"{version_dir}: no split {split!r} (it has {', '.join(map(repr, section['splits']))})")
    name = f"{version_dir} [{split}]"
    _check_not_forked(name)
    if labels == "required" and not info["labeled"]:
        raise TableError([f"{name}: every label cell was empty in {info['csv']}, but this table must be labeled"])
    source = builder.as_data_source(split)
    rows = len(source)
    if rows != info["rows"]:
        raise TfdsError(f"{name}: holds {rows} records, its metadata says {info['rows']}; rebuild it")
    filenames, paths = [], []
    label_rows = np.zeros((rows, len(section["class_names"])), np.float32)
    weights = np.ones(rows, np.float32)
    for row in range(rows):
        example = source[row]
        filenames.append(_text(example["filename"]))
        paths.append(_text(example["path"]))
        label_rows[row] = example["label"]
        weights[row] = example["sample_weight"]
    return Table(
        csv_path=name,
        filenames=filenames,
        paths=paths,
        labels=label_rows if info["labeled"] and labels != "ignore" else None,
        sample_weight=weights if info["sample_weight"] else None,
        class_names=section["class_names"],
        images=TfdsImages(version_dir, split, rows),
    )


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
