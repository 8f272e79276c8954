"""Train with plain `model.fit`, using keras-cxr's dataset, loss and callbacks."""

import sys

import keras_cxr  # first: it pins Keras to the torch backend
import keras
from keras_cxr.callbacks import CollectCycles, MacroF1Checkpoint, WarmupCosine
from keras_cxr.data import Augmentation, CXRDataset, read_table
from keras_cxr.data.synthetic import ensure_default_dataset
from keras_cxr.losses import FocalLoss

data_dir = sys.argv[1] if len(sys.argv) > 1 else ensure_default_dataset()  # or ../shared/data/cxr4
size, epochs = 64, 4
keras_cxr.accel.enable()  # optional: keras-cxr's speed-ups (same results), as `keras-cxr fit` has them

train = CXRDataset(read_table(f"{data_dir}/train.csv"), size, batch_size=32, training=True,
                   augmentation=Augmentation(), sampling="balanced", seed=0)
val = CXRDataset(read_table(f"{data_dir}/val.csv"), size, batch_size=64)

model = keras_cxr.models.build("cxr_resnet", image_size=size)
model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05),
              loss=FocalLoss(alpha=[1.0, 1.5, 2.0, 4.0], gamma=2.0, label_smoothing=0.1))
checkpoint = MacroF1Checkpoint(val, filepath="best.keras")
model.fit(train, epochs=epochs, shuffle=False, callbacks=[
    WarmupCosine(1e-3, warmup_epochs=1, min_lr=1e-5),
    train.epoch_callback(),          # the dataset follows fit's epoch number
    checkpoint,                      # logs val_macro_f1, saves the best model
    keras.callbacks.EarlyStopping(monitor="val_macro_f1", mode="max", patience=5),
    CollectCycles(),                 # frees tensors Keras-on-torch leaves in reference cycles
])
print(f"best val Macro-F1 {checkpoint.best:.3f} at epoch {checkpoint.best_epoch + 1}, saved to best.keras")
