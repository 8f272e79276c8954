"""DINOv2-B (patch 14) at 448 px, classifying from the CLS token.

keras-hub's `dinov2_base` preset supplies the weights; its position
embeddings are resized to 448 px (32 x 32 patches). Seed settings otherwise.
"""

from keras_cxr.recipe import Model, seed_recipe

recipe = seed_recipe(
    model=Model(name="dinov2_b", image_size=448, dropout=0.2, weights="imagenet"),
    batch_size=16,
    output="runs/dinov2",
)
