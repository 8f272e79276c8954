"""Keras's seeded random draws on torch without a device round trip per draw.

Every seeded draw (a `Dropout` with a `noise_shape`, as EfficientNetV2's
drop-connect layers are, keras-hub's `DropPath`, `keras.random.*` with a
`SeedGenerator`) makes a `torch.Generator` from the generator's state: Keras
copies an increment to the device, adds it to the state, and reads the seed
back with `int()`. On a GPU the read waits for every queued kernel, so each
draw stalls the pipeline (profiled: 70 of the 87 stream synchronisations of
an EfficientNetV2-S training step on an H200).

`install()` replaces `keras.src.backend.torch.random.torch_seed_generator`
with one that keeps a host copy of each `SeedGenerator`'s state: the state
is read once, then advanced on the device by an in-place add of a cached
increment (the arithmetic `SeedGenerator.next` does) while the host copy
advances alike. The copy is trusted only while the state tensor is the same
object at the version the last add left it at; anything else that writes the
state (`assign`, loading weights, restoring a snapshot) bumps that version,
and the state is read again. The seeds, and so every random number, are
Keras's own (a test compares the streams).
"""

import weakref

import torch

_keras_torch_seed_generator = None
# Private Keras objects, bound by `install` (never at import).
SeedGenerator = get_device = None

# SeedGenerator -> (state tensor, its version after our last add, host state, device increment)
_HOST_STATES = weakref.WeakKeyDictionary()


def probe():
    from keras.src.backend.torch import random as torch_random
    from keras.src.random.seed_generator import SeedGenerator as generator

    if not callable(getattr(torch_random, "torch_seed_generator", None)):
        return "keras.src.backend.torch.random has no torch_seed_generator"
    if not hasattr(generator(0), "state"):
        return "SeedGenerator has no state"
    return None


def _host_state(generator):
    value = generator.state.value
    known = _HOST_STATES.get(generator)
    if known is not None and known[0] is value and known[1] == value._version:
        return value, known[2], known[3]
    increment = torch.tensor([0, 1], dtype=value.dtype, device=value.device)
    return value, [int(x) for x in value.tolist()], increment


def _torch_seed_generator(seed):
    if not isinstance(seed, SeedGenerator) or get_device() == "meta":
        return _keras_torch_seed_generator(seed)
    value, (first, second), increment = _host_state(seed)
    with torch.no_grad():
        value.add_(increment)  # SeedGenerator.next(ordered=True): state + [0, 1]
    _HOST_STATES[seed] = (value, value._version, [first, second + 1], increment)
    generator = torch.Generator(device=get_device())
    generator.manual_seed((first + second) & 0xFFFFFFFF)  # as Keras: the pre-increment pair's sum, as uint32
    return generator


def install():
    global _keras_torch_seed_generator, SeedGenerator, get_device
    from keras.src.backend.torch import core
    from keras.src.backend.torch import random as torch_random
    from keras.src.random import seed_generator

    SeedGenerator, get_device = seed_generator.SeedGenerator, core.get_device
    _keras_torch_seed_generator = torch_random.torch_seed_generator
    torch_random.torch_seed_generator = _torch_seed_generator


def uninstall():
    global _keras_torch_seed_generator
    from keras.src.backend.torch import random as torch_random

    torch_random.torch_seed_generator = _keras_torch_seed_generator
    _keras_torch_seed_generator = None
