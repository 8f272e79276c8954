"""Swin-Large (window 12) at 384 px from keras-hub's ImageNet preset.

Seed settings; batch 12 fits Swin-L at 384 px in 16 GB with mixed_float16.
"""

from keras_cxr.recipe import Model, seed_recipe

recipe = seed_recipe(
    model=Model(name="swin_l", image_size=384, dropout=0.2, weights="imagenet"),
    batch_size=12,
    output="runs/swin_l",
)
