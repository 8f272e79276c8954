"""Which rank a failed launch blames."""

import signal

from keras_cxr.distributed.context import PEER_FAILED_EXIT
from keras_cxr.distributed.launch import RankFailure, first_failure


class _Failure:
    def __init__(self, exitcode, timestamp):
        self.exitcode, self.timestamp = exitcode, timestamp

    def signal_name(self):
        return signal.Signals(-self.exitcode).name if self.exitcode < 0 else "<N/A>"


def test_the_rank_that_failed_on_its_own_is_blamed_not_those_it_stopped():
    failures = {0: _Failure(PEER_FAILED_EXIT, 10), 1: _Failure(-9, 11), 2: _Failure(-15, 9)}
    assert first_failure(failures) == RankFailure(1, -9, "SIGKILL")
    assert first_failure(failures).describe() == "rank 1 was stopped by SIGKILL"


def test_the_earliest_own_failure_wins_and_an_exit_status_is_told():
    failures = {0: _Failure(1, 12), 3: _Failure(2, 11)}
    assert first_failure(failures) == RankFailure(3, 2, None)
    assert first_failure(failures).describe() == "rank 3 exited with status 2"


def test_only_peer_failures_say_a_rank_was_lost():
    failure = first_failure({1: _Failure(PEER_FAILED_EXIT, 5)})
    assert failure.rank == 1 and "lost contact with the other ranks" in failure.describe()
