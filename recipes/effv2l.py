"""EfficientNetV2-L at 512 px (dropout 0.40) with the seed report's settings.

The seed used batch 24; at 512 px V2-L needs a smaller batch to fit a
16 GB GPU, so this recipe uses 8 (raise it on larger cards).
"""

from keras_cxr.recipe import Model, seed_recipe

recipe = seed_recipe(
    model=Model(name="effv2_l", image_size=512, dropout=0.40, weights="imagenet"),
    batch_size=8,
    output="runs/effv2l",
)
