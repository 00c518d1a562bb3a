"""The kernel specializations the library launches, from the launchers themselves (one source of truth).

A *case* is one call of an op at the library's shapes (head dim, dtype, segment-length class, row mode or causal
flag). `launch_case` runs the op's forward and backward launchers on it. On real tensors that launches every
kernel the case needs; under `recording_launches` on "meta" tensors nothing runs and each kernel launch is
recorded instead (kernel, grid, arguments, options), which is what `bpmt_fast.bench.compile_report` compiles for
GPU targets on a machine without a GPU. So the configuration functions of the launchers (`_config`,
`_packed_config`) decide the specializations; there is no hand-kept list to drift from them.

Shapes swept (`all_cases`): head dims 16/32/64/128, fp16/bf16/fp32; softmax attention per segment at maximum
lengths 12, 30, 60 and 120 (each class picks different tiles; longer segments use the 120 tiles) and in the
packed-rows mode, each with the backward the launcher picks (one pass where the segments fit its tile, three
kernels for these few long segments), plus the three-kernel backward forced at 30 (what any other kv_index runs)
and the one-launch-per-(segment, head) backward forced at 120 (what gait batches of long segments run); padded
sequences read in place at 30 and 120 (the model's padded calls); flow attention non-causal, causal and chunked
(non-causal, forced: the chunk size is a runtime argument, so 60 tokens compile what long segments run).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from . import flow_attention as flow
from . import varlen_attention as softmax

HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Longest segment per length class: the tiles `_config` picks change at 16, 32, 64 and 128 tokens.
SOFTMAX_LENGTHS = (12, 30, 60, 120)
HEADS = 2  # enough to make the head stride a real stride; the grid size does not change the specialization


@dataclass(frozen=True)
class KernelCase:
    op: str  # "softmax" | "flow"
    dtype: torch.dtype
    head_dim: int
    max_len: int  # longest segment
    pack_rows: bool = False  # softmax: packed-rows mode (many short segments per program)
    causal: bool = False  # flow: causal variant
    backward: str | None = None  # softmax: None = the launcher's choice, else one of varlen_attention.BACKWARDS
    padded: bool = False  # softmax: padded sequences read in place (`padded_attention_fwd / bwd`)
    chunked: bool | None = None  # flow: None = the launcher's choice, True = the chunked path

    @property
    def mode(self) -> str:
        if self.op == "softmax":
            mode = "packed" if self.pack_rows else f"{'padded' if self.padded else 'per-segment'}<={self.max_len}"
            return mode + (f" {self.backward}-bwd" if self.backward else "")
        if self.chunked:
            return "chunked"
        return "causal" if self.causal else "non-causal"

    @property
    def name(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return f"{self.op} {self.mode} D{self.head_dim} {dtype}"

    def lengths(self) -> list[int]:
        """Segment lengths: odd, unequal, the longest first (a second block for long segments)."""
        n = self.max_len
        return [n, max(1, n // 2 + 1), max(1, n - 3), 1, max(1, n // 3)]


def all_cases() -> list[KernelCase]:
    cases = []
    for dtype in DTYPES:
        for d in HEAD_DIMS:
            cases += [KernelCase("softmax", dtype, d, n) for n in SOFTMAX_LENGTHS]
            cases.append(KernelCase("softmax", dtype, d, 30, pack_rows=True))
            cases.append(KernelCase("softmax", dtype, d, 30, backward="split"))
            cases.append(KernelCase("softmax", dtype, d, 120, backward="segment"))
            cases += [KernelCase("softmax", dtype, d, n, padded=True) for n in (30, 120)]
            cases += [KernelCase("flow", dtype, d, 60, causal=causal) for causal in (False, True)]
            cases.append(KernelCase("flow", dtype, d, 60, chunked=True))
    return cases


def case_inputs(case: KernelCase, device, seed: int = 0):
    """q, k, v `(total, HEADS, D)` and int32 cu_seqlens for the case (random values; meta tensors hold none)."""
    lengths = case.lengths()
    total = sum(lengths)
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(torch.int32)
    if torch.device(device).type == "meta":
        make = lambda: torch.empty(total, HEADS, case.head_dim, dtype=case.dtype, device=device)  # noqa: E731
        return make(), make(), make(), cu.to(device)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(total, HEADS, case.head_dim, generator=g).to(device=device, dtype=case.dtype)
               for _ in range(3))
    return q, k, v, cu.to(device)


def launch_case(case: KernelCase, device) -> tuple[torch.Tensor, ...]:
    """Forward and backward launchers of the case's op on `device`; returns (out, dq, dk, dv)."""
    q, k, v, cu = case_inputs(case, device)
    do = torch.ones_like(q) if torch.device(device).type == "meta" else torch.randn_like(q)
    if case.op == "softmax" and case.padded:  # rows s*N onwards, N past the longest sequence (bucketed batches)
        segments, padded_n = cu.numel() - 1, case.max_len + 3
        lengths = (cu[1:] - cu[:-1]).to(torch.int32)
        q, k, v, do = (torch.empty(segments * padded_n, HEADS, case.head_dim, dtype=case.dtype, device=device)
                       if torch.device(device).type == "meta" else
                       torch.randn(segments * padded_n, HEADS, case.head_dim).to(device=device, dtype=case.dtype)
                       for _ in range(4))
        out, lse = softmax.padded_attention_fwd(q, k, v, lengths, padded_n, case.max_len, case.head_dim ** -0.5)
        grads = [torch.empty_like(q) for _ in range(3)]
        softmax.padded_attention_bwd(do, q, k, v, out, lse, lengths, padded_n, case.max_len, case.head_dim ** -0.5,
                                     *grads)
        return (out, *grads)
    if case.op == "softmax":
        n = case.max_len
        segments = cu.numel() - 1
        kv_index = torch.arange(segments, dtype=torch.int32, device=device)
        scale = case.head_dim ** -0.5
        out, lse = softmax.varlen_attention_fwd(q, k, v, cu, cu, kv_index, n, n, scale, case.pack_rows, True)
        grads = softmax.varlen_attention_bwd(do, q, k, v, out, lse, cu, cu, kv_index, n, n, scale,
                                             case.pack_rows, True, case.backward)
        return (out, *grads)
    out, state = flow.flow_attention_fwd(q, k, v, cu, cu, case.causal, flow.DEFAULT_EPS, chunked=case.chunked)
    grads = flow.flow_attention_bwd(do, q, k, v, cu, cu, state, case.causal, flow.DEFAULT_EPS, chunked=case.chunked)
    return (out, *grads)


