"""The probability-file format: `new_filename` + one float column per class."""

import numpy as np
import pandas as pd

from keras_cxr.io import write_csv_atomic


def probabilities_frame(filenames, probs, class_names, filename_column="new_filename"):
    frame = pd.DataFrame(np.asarray(probs, dtype=np.float64), columns=list(class_names))
    frame.insert(0, filename_column, list(filenames))
    return frame


def write_probabilities(path, filenames, probs, class_names, filename_column="new_filename"):
    """Write probabilities atomically, rows in the order given."""
    frame = probabilities_frame(filenames, probs, class_names, filename_column)
    write_csv_atomic(frame, path)
    return frame
