"""Keep freed tensor memory in the process heap, so a training step does not page-fault.

PyTorch's CPU tensors come from glibc's `malloc`. glibc serves a block of
32 MB or more (after its dynamic threshold has grown; 128 kB before) with
its own `mmap` and unmaps it again when it is freed, and returns free memory
at the top of the heap to the operating system once it exceeds 64 MB. A
training step allocates and frees the same activations every step, so each
step then asks the kernel for fresh pages, and every first touch of a 4 kB
page is a page fault (with the page zeroed). Measured on this project's CPU
machine (2 threads, batch 8, one network per process): timm's training step
took 52,000 page faults per step on EfficientNetV2-S at 128 px and 105,000
on Swin-T at 224 px; given this setting it went from 329 to 276 ms and from
1,394 to 1,294 ms (`benchmarks/RESULTS.md`, "same heap"). keras-cxr's own
steps fault less (369 and 41,000 per step without it) and gain less.

`install()` asks glibc (`mallopt`) to serve blocks up to 1 GiB from the
heap and never to trim it, so memory a step frees stays mapped and the next
step reuses it. The cost: the process keeps its peak heap size until it
exits, instead of handing freed memory back (a training process peaks at the
same place every step anyway). glibc offers no way to restore its dynamic
threshold, so there is no `uninstall`. Elsewhere (macOS, Windows, musl) it
does nothing.

It is not one of the patches `keras_cxr.accel.enable()` applies: it changes
the whole process for good. The `keras-cxr` command sets it for its own
process (unless ``KERAS_CXR_ACCEL=0`` or ``KERAS_CXR_HEAP=0``); a program of
your own opts in with `keras_cxr.accel.keep_freed_memory()`. The same effect
for any program: ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=-1``
in the environment before it starts.
"""

import ctypes
import platform

# glibc's <malloc.h> parameter numbers.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1 << 30  # blocks below this come from the heap
NEVER_TRIM = -1  # "setting M_TRIM_THRESHOLD to -1 disables trimming completely" (mallopt(3))

_installed = False


def _glibc():
    """glibc's shared library, or None on any other C library."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def install():
    """Set glibc's heap to keep freed memory (once; a no-op without glibc).

    Returns:
        Whether the setting is in place.
    """
    global _installed
    libc = None if _installed else _glibc()
    if libc is not None:
        # mallopt returns 1 on success, 0 when glibc refuses the value.
        _installed = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
    return _installed


def installed():
    return _installed
