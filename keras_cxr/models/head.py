"""The classification head shared by every keras-cxr model."""


def classification_head(features, num_classes, dropout):
    """Dropout -> Dense logits -> softmax, in float32 under mixed precision.

    Args:
        features: a pooled `(batch, channels)` KerasTensor.
        num_classes: number of output classes.
        dropout: dropout rate before the classifier.

    Returns:
        The `(batch, num_classes)` float32 probabilities tensor.

    Example:
    ```python
    features = keras.Input((1280,))
    probs = classification_head(features, num_classes=4, dropout=0.25)
    ```
    """
    import keras

    x = keras.layers.Dropout(dropout, name="head_dropout")(features)
    # float32 logits/softmax keep the probabilities (and the loss) accurate
    # when the rest of the model runs in float16.
    x = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.layers.Activation("softmax", dtype="float32", name="probs")(x)
