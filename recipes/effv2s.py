"""EfficientNetV2-S at 384 px (dropout 0.25): the seed report's GPU recipe.

ImageNet weights come from the network (keras.applications). Made for a
16 GB GPU, where precision "auto" picks mixed_float16.
"""

from keras_cxr.recipe import Model, seed_recipe

recipe = seed_recipe(
    model=Model(name="effv2_s", image_size=384, dropout=0.25, weights="imagenet"),
    output="runs/effv2s",
)
