"""Run a function as 2 gloo ranks in spawned processes (for tests of the collectives)."""

import os
import socket
import traceback

import torch.multiprocessing as mp


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world_size, port, timeout_s, function, args, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size), KERAS_BACKEND="torch")
    from keras_cxr import distributed

    try:
        context = distributed.initialize(timeout_s=timeout_s)
        results[rank] = ("ok", function(context, *args))
    except BaseException:  # noqa: BLE001 - reported to the test
        results[rank] = ("error", traceback.format_exc())
    finally:
        distributed.shutdown()


def run_ranks(function, *args, world_size=2, timeout_s=60):
    """`function(context, *args)` on each rank; returns the ranks' results (a list), or fails with a rank's traceback.

    `timeout_s`: the process group's collective timeout.
    """
    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.start_processes(_entry, args=(world_size, _free_port(), timeout_s, function, args, results), nprocs=world_size,
                       start_method="spawn", join=True)
    out = []
    for rank in range(world_size):
        status, value = results[rank]
        if status == "error":
            raise AssertionError(f"rank {rank} failed:\n{value}")
        out.append(value)
    return out
