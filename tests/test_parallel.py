import math
import os

import pytest
import torch

from cxrlib.parallel import map_in_processes, worker_threads


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_jobs_in_processes_return_in_order_and_raise_a_workers_error():
    assert map_in_processes(math.pow, [(2, 3), (3, 2), (5, 1)], processes=2, progress=False) == [8.0, 9.0, 5.0]
    with pytest.raises(ValueError, match="math domain error"):
        map_in_processes(math.sqrt, [(4.0,), (-1.0,)], processes=2, progress=False)
    with pytest.raises(ValueError, match="at least 1"):
        map_in_processes(math.sqrt, [(4.0,)], processes=0)


def test_threads_are_shared_out_at_least_one_each(one_thread):
    assert worker_threads(3) == 1
    torch.set_num_threads(4)
    assert worker_threads(2) == 2 and worker_threads(3) == 1


def test_inline_jobs_run_here_and_the_others_in_workers():
    here = os.getpid()
    pids = map_in_processes(os.getpid, [(), (), ()], processes=2, inline=[True, False, False], progress=False)
    assert pids[0] == here and here not in pids[1:]
    assert map_in_processes(os.getpid, [(), ()], processes=2, inline=[True, True], progress=False) == [here, here]
    with pytest.raises(ValueError, match="2 flags for 3 jobs"):
        map_in_processes(os.getpid, [(), (), ()], processes=2, inline=[True, False])
