"""`flow-triton`: Flowformer flow attention in our fused Triton kernels (`bpmt_fast.kernels.flow_attention`).

The same function as the `flow` reference (phi = sigmoid, conservation flows, no softmax over keys), so not
exact softmax attention and never chosen by `auto`. Native layout is packed varlen: the base class packs padded
inputs, so all parts of a batch run in one launch. Non-causal and causal, forward and backward, fp32 arithmetic.
CUDA; CPU tensors only under the Triton interpreter (TRITON_INTERPRET=1, for tests), and there not in bfloat16
(the interpreter's bf16 `tl.dot` is wrong).
"""
from __future__ import annotations

import torch

from .triton import TritonKernelBackend


class FlowTritonBackend(TritonKernelBackend):
    NAME = "flow-triton"
    DESCRIPTION = "Flowformer flow attention, our fused Triton kernels on packed segments (linear in N), fwd + bwd"
    KERNEL_MODULE = "bpmt_fast.kernels.flow_attention"
    SUPPORTS_CAUSAL = True
    SUPPORTS_CUSTOM_SCALE = False
    IS_EXACT = False

    def _varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal):
        # No scale, and causal only with equal q / kv segments: `check` (SUPPORTS_CUSTOM_SCALE = False) and the
        # public functions' validation refuse anything else before this point, without a sync here.
        return self.kernels().flow_attention_varlen(q, k, v, cu_seqlens_q.to(q.device, torch.int32),
                                                    cu_seqlens_k.to(q.device, torch.int32), causal=causal,
                                                    check_values=False)
