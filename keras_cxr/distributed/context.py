"""The process group of a data-parallel run, and the few collectives keras-cxr uses on it."""

import dataclasses
import datetime
import os

# Exit status of a rank that stops because another rank failed (its own message would only repeat the other's).
PEER_FAILED_EXIT = 75
DEFAULT_TIMEOUT_S = 300
# Waiting at the end for rank 0 to write the results (a whole validation pass and more on a large model):
# only a rank that hangs that long is given up on; a rank that dies is noticed at once.
FINISH_TIMEOUT_S = 24 * 3600

_object_group = None  # a gloo group for pickled objects, also under NCCL
_finish_group = None  # a gloo group with FINISH_TIMEOUT_S, for `wait_for_all`


@dataclasses.dataclass(frozen=True)
class Context:
    """Where this process sits in a data-parallel run.

    `rank` 0 is the one that writes the run directory; `local_rank` is the
    rank on this machine (the GPU index under NCCL). Pass it as
    `CXRDataset(shard=...)` and to `data_parallel`.
    """

    rank: int
    world_size: int
    local_rank: int = 0
    backend: str = "gloo"

    @property
    def is_main(self):
        return self.rank == 0

    def gather(self, array):
        """Every rank's `array`, concatenated along axis 0 in rank order (a collective)."""
        import numpy as np
        import torch.distributed as dist

        parts = [None] * self.world_size
        dist.all_gather_object(parts, np.asarray(array), group=_object_group)
        return np.concatenate(parts, axis=0)

    def average_(self, tensors):
        """Replace each torch tensor by its mean over the ranks, in place (one collective)."""
        import torch
        import torch.distributed as dist

        tensors = [t for t in tensors if t is not None]
        if not tensors:
            return
        with torch.no_grad():
            flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
            dist.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view(t.shape).to(t.dtype))
                offset += t.numel()

    def on_main(self, function):
        """`function()` run by rank 0 alone; its result (or the exception it raised) on every rank."""
        outcome = None
        if self.is_main:
            try:
                outcome = (True, function())
            except Exception as e:  # noqa: BLE001 - handed to every rank, raised there
                outcome = (False, e if _picklable(e) else RuntimeError(f"{type(e).__name__}: {e}"))
        ok, value = self.broadcast(outcome)
        if not ok:
            raise value
        return value

    def broadcast(self, value):
        """Rank 0's `value` (any picklable object) on every rank."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=_object_group)
        return box[0]

    def barrier(self):
        import torch.distributed as dist

        dist.barrier(group=_object_group)

    def wait_for_all(self):
        """Wait until every rank gets here, however long rank 0's last work takes (up to a day).

        Call it at the end of a run, before `shutdown()`: the ranks then leave
        the process group together, not while rank 0 is still writing.
        """
        import torch.distributed as dist

        dist.barrier(group=_finish_group)


def _picklable(value):
    import pickle

    try:
        pickle.loads(pickle.dumps(value))
        return True
    except Exception:  # noqa: BLE001 - whatever pickling raises, the value cannot travel
        return False


def requested():
    """Whether this process was started as one of several ranks (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def initialize(timeout_s=None):
    """Join the process group that torchrun (or `keras-cxr fit --nproc`) set up; returns the `Context`.

    NCCL when CUDA is available (each rank on GPU `local_rank`), gloo on
    CPUs, where each rank gets `cores / ranks on this machine` torch
    threads. A collective waits at most `timeout_s` seconds (default
    `KERAS_CXR_DIST_TIMEOUT` or 300) for a rank that hangs; a rank that dies
    is noticed at once. Returns `None` outside a multi-process launch.
    """
    global _object_group, _finish_group
    if not requested():
        return None
    import torch
    import torch.distributed as dist

    if timeout_s is None:
        timeout_s = float(os.environ.get("KERAS_CXR_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    _object_group = dist.new_group(backend="gloo") if backend != "gloo" else None
    _finish_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=FINISH_TIMEOUT_S))
    if backend == "gloo":
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_ranks))
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def current():
    """The `Context` of the initialised process group, or `None` (one process)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                   dist.get_backend())


def shutdown():
    """Leave the process group (each rank, at the end of its work)."""
    global _object_group, _finish_group
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _object_group = _finish_group = None


def is_peer_failure(error):
    """Whether `error` is a collective failing because another rank died or hung."""
    import torch.distributed as dist

    if isinstance(error, (getattr(dist, "DistBackendError", ()), getattr(dist, "DistNetworkError", ()))):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        marker in text for marker in ("Connection closed by peer", "Connection reset by peer", "Timed out")
    )
