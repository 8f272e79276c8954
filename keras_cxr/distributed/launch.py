"""Start N ranks of a `keras-cxr` command on this machine with torch's elastic launcher (what torchrun runs)."""

import dataclasses
import logging
import sys
import uuid

from keras_cxr.distributed.context import PEER_FAILED_EXIT


@dataclasses.dataclass(frozen=True)
class RankFailure:
    """The first rank that failed of a launch: its rank, exit code and the signal that stopped it (or None)."""

    rank: int
    exit_code: int
    signal: str | None

    def describe(self):
        if self.signal:
            return f"rank {self.rank} was stopped by {self.signal}"
        if self.exit_code == PEER_FAILED_EXIT:  # every failed rank lost its peers: one hung (or the network broke)
            return (f"rank {self.rank} lost contact with the other ranks (one hung past KERAS_CXR_DIST_TIMEOUT "
                    "or the connection broke)")
        return f"rank {self.rank} exited with status {self.exit_code}"


class LaunchFailed(RuntimeError):
    """One rank of a launch failed; the others were stopped. `failure` is the first that failed on its own."""

    def __init__(self, failure):
        super().__init__(failure.describe())
        self.failure = failure


def launch(args, nproc, monitor_interval=0.5):
    """Run `python -m keras_cxr *args` as `nproc` ranks of one process group on this machine.

    The ranks rendezvous on a free local port (torchrun's `--standalone`).
    When any rank fails the launcher stops the others (SIGTERM, then
    SIGKILL) and this raises `LaunchFailed` naming the first rank that
    failed on its own (ranks that stopped because another failed exit with
    `PEER_FAILED_EXIT` and are not blamed).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=monitor_interval)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "keras_cxr", *args)
    except ChildFailedError as e:
        raise LaunchFailed(first_failure(e.failures)) from None


def first_failure(failures):
    """The `RankFailure` to blame among torch's `{rank: ProcessFailure}`: the earliest not caused by another rank."""
    # Not blamed when another rank failed: ranks that stopped because a peer did, and ranks the launcher terminated.
    own = {rank: f for rank, f in failures.items() if f.exitcode not in (PEER_FAILED_EXIT, -15)} or failures
    rank, failure = min(own.items(), key=lambda item: (item[1].timestamp, item[0]))
    signal = failure.signal_name() if failure.exitcode < 0 else None
    return RankFailure(rank, failure.exitcode, signal if signal and signal != "<N/A>" else None)
