"""Median run time and peak memory of a callable, with the right tool per device.

CUDA: `triton.testing.do_bench` (median; it synchronises and flushes L2 between runs), else CUDA events around
each call; peak memory from `torch.cuda.max_memory_allocated` over one call (inputs included: they are live).
CPU: `torch.utils.benchmark.Timer` (blocked / adaptive autorange, all threads); peak memory is not measured
(torch keeps no CPU allocator statistics), so it is NaN.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable

import torch
import torch.utils.benchmark as torch_benchmark

NAN = math.nan
CPU_MEMORY_NOTE = "peak memory not measured on CPU"


@dataclass
class Measurement:
    median_ms: float
    peak_mib: float = NAN
    runs: int = 0  # calls timed (0: not reported by the timer)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak allocated memory during one call, MiB; NaN on CPU."""
    if device.type != "cuda":
        return NAN
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def _cuda_median_ms(fn, quick: bool) -> tuple[float, int]:
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        warmup, rep = (5, 20) if quick else (25, 100)  # milliseconds of warm-up / measurement
        return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median")), 0  # do_bench hides its count
    # No triton: events around each call. Synchronise before the first event so queued work is not counted.
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(10 if quick else 50):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), len(times)


def _cpu_median_ms(fn, quick: bool) -> tuple[float, int]:
    timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    if quick:
        result = timer.blocked_autorange(min_run_time=0.02)
    else:
        result = timer.adaptive_autorange(threshold=0.1, min_run_time=0.2, max_run_time=10.0)
    return result.median * 1e3, result.number_per_run * len(result.raw_times)


def measure(fn: Callable[[], object], device: torch.device, *, quick: bool = False, warmup: int = 1) -> Measurement:
    """Warm up, record peak memory over one call, then the median time of many calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    peak = peak_memory_mib(fn, device)
    median, runs = _cuda_median_ms(fn, quick) if device.type == "cuda" else _cpu_median_ms(fn, quick)
    return Measurement(median, peak, runs)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def free_memory(device: torch.device) -> None:
    """After an OOM or between cases: return cached blocks so the next case starts from a clean allocator."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
