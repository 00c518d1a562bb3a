"""The machine's own ceilings, measured at the start of a run: memory bandwidth and matmul throughput.

Kernel numbers are reported as fractions of these, so a result reads the same on any GPU (or CPU). Bandwidth is
a large tensor copy (bytes read + bytes written per second), the matmul ceiling a large square matmul in the
run's dtype.
"""
from __future__ import annotations

import torch

from .timing import measure


def _sizes(device: torch.device, quick: bool) -> tuple[int, int]:
    """(copy size in MiB, matmul n): large enough to leave caches and launch overhead behind."""
    if device.type == "cuda":
        return (256, 4096) if quick else (1024, 8192)
    return (16, 256) if quick else (256, 2048)


def measure_hardware(device: torch.device, dtype: torch.dtype, quick: bool = False) -> dict:
    copy_mib, n = _sizes(device, quick)
    source = torch.empty(copy_mib * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    target = torch.empty_like(source)
    copy = measure(lambda: target.copy_(source), device, quick=quick)
    bandwidth = 2 * source.numel() * source.element_size() / (copy.median_ms * 1e-3)  # read + write, bytes/s
    del source, target

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    matmul = measure(lambda: a @ b, device, quick=quick)
    flops = 2 * n**3 / (matmul.median_ms * 1e-3)
    return {
        "device": device.type,
        "copy_mib": copy_mib,
        "bandwidth_gb_s": bandwidth / 1e9,
        "matmul_n": n,
        "matmul_dtype": str(dtype).replace("torch.", ""),
        "matmul_tflop_s": flops / 1e12,
    }
