"""`keras_cxr.accel.heap`: a step's re-allocations stop page-faulting, only where asked for.

Page faults are counted (`ru_minflt`), not timed. Each case runs in a fresh
interpreter: glibc's settings are process-wide and cannot be undone.
"""

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the heap setting is glibc's malloc")

PAGES = 96 * 2**20 // 4096

# A "step" allocates a 96 MB activation and a smaller one, writes them and frees them.
SCRIPT = f"""
import resource, sys, torch
torch.set_num_threads(1)
mode = sys.argv[1]
if mode != "plain":
    import keras_cxr, keras_cxr.models
    from keras_cxr import accel
    if mode == "enable":
        accel.enable()
    elif mode == "keep":
        assert accel.keep_freed_memory()
faults = []
for step in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.empty({PAGES * 1024}).fill_(1.0)
    b = torch.empty({PAGES * 1024 // 3}).fill_(2.0)
    del a, b
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(max(faults[4:]))
"""


def _faults(mode):
    """The most page faults of a steady-state step."""
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split()[-1])


def test_glibc_defaults_fault_every_page_of_a_large_block_every_step():
    assert _faults("plain") >= PAGES  # the premise: glibc maps a 96 MB block afresh each time


@pytest.mark.slow
def test_importing_keras_cxr_or_enabling_the_patches_leaves_glibc_alone():
    assert _faults("import") >= PAGES
    assert _faults("enable") >= PAGES


def test_keep_freed_memory_keeps_freed_blocks_for_the_next_step():
    assert _faults("keep") < PAGES // 100


# Three training steps and a prediction of a small keras-cxr model: the heap setting only changes
# where memory comes from, so every number must be the same (a kernel that read memory it had not
# written would differ between fresh, zeroed pages and reused ones).
TRAIN = """
import sys
import numpy as np
import keras_cxr
from keras_cxr import accel, models
from keras_cxr.losses import FocalLoss
from keras_cxr.seeding import set_seed
import keras
if sys.argv[1] == "on":
    assert accel.keep_freed_memory()
accel.enable()
set_seed(3)
model = models.build("cxr_resnet", image_size=96, dropout=0.1)
model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=FocalLoss())
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (16, 96, 96, 3), dtype=np.uint8)
y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 16)]
losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
probs = model.predict(x, verbose=0)
np.save(sys.argv[2], np.concatenate([np.asarray(losses, np.float32), probs.ravel()]))
"""


@pytest.mark.slow
def test_training_and_predictions_are_identical_with_and_without_it(tmp_path):
    results = {}
    for mode in ("on", "off"):
        out = tmp_path / f"{mode}.npy"
        run = subprocess.run([sys.executable, "-c", TRAIN, mode, str(out)], capture_output=True, text=True,
                             timeout=600, env=os.environ)
        assert run.returncode == 0, run.stderr[-2000:]
        results[mode] = np.load(out)
    assert results["on"].shape == (3 + 16 * 4,)
    np.testing.assert_array_equal(results["on"], results["off"])
