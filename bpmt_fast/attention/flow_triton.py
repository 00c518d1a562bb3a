"""`flow-triton`: Flowformer flow attention in our fused Triton kernels (`bpmt_fast.kernels.flow_attention`).

The same function as the `flow` reference (phi = sigmoid, conservation flows, no softmax over keys), so not
exact softmax attention and never chosen by `auto`. Native layout is packed varlen: the base class packs padded
inputs, so all parts of a batch run in one launch. Non-causal and causal, forward and backward, fp32 arithmetic.
CUDA; CPU tensors only under the Triton interpreter (TRITON_INTERPRET=1, for tests), and there not in bfloat16
(the interpreter's bf16 `tl.dot` is wrong).
"""
from __future__ import annotations

import importlib
import os

import torch

from .base import AttentionBackend


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _kernels():
    # Imported lazily: the kernel module imports triton, and triton.jit reads TRITON_INTERPRET at that moment.
    return importlib.import_module("bpmt_fast.kernels.flow_attention")


class FlowTritonBackend(AttentionBackend):
    NAME = "flow-triton"
    DESCRIPTION = "Flowformer flow attention, our fused Triton kernels on packed segments (linear in N), fwd + bwd"
    SUPPORTED_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})
    MAX_HEAD_DIM = 128
    SUPPORTS_VARLEN = True
    SUPPORTS_CAUSAL = True
    SUPPORTS_CUSTOM_SCALE = False
    IS_EXACT = False

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

    def _varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal):
        if scale is not None:
            raise ValueError(f"{self.NAME} has no softmax scale, got scale={scale}")
        cu_seqlens_q = cu_seqlens_q.to(q.device, torch.int32)
        cu_seqlens_k = cu_seqlens_k.to(q.device, torch.int32)
        # Causal flow attention is self-attention. Only this check reads offsets back (a sync, causal calls only);
        # the rest were validated by `attention_varlen` or built from validated lengths by the base class.
        if causal and not torch.compiler.is_compiling() and not torch.equal(cu_seqlens_q, cu_seqlens_k):
            raise ValueError(f"causal flow attention needs equal q/kv segment lengths, got cu_seqlens_q "
                             f"{cu_seqlens_q.tolist()} and cu_seqlens_k {cu_seqlens_k.tolist()}")
        return _kernels().flow_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=causal,
                                                check_values=False)
