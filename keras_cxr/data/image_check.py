"""Decode every image of a table before training, so a bad file costs seconds, not a run."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_cxr.data.images import ImageError, check_image
from keras_cxr.data.table import TableError

ON_BAD_IMAGE = ("error", "skip")
_MAX_LISTED = 20


def find_unreadable(table, workers=2, verbose=0):
    """Rows of `table` whose image does not decode.

    Each row is checked where `CXRDataset` reads it (`Table.image_source`):
    its file, or its stored bytes for a table with `images` (a TFDS build).

    Args:
        table: a `Table`.
        workers: decoding threads (Pillow releases the GIL while decoding).
        verbose: 1 shows a progress bar.

    Returns:
        A list of `(row index, message)` pairs, in row order; the message
        names the image file and why it cannot be read.
    """
    import keras

    progress = keras.utils.Progbar(len(table), unit_name="image") if verbose else None

    def check(row):
        try:
            check_image(table.image_source(row))
            return None
        except ImageError as e:
            return str(e)

    bad = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for index, message in enumerate(pool.map(check, range(len(table)))):
            if message is not None:
                bad.append((index, message))
            if progress is not None and ((index + 1) % 64 == 0 or index + 1 == len(table)):
                progress.update(index + 1)
    return bad


def drop_unreadable(table, on_bad_image="error", workers=2, verbose=0):
    """Check every image of `table`; refuse or drop the unreadable ones.

    Args:
        table: a `Table`.
        on_bad_image: ``"error"`` raises one `TableError` listing the bad
            rows; ``"skip"`` leaves them out.
        workers, verbose: see `find_unreadable`.

    Returns:
        `(table, skipped)`: the table without the unreadable rows and a list
        of `{"csv", "filename", "reason"}` records, one per dropped row.

    Raises:
        TableError: with ``on_bad_image="error"``, naming each file and row;
            or when every row is unreadable.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}")
    bad = find_unreadable(table, workers=workers, verbose=verbose)
    if not bad:
        return table, []
    problems = [f"{table.csv_path}, row {table.filenames[i]!r}: {message}" for i, message in bad]
    if on_bad_image == "error" or len(bad) == len(table):
        listed = problems[:_MAX_LISTED]
        if len(problems) > _MAX_LISTED:
            listed.append(f"{table.csv_path}: ... and {len(problems) - _MAX_LISTED} more unreadable images")
        if on_bad_image == "error":
            listed.append('fix or remove these rows, or set data.on_bad_image="skip" to train without them')
        else:
            listed.append(f"{table.csv_path}: no readable image is left")
        raise TableError(listed)
    keep = np.setdiff1d(np.arange(len(table)), [i for i, _ in bad])
    skipped = [{"csv": table.csv_path, "filename": table.filenames[i], "reason": message} for i, message in bad]
    return table.subset(keep), skipped
