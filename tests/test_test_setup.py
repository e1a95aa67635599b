"""The test session itself: under pytest-xdist the workers share the CPU cores instead of each taking them all."""

import os

import pytest

from .conftest import cpu_threads_per_worker


@pytest.mark.parametrize(("workers", "cores", "expected"), [(None, 2, None), ("1", 2, None), ("2", 2, 1),
                                                             ("4", 2, 1), ("2", 8, 4), ("3", 8, 2)])
def test_each_worker_gets_its_share_of_the_cores(monkeypatch, workers, cores, expected):
    if workers is None:
        monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    else:
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", workers)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert cpu_threads_per_worker() == expected


def test_torch_in_this_worker_runs_the_threads_it_was_given():
    """OMP_NUM_THREADS is read once, when torch is imported: the conftest sets it before anything imports torch."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        pytest.skip("one pytest process: torch keeps its own default")
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])
