"""Losses for keras-cxr (registered for `keras.saving.load_model`)."""

from keras_cxr.losses.focal import FocalLoss

__all__ = ["FocalLoss"]
