"""The benchmarks' shared measurement helpers."""
import pytest
import torch

from benchmarks.common import peak_rss_rise_mib, start_peak_rss


def test_peak_rss_rise_sees_a_freed_allocation():
    start = start_peak_rss()
    if start is None:
        pytest.skip("no resettable VmHWM (not Linux)")
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    del x
    rise = peak_rss_rise_mib(start)
    assert 60 <= rise < 200
    # After a new reset the earlier peak is gone.
    assert peak_rss_rise_mib(start_peak_rss()) < 30


def test_timeit_runs_until_min_time():
    import time

    from benchmarks.common import timeit

    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.02)

    best = timeit(fn, repeat=1, warmup=0, min_time_s=0.05)
    assert len(calls) >= 3 and best >= 0.02  # 3 sleeps of 20 ms reach 50 ms
    calls.clear()
    timeit(fn, repeat=2, warmup=1)
    assert len(calls) == 3
