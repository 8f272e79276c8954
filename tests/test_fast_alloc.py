"""`keras_cxr.fast_alloc`: importing keras_cxr makes a step's re-allocations page-fault free.

Page faults are counted (`ru_minflt`), not timed. Each case runs in a fresh
interpreter: glibc's settings are process-wide and this test process already
has keras_cxr's.
"""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="fast_alloc sets glibc's malloc")

PAGES = 96 * 2**20 // 4096

# A "step" allocates a 96 MB activation and a smaller one, writes them and frees them.
SCRIPT = f"""
import resource, sys, torch
torch.set_num_threads(1)
if sys.argv[1] != "plain":
    import keras_cxr
    from keras_cxr import fast_alloc
    assert fast_alloc.installed() == (sys.argv[1] == "keras_cxr")
faults = []
for step in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.empty({PAGES * 1024}).fill_(1.0)
    b = torch.empty({PAGES * 1024 // 3}).fill_(2.0)
    del a, b
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(max(faults[4:]))
"""


def _steady_faults(mode, env=None):
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split()[-1])


def test_glibc_defaults_fault_every_page_of_a_large_block_every_step():
    # The premise: without keras_cxr, glibc maps a 96 MB block afresh each time.
    assert _steady_faults("plain") >= PAGES


def test_importing_keras_cxr_keeps_freed_blocks_for_the_next_step():
    assert _steady_faults("keras_cxr") < PAGES // 100


def test_fast_ops_off_leaves_glibc_alone():
    assert _steady_faults("keras_cxr_off", {"KERAS_CXR_FAST_OPS": "0"}) >= PAGES