@dataclass
class Launch:
    """One recorded kernel launch."""
    kernel: object  # the triton JITFunction
    grid: tuple
    args: tuple
    kwargs: dict

    @property
    def kernel_name(self) -> str:
        return self.kernel.__name__

    def constexprs(self) -> dict:
        """The UPPER-case meta-parameters (tiles, head dims, modes) and launch options: what the launcher chose."""
        return {k: v for k, v in self.kwargs.items() if k.isupper() or k in ("num_warps", "num_stages")}


class _Recorder:
    def __init__(self, kernel, launches: list):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(Launch(self.kernel, tuple(grid), args, dict(kwargs)))
        return launch


KERNEL_MODULES = (softmax, flow)


@contextlib.contextmanager
def recording_launches() -> Iterator[list[Launch]]:
    """Inside, kernel launches of the kernel modules are recorded, not run (use with "meta" tensors)."""
    launches: list[Launch] = []
    saved = []
    for module in KERNEL_MODULES:
        for name, value in list(vars(module).items()):
            if name.endswith("_kernel") and hasattr(value, "arg_names"):
                saved.append((module, name, value))
                setattr(module, name, _Recorder(value, launches))
    try:
        yield launches
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def case_launches(case: KernelCase) -> list[Launch]:
    """The kernel launches of one case, recorded on meta tensors (nothing runs)."""
    with recording_launches() as launches:
        launch_case(case, "meta")
    return launches
