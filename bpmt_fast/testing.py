"""Numerical tolerances for comparing a backend with the reference, in one place (tests and benchmarks use them),
and the devices tests run on.

Rule for softmax backends (the flash-attention test rule): in float16/bfloat16 the error against the fp32
reference may be at most twice that of a plain PyTorch run in the same low precision, plus a small floor.
In float32/float64 a fixed tolerance applies.
"""
from __future__ import annotations

import torch

from bpmt_fast.attention import layout

# Tests that run on CPU run on the GPU too where there is one (a GPU run covers what the CPU run covers, on CUDA).
TEST_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# (atol, rtol) for direct comparison against an fp32/fp64 reference.
TOLERANCES = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (2e-5, 2e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
# Slack on top of "2x the low-precision PyTorch error": covers rounding of the output to the dtype itself.
LOW_PRECISION_FLOOR = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


def low_precision_softmax_attention(q, k, v, q_lengths=None, kv_lengths=None, scale=None):
    """Plain PyTorch softmax attention computed entirely in the inputs' dtype (no fp32 upcast): the baseline
    error a low-precision backend is allowed twice of."""
    batch, n_q, _, head_dim = q.shape
    n_k = k.shape[1]
    scale = head_dim**-0.5 if scale is None else scale
    kv_valid = layout.padding_mask(kv_lengths if kv_lengths is not None else layout.full_lengths(batch, n_k, q.device), n_k)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    scores = scores.masked_fill(~kv_valid[:, None, None, :], float("-inf"))
    out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, dim=-1), v)
    return layout.zero_padding(out, q_lengths)


def max_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return (x.double() - reference.double()).abs().max().item() if x.numel() else 0.0


def allowed_error(reference: torch.Tensor, dtype: torch.dtype, baseline_error: float | None = None) -> float:
    """The largest absolute error tolerated for a tensor in `dtype` compared with its fp32 reference."""
    if dtype in LOW_PRECISION_FLOOR and baseline_error is not None:
        return 2 * baseline_error + LOW_PRECISION_FLOOR[dtype]
    atol, rtol = TOLERANCES[dtype]
    return atol + rtol * reference.abs().max().item()


def assert_close(name: str, x: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype,
                 baseline_error: float | None = None) -> None:
    if not torch.isfinite(x).all():
        raise AssertionError(f"{name}: non-finite values (unwritten or poisoned output?)")
    error, allowed = max_error(x, reference), allowed_error(reference, dtype, baseline_error)
    if error > allowed:
        raise AssertionError(f"{name}: max error {error:.3g} > allowed {allowed:.3g} ({dtype})")
