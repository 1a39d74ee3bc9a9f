"""Independent training runs side by side in worker processes, for CPUs whose cores a single small
network cannot keep busy.

On 2 cores the profile's small networks train only somewhat faster with 2 threads than with 1, and
several single-thread processes together get more done than one process with 2 threads: how much
depends on the network and on run lengths (``benchmarks/bench_cpu_paths.py --processes`` measures
it; notebook 01's seeds gain, notebook 03's short attacker runs barely do). So runs that do not
depend on each other (seeds of a repeated experiment, one setting each) go to a pool of
``processes`` spawned workers with ``threads // processes`` threads each (at least 1). On a GPU, or
with one process or one job, the jobs run one after another in this process.

A job's result depends on the threads it ran with (the order of floating-point sums changes), so a
run is reproducible for the same ``processes`` and core count; the profile fixes ``processes``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def _use_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def worker_threads(processes: int) -> int:
    """Threads each of ``processes`` workers gets: this process's threads shared out, at least 1."""
    return max(1, torch.get_num_threads() // processes)


def map_in_processes(fn: Callable[..., Any], jobs: Sequence[tuple], *, processes: int, desc: str = "runs",
                     progress: bool | None = None, inline: Sequence[bool] | None = None) -> list[Any]:
    """``[fn(*job) for job in jobs]``, computed by up to ``processes`` spawned workers on a CPU.

    ``fn`` must be importable (a module-level function) and jobs and results picklable. A failed
    job's exception is raised here, after the pool is shut down. With ``processes <= 1``, a single
    job, or a GPU present, the jobs run in this process, in order. Jobs flagged in ``inline`` (for
    example those whose model only needs loading from a finished checkpoint) always run here: a
    worker's start-up costs seconds.
    """
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    inline = [False] * len(jobs) if inline is None else list(inline)
    if len(inline) != len(jobs):
        raise ValueError(f"inline has {len(inline)} flags for {len(jobs)} jobs")
    pooled = [index for index, here in enumerate(inline) if not here]
    if min(processes, len(pooled)) <= 1 or torch.cuda.is_available():
        pooled = []
    bar = tqdm(total=len(jobs), desc=desc, unit="run", leave=False,
               disable=None if progress is None else not progress)
    results: list[Any] = [None] * len(jobs)
    try:
        for index in sorted(set(range(len(jobs))) - set(pooled)):
            results[index] = fn(*jobs[index])
            bar.update()
        if pooled:
            _run_pool(fn, jobs, pooled, min(processes, len(pooled)), results, bar, desc)
    finally:
        bar.close()
    return results


def _run_pool(fn: Callable[..., Any], jobs: Sequence[tuple], pooled: list[int], processes: int,
              results: list[Any], bar, desc: str) -> None:
    threads = worker_threads(processes)
    log.info("%d %s in %d processes of %d thread(s)", len(pooled), desc, processes, threads)
    with concurrent.futures.ProcessPoolExecutor(max_workers=processes,
                                                mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_use_threads, initargs=(threads,)) as pool:
        futures = {pool.submit(fn, *jobs[index]): index for index in pooled}
        try:
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
