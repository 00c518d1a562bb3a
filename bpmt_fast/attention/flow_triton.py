"""`flow-triton`: Flowformer flow attention in our fused Triton kernels (`bpmt_fast.kernels.flow_attention`).

The same function as the `flow` reference (phi = sigmoid, conservation flows, no softmax over keys), so not
exact softmax attention and never chosen by `auto`. Native layout is packed varlen: the base class packs padded
inputs, so all parts of a batch run in one launch. Non-causal and causal, forward and backward, fp32 arithmetic.
CUDA; CPU tensors only under the Triton interpreter (TRITON_INTERPRET=1, for tests), and there not in bfloat16
(the interpreter's bf16 `tl.dot` is wrong).

The launches run inside the custom op `bpmt_fast::flow_attention_fwd` (autograd registered, calling
`bpmt_fast::flow_attention_bwd`) with fake implementations, so `torch.compile` traces the model forward through
them in one graph; eager runs the same launchers as `flow_attention_varlen` with `check_values=False`.
"""
from __future__ import annotations

import importlib

import torch

from .triton import TritonKernelBackend

_FLOW_MODULE = "bpmt_fast.kernels.flow_attention"


class FlowTritonBackend(TritonKernelBackend):
    NAME = "flow-triton"
    DESCRIPTION = "Flowformer flow attention, our fused Triton kernels on packed segments (linear in N), fwd + bwd"
    KERNEL_MODULE = _FLOW_MODULE
    SUPPORTS_CAUSAL = True
    SUPPORTS_CUSTOM_SCALE = False
    IS_EXACT = False

    def _varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal):
        # No scale, and causal only with equal q / kv segments: `check` (SUPPORTS_CUSTOM_SCALE = False) and the
        # public functions' validation refuse anything else before this point, without a sync here. What
        # `flow_attention_varlen(..., check_values=False)` checks (shapes only), then the custom op.
        kernels = self._kernels()
        cu_seqlens_q, cu_seqlens_k = cu_seqlens_q.to(q.device, torch.int32), cu_seqlens_k.to(q.device, torch.int32)
        kernels.check_packed_qkv(q, k, v)
        if q.shape[0] < 1 or k.shape[0] < 1 or q.shape[1] < 1:
            raise ValueError(f"need at least one token and one head, got q {tuple(q.shape)}, k {tuple(k.shape)}")
        kernels._check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device)
        kernels._check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device)
        if cu_seqlens_q.numel() != cu_seqlens_k.numel():
            raise ValueError(f"cu_seqlens_q and cu_seqlens_k give different segment counts: "
                             f"{cu_seqlens_q.numel() - 1} and {cu_seqlens_k.numel() - 1}")
        if causal and q.shape[0] != k.shape[0]:
            raise ValueError(f"causal flow attention needs equal q/kv segments, got {q.shape[0]} query and "
                             f"{k.shape[0]} key tokens")
        out, *_ = flow_attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, bool(causal), float(kernels.DEFAULT_EPS),
                                     max(int(max_seqlen_q), int(max_seqlen_k)))  # host ints: steer `use_chunked`
        return out


# ---------------------------------------------------------------------------------------------------------------
# custom ops around the launchers of bpmt_fast.kernels.flow_attention
# ---------------------------------------------------------------------------------------------------------------
def _flow_kernels():
    # Lazy: importing triton.jit kernels reads TRITON_INTERPRET.
    return importlib.import_module(_FLOW_MODULE)


@torch.library.custom_op("bpmt_fast::flow_attention_fwd", mutates_args=())
def flow_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                       cu_seqlens_k: torch.Tensor, causal: bool, eps: float, max_seqlen: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward launcher: out `(Tq, H, Dv)` in q's dtype and the non-causal backward's float32 state (vecs
    `(S, H, 4, D)`, kv `(S, H, D, Dv)`, z `(S, H)`); causal keeps no state, given as three empty tensors (an op
    cannot return None). `max_seqlen` (the longest q or kv segment, a host int) picks single pass or chunks."""
    out, state = _flow_kernels().flow_attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, eps,
                                                    max_seqlen=max_seqlen)
    if state is None:
        empty = q.new_empty((0,), dtype=torch.float32)
        return out, empty, empty.clone(), empty.clone()  # distinct tensors: op outputs may not alias
    return out, *state


@flow_attention_fwd.register_fake
def _flow_attention_fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, eps, max_seqlen):
    total_q, heads, d = q.shape
    dv = v.shape[-1]
    out = q.new_empty((total_q, heads, dv))
    if causal:
        return out, *(q.new_empty((0,), dtype=torch.float32) for _ in range(3))
    segments = cu_seqlens_q.shape[0] - 1
    return (out, q.new_empty((segments, heads, 4, d), dtype=torch.float32),
            q.new_empty((segments, heads, d, dv), dtype=torch.float32),
            q.new_empty((segments, heads), dtype=torch.float32))


@torch.library.custom_op("bpmt_fast::flow_attention_bwd", mutates_args=())
def flow_attention_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, vecs: torch.Tensor, kv: torch.Tensor,
                       z: torch.Tensor, causal: bool, eps: float,
                       max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward launcher: dq, dk, dv (contiguous, the inputs' dtype); the state is ignored when causal."""
    kernels = _flow_kernels()
    state = None if causal else kernels.FlowState(vecs, kv, z)
    return kernels.flow_attention_bwd(grad_out, q, k, v, cu_seqlens_q, cu_seqlens_k, state, causal, eps,
                                      max_seqlen=max_seqlen)


@flow_attention_bwd.register_fake
def _flow_attention_bwd_fake(grad_out, q, k, v, cu_seqlens_q, cu_seqlens_k, vecs, kv, z, causal, eps, max_seqlen):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous, as the launcher


def _flow_setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens_q, cu_seqlens_k, causal, eps, max_seqlen = inputs
    ctx.save_for_backward(q, k, v, cu_seqlens_q, cu_seqlens_k, *output[1:])
    ctx.causal, ctx.eps, ctx.max_seqlen = causal, eps, max_seqlen


def _flow_backward(ctx, grad_out, *grad_state):
    # The state outputs are internals of the backward: their gradients (None or zeros) are ignored.
    q, k, v, cu_seqlens_q, cu_seqlens_k, vecs, kv, z = ctx.saved_tensors
    dq, dk, dv = flow_attention_bwd(grad_out, q, k, v, cu_seqlens_q, cu_seqlens_k, vecs, kv, z, ctx.causal, ctx.eps,
                                    ctx.max_seqlen)
    return dq, dk, dv, None, None, None, None, None


flow_attention_fwd.register_autograd(_flow_backward, setup_context=_flow_setup_context)
