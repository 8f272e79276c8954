"""One module per model family: how a PyTorch `state_dict`'s keys map onto that family's keras-cxr backbone.

Each module has `targets(backbone)` (torch key -> `torch_weights.Target`),
`HEAD` (a regex of the classifier keys, dropped) and optionally `PREFIXES`,
`IGNORED`, `canonical(key)` and `hint(mismatched)`. Registered in
`keras_cxr.models.torch_weights.FAMILIES`; loaded by `load_torch_state_dict`.
"""
