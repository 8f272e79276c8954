"""Reading tables and images, augmentation, sampling and the Keras dataset.

The names load on first use, each from its own module, so reading tables
and images (`read_table`, `load_image`) imports neither Keras nor torch:
only `CXRDataset` does. `from keras_cxr.data import CXRDataset` works as
before.
"""

import importlib

# Public name -> the module under keras_cxr.data that defines it.
_LOCATIONS = {
    "Augmentation": "augment",
    "CXRDataset": "dataset",
    "ImageError": "images",
    "Mixing": "mixing",
    "Table": "table",
    "TableError": "table",
    "check_image": "images",
    "class_weights_for": "sampling",
    "draw_epoch": "sampling",
    "drop_unreadable": "image_check",
    "find_unreadable": "image_check",
    "load_image": "images",
    "read_table": "table",
}


def __getattr__(name):
    if name in _LOCATIONS:
        value = getattr(importlib.import_module(f"keras_cxr.data.{_LOCATIONS[name]}"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LOCATIONS})


__all__ = [
    "Augmentation",
    "CXRDataset",
    "ImageError",
    "Mixing",
    "Table",
    "TableError",
    "check_image",
    "class_weights_for",
    "draw_epoch",
    "drop_unreadable",
    "find_unreadable",
    "load_image",
    "read_table",
]
