"""`triton`: our fused Triton softmax attention on packed segments (`bpmt_fast.kernels.varlen_attention`).

Native layout is packed varlen: the base class packs padded inputs, so all parts (self-attention) or all part
pairs (cross-attention) of a batch run in one kernel launch, forward and backward. Exact softmax attention with
fp32 accumulation and a deterministic backward. CUDA; CPU tensors only under the Triton interpreter
(TRITON_INTERPRET=1, for tests), and there not in bfloat16 (the interpreter's bf16 `tl.dot` is wrong).

`TritonKernelBackend` holds what every backend of ours built on a Triton kernel module shares (availability,
devices, dtypes); `flow-triton` builds on it too.
"""
from __future__ import annotations

import importlib
import os
from typing import ClassVar

import torch

from .base import AttentionBackend


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def runs_interpreted(backend: type[AttentionBackend], device_type: str) -> bool:
    """True when `backend` is one of our Triton kernel backends and tensors on `device_type` would run in the
    Triton interpreter: every kernel program in Python, fine for tests, meaningless for timing."""
    return issubclass(backend, TritonKernelBackend) and device_type == "cpu" and _interpreting()


class TritonKernelBackend(AttentionBackend):
    """A backend whose kernels live in `KERNEL_MODULE` (a Triton module of `bpmt_fast.kernels`)."""

    KERNEL_MODULE: ClassVar[str]
    SUPPORTED_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})
    MAX_HEAD_DIM = 128
    SUPPORTS_VARLEN = True

    @classmethod
    def kernels(cls):
        # Imported lazily: the kernel module imports triton, and triton.jit reads TRITON_INTERPRET at that moment.
        return importlib.import_module(cls.KERNEL_MODULE)

    @classmethod
    def unavailable_reason(cls):
        try:
            importlib.import_module("triton")
        except ImportError as error:
            return f"package triton is not installed ({error})"
        if not torch.cuda.is_available() and not _interpreting():
            return "needs a CUDA GPU, or TRITON_INTERPRET=1 (the Triton interpreter) for CPU tensors"
        return None

    @classmethod
    def version(cls):
        if not cls.is_available():
            return None
        return getattr(importlib.import_module("triton"), "__version__", "unknown")

    @classmethod
    def extra_reasons(cls, inputs):
        reasons = []
        if inputs.device_type == "cpu":
            if not _interpreting():
                reasons.append("CPU tensors run only in the Triton interpreter (set TRITON_INTERPRET=1)")
            if inputs.dtype == torch.bfloat16:
                reasons.append("bfloat16 on CPU is not supported: the Triton interpreter's bf16 tl.dot is wrong")
        return reasons


class TritonBackend(TritonKernelBackend):
    NAME = "triton"
    DESCRIPTION = "our fused Triton FlashAttention-2-style kernel on packed parts / part pairs, fwd + bwd"
    KERNEL_MODULE = "bpmt_fast.kernels.varlen_attention"
    SUPPORTS_CAUSAL = False
    SUPPORTS_CUSTOM_SCALE = True
    IS_EXACT = True

    def _varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal):
        # causal is always False here: SUPPORTS_CAUSAL = False makes `check` refuse causal calls first.
        # check_values=False: the offsets were validated by `attention_varlen` or built from validated lengths
        # by the base class, and re-reading them would cost a host sync per call.
        return self.kernels().varlen_attention(
            q, k, v, cu_seqlens_q.to(q.device, torch.int32), cu_seqlens_k.to(q.device, torch.int32),
            int(max_seqlen_q), int(max_seqlen_k), scale=scale, check_values=False)
