"""Smoke run: the small CPU network on the embedded synthetic data, 64 px.

No download and under two minutes on two CPU cores; shows that every part
of a run works (augmentation, Mixup/CutMix, balanced sampling, focal loss,
warmup-cosine, SWA, Macro-F1 checkpointing) and writes a full run directory.
"""

from keras_cxr.data import Augmentation, Mixing
from keras_cxr.recipe import SWA, Data, Loss, Model, Optimizer, Recipe, Schedule

recipe = Recipe(
    data=Data(data_dir=None),
    model=Model(name="cxr_resnet", image_size=64, dropout=0.1),
    augmentation=Augmentation(rotation=8.0, translate=0.06, scale=(0.94, 1.06), shear=6.0,
                              brightness=0.15, contrast=0.15, erasing_p=0.2),
    mixing=Mixing(mixup_p=0.2, mixup_alpha=0.4, cutmix_p=0.2, cutmix_alpha=1.0),
    sampling="balanced",
    loss=Loss(alpha=(1.0, 1.0, 1.0, 2.0), gamma=1.0, label_smoothing=0.05),
    optimizer=Optimizer(name="adamw", learning_rate=2e-3, weight_decay=5e-2),
    schedule=Schedule(warmup_epochs=1, min_lr=1e-5),
    swa=SWA(start_epoch=6),
    precision="float32",
    epochs=8,
    batch_size=32,
    seed=0,
    output="runs/smoke",
)
