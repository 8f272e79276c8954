"""Reading tables and images, augmentation, sampling and the Keras dataset."""

from keras_cxr.data.augment import Augmentation
from keras_cxr.data.dataset import CXRDataset
from keras_cxr.data.image_check import drop_unreadable, find_unreadable
from keras_cxr.data.images import ImageError, check_image, load_image
from keras_cxr.data.mixing import Mixing
from keras_cxr.data.sampling import class_weights_for, draw_epoch
from keras_cxr.data.table import Table, TableError, read_table

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
