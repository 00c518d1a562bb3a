"""Training speed and memory of one stage, measured without adding a host sync inside the training step.

A `StageMeter` brackets each optimizer step with `step_started()` / `step_finished(num_sequences)`:

    meter = StageMeter(device)                 # once per stage (on CUDA: resets the peak-memory counter)
    for epoch in ...:
        for batch in ...:
            meter.step_started()
            ...forward, backward, optimizer.step(), scheduler.step()...
            meter.step_finished(global_batch_size)  # a host int, never a tensor
        speed = meter.summary()                # the one synchronize, at the end of the epoch / stage

One meter serves every epoch of a stage: steps accumulate, warm-up is excluded once (the first `warmup_steps`
steps of the stage, where allocator growth, autotuning and torch.compile dominate), and `summary()` may be
called after each epoch; each call covers every step so far. A resumed stage builds a new meter, so it has its
own warm-up.

On CUDA the step time is the time between two `torch.cuda.Event`s recorded on the device's current stream, read
only in `summary()`; on CPU it is `time.perf_counter()` around the step. Neither counts the time between steps
(the loader producing the next batch on the host), unless the device waits for the host inside the step.
"""
from __future__ import annotations

import resource
import sys
import time

import numpy as np
import torch

CUDA_MEMORY_KIND = "cuda max_memory_allocated"
# ru_maxrss is the whole process's peak since it started (model, data, earlier stages), not this stage's.
CPU_MEMORY_KIND = "cpu process peak RSS"


class StageMeter:
    """Per-step times and sequence counts of one training stage; `summary()` turns them into medians."""

    def __init__(self, device: torch.device | str, warmup_steps: int = 3):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.device = torch.device(device)
        self.warmup_steps = warmup_steps
        self.cuda = self.device.type == "cuda"
        self._sizes: list[int] = []  # num_sequences of each finished step
        self._ms: list[float] = []  # step times already read back (CPU: all; CUDA: up to the last summary)
        self._pending: list = []  # CUDA (start, end) event pairs not read back yet
        self._start = None  # perf_counter value or CUDA event of the step in progress
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def step_started(self) -> None:
        """Mark the start of an optimizer step (on CUDA: an event recorded on the stream, no sync)."""
        if self._start is not None:
            raise RuntimeError("step_started() twice without step_finished()")
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record(torch.cuda.current_stream(self.device))
        else:
            self._start = time.perf_counter()

    def step_finished(self, num_sequences: int) -> None:
        """Mark the end of the step begun by `step_started()`; `num_sequences` is the global batch size."""
        if self._start is None:
            raise RuntimeError("step_finished() without step_started()")
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record(torch.cuda.current_stream(self.device))
            self._pending.append((self._start, end))
        else:
            self._ms.append((time.perf_counter() - self._start) * 1000.0)
        self._sizes.append(int(num_sequences))
        self._start = None

    def _step_ms(self) -> list[float]:
        """Every finished step's time in ms; on CUDA one synchronize reads the events recorded since last time."""
        if self._pending:
            torch.cuda.synchronize(self.device)
            self._ms += [start.elapsed_time(end) for start, end in self._pending]
            self._pending = []  # read once: later summaries do not sync for these again
        return self._ms

    def peak_memory(self) -> tuple[float, str]:
        """(peak memory in MiB, what that peak is)."""
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20, CUDA_MEMORY_KIND
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports kilobytes, macOS bytes.
        return peak / (2**20 if sys.platform == "darwin" else 2**10), CPU_MEMORY_KIND

    def summary(self) -> dict:
        """JSON-ready speed of the steps so far, warm-up excluded. With no more steps than the warm-up, every step
        is measured (`warmup_excluded` is then 0): a short stage still reports a figure, and says on how many steps.
        Times are None when no step finished."""
        ms = np.asarray(self._step_ms(), dtype=float)
        sizes = np.asarray(self._sizes, dtype=float)
        skip = self.warmup_steps if len(ms) > self.warmup_steps else 0
        ms, sizes = ms[skip:], sizes[skip:]
        peak_mb, kind = self.peak_memory()
        measured = len(ms) > 0
        return {
            "steps": int(len(ms)),
            "warmup_excluded": skip,
            # Median of each step's own rate: robust to a few slow steps (checkpoint saves, a recompile).
            "seq_per_s": float(np.median(sizes / np.maximum(ms / 1000.0, 1e-12))) if measured else None,
            "step_ms": float(np.median(ms)) if measured else None,
            "step_ms_p90": float(np.percentile(ms, 90)) if measured else None,  # linear interpolation
            "peak_memory_mb": float(peak_mb),
            "memory_kind": kind,
        }
