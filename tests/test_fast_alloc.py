"""`keras_cxr.fast_alloc`: importing keras_cxr makes a step's re-allocations page-fault free.

Page faults are counted (`ru_minflt`), not timed. Each case runs in a fresh
interpreter: glibc's settings are process-wide and this test process already
has keras_cxr's.
"""

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="fast_alloc sets glibc's malloc")

PAGES = 96 * 2**20 // 4096

# A "step" allocates a 96 MB activation and a smaller one, writes them and frees them.
SCRIPT = f"""
import resource, sys, torch
torch.set_num_threads(1)
fast_ops_on = False
if sys.argv[1] != "plain":
    import keras_cxr
    from keras_cxr import fast_alloc, fast_ops
    assert fast_alloc.installed() == (sys.argv[1] == "keras_cxr")
    fast_ops_on = fast_ops.installed()
faults = []
for step in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.empty({PAGES * 1024}).fill_(1.0)
    b = torch.empty({PAGES * 1024 // 3}).fill_(2.0)
    del a, b
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(int(fast_ops_on), max(faults[4:]))
"""


def _run(mode, env=None):
    """(whether keras-cxr's fast ops are on, the most page faults of a steady-state step)."""
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-2000:]
    fast_ops_on, faults = result.stdout.split()[-2:]
    return fast_ops_on == "1", int(faults)


def test_glibc_defaults_fault_every_page_of_a_large_block_every_step():
    # The premise: without keras_cxr, glibc maps a 96 MB block afresh each time.
    assert _run("plain")[1] >= PAGES


def test_importing_keras_cxr_keeps_freed_blocks_for_the_next_step():
    fast_ops_on, faults = _run("keras_cxr")
    assert fast_ops_on and faults < PAGES // 100


def test_fast_ops_off_leaves_glibc_alone():
    fast_ops_on, faults = _run("keras_cxr_off", {"KERAS_CXR_FAST_OPS": "0"})
    assert not fast_ops_on and faults >= PAGES


def test_fast_alloc_off_alone_keeps_the_other_fast_ops():
    fast_ops_on, faults = _run("keras_cxr_off", {"KERAS_CXR_FAST_ALLOC": "0"})
    assert fast_ops_on and faults >= PAGES


# Three training steps and a prediction of a small keras-cxr model: the heap setting only changes
# where memory comes from, so every number must be the same (a kernel that read memory it had not
# written would differ between fresh, zeroed pages and reused ones).
TRAIN = """
import sys
import numpy as np
import keras_cxr
from keras_cxr import fast_alloc, models
from keras_cxr.losses import FocalLoss
from keras_cxr.seeding import set_seed
import keras
assert fast_alloc.installed() == (sys.argv[1] == "on")
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


def test_training_and_predictions_are_identical_with_and_without_it(tmp_path):
    results = {}
    for mode in ("on", "off"):
        out = tmp_path / f"{mode}.npy"
        env = {**os.environ, "KERAS_CXR_FAST_ALLOC": "1" if mode == "on" else "0"}
        run = subprocess.run([sys.executable, "-c", TRAIN, mode, str(out)], capture_output=True, text=True,
                             timeout=600, env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        results[mode] = np.load(out)
    assert results["on"].shape == (3 + 16 * 4,)
    np.testing.assert_array_equal(results["on"], results["off"])
