"""Choosing the Keras dtype policy (float32 or mixed precision).

Mixed precision is a GPU setting: on CPU it is several times slower than
float32, so `"auto"` picks `"mixed_float16"` only when CUDA is available.

Example:

```python
from keras_cxr.precision import set_precision

policy = set_precision("auto")   # "mixed_float16" on a CUDA GPU, else "float32"
```
"""

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")


def resolve_precision(name):
    """Map a precision name to a Keras dtype policy name.

    Args:
        name: one of `"float32"`, `"mixed_float16"`, `"mixed_bfloat16"` or
            `"auto"` (`"mixed_float16"` when `torch.cuda.is_available()`,
            else `"float32"`).

    Returns:
        The resolved policy name (never `"auto"`).

    Raises:
        ValueError: for any other name.
    """
    if not isinstance(name, str) or name not in PRECISIONS:
        raise ValueError(
            f"Unknown precision {name!r}; expected one of {', '.join(repr(p) for p in PRECISIONS)}."
        )
    if name == "auto":
        import torch

        return "mixed_float16" if torch.cuda.is_available() else "float32"
    return name


def set_precision(name):
    """Resolve `name` and set it as the global Keras dtype policy.

    Call it before building the model: layers read the policy when they are
    created. Under a mixed policy, keep the classifier's last layer (and its
    softmax) in float32.

    Args:
        name: see `resolve_precision`.

    Returns:
        The resolved policy name.
    """
    resolved = resolve_precision(name)
    from keras_cxr._backend import ensure_torch_backend

    ensure_torch_backend()
    import keras

    keras.mixed_precision.set_dtype_policy(resolved)
    return resolved
