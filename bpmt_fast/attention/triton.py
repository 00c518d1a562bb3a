"""`triton`: our fused Triton softmax attention on packed segments (`bpmt_fast.kernels.varlen_attention`).

Native layout is packed varlen: the base class packs padded inputs, so all parts (self-attention) or all part
pairs (cross-attention) of a batch run in one kernel launch, forward and backward. Exact softmax attention with
fp32 accumulation and a deterministic backward. CUDA; CPU tensors only under the Triton interpreter
(TRITON_INTERPRET=1, for tests), and there not in bfloat16 (the interpreter's bf16 `tl.dot` is wrong).

`TritonKernelBackend` holds what every backend of ours built on a Triton kernel module shares (availability,
devices, dtypes); `flow-triton` builds on it too.

The kernel launches run inside the custom op `bpmt_fast::varlen_attention_fwd` (autograd registered, calling
`bpmt_fast::varlen_attention_bwd`), each with a fake implementation giving output shapes: `torch.compile` traces
the model forward through them in one graph (an autograd.Function around Triton launches would break it).
Eager runs the same launchers as `varlen_attention` with `check_values=False`.

The model's padded calls (`attend` with a layout that has lengths) skip packing altogether: the custom op
`bpmt_fast::padded_attention` hands the kernels views of the fused projections `(S, N, F, H, D)` as they are
(sequence s at rows s*N onwards, its length from `lengths`), the kernels write every padded row of the output
(zeros in the padding), and its backward writes dq / dk / dv straight into one fused gradient of the projections'
shape: no gather of q/k/v, no scatter of the output, no stack of the gradients.
"""
from __future__ import annotations

import importlib
import os
from typing import ClassVar

import torch

from .base import AttentionBackend

_VARLEN_MODULE = "bpmt_fast.kernels.varlen_attention"


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

    def __init__(self):
        super().__init__()
        # Resolved when the backend is made (outside any torch.compile trace: dynamo graph-breaks on
        # importlib.import_module); None when unavailable, where `kernels()` then raises the import error.
        self._kernel_module = self.kernels() if self.is_available() else None

    def _kernels(self):
        """The kernel module, without an import call in the traced code."""
        return self._kernel_module if self._kernel_module is not None else self.kernels()

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
        # What `varlen_attention(..., check_values=False)` does before its autograd.Function, then the custom op:
        # no value checks (the offsets were validated by `attention_varlen` or built from validated lengths by the
        # base class, and re-reading them would cost a host sync per call), identity kv_index.
        kernels = self._kernels()
        cu_seqlens_q, cu_seqlens_k = cu_seqlens_q.to(q.device, torch.int32), cu_seqlens_k.to(q.device, torch.int32)
        kernels._check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, None)
        kv_index = torch.arange(cu_seqlens_q.numel() - 1, dtype=torch.int32, device=q.device)
        max_seqlen_q, max_seqlen_k = int(max_seqlen_q), int(max_seqlen_k)
        pack_rows = kernels._auto_pack_rows(q.shape[-1], v.shape[-1], max_seqlen_q, max_seqlen_k, q.dtype)
        scale = kernels._resolve_scale(scale, q.shape[-1])
        q, k, v = (kernels._last_dim_contiguous(x) for x in (q, k, v))
        out, _ = varlen_attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, kv_index, max_seqlen_q, max_seqlen_k,
                                      scale, pack_rows, True)
        return out

    def _attend_packed(self, q, kv, layout_, scale):
        # Padded sequences: the kernels read them in place (no gather / scatter around them); else the base
        # class's path, which is all views when nothing is padded.
        if not layout_.padded or (q is not None and q.shape[1] != kv.shape[1]):
            return super()._attend_packed(q, kv, layout_, scale)
        kernels = self._kernels()
        kv = kernels._last_dim_contiguous(kv)  # the kernels need unit stride along the head dim only
        q = None if q is None else kernels._last_dim_contiguous(q)
        kernels.check_packed_qkv(*_padded_views(q, kv))
        scale = kernels._resolve_scale(scale, kv.shape[-1])
        lengths = layout_.lengths.to(device=kv.device, dtype=torch.int32)  # (S,)
        out, _ = padded_attention(q, kv, lengths, int(layout_.max_seqlen), scale)
        return out  # (S, N, H, Dv), zeros in the padding


# ---------------------------------------------------------------------------------------------------------------
# custom ops around the launchers of bpmt_fast.kernels.varlen_attention
# ---------------------------------------------------------------------------------------------------------------
def _varlen_kernels():
    # Lazy, as in `TritonKernelBackend.kernels`: importing triton.jit kernels reads TRITON_INTERPRET.
    return importlib.import_module(_VARLEN_MODULE)


@torch.library.custom_op("bpmt_fast::varlen_attention_fwd", mutates_args=())
def varlen_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, kv_index: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
                         scale: float, pack_rows: bool, identity: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward launcher: q `(Tq, H, D)`, k `(Tk, H, D)`, v `(Tk, H, Dv)` (last dims contiguous) -> out
    `(Tq, H, Dv)` in q's dtype and the logsumexp `(H, Tq)` float32 the backward reads. `identity` (kv_index is
    0, 1, ...) lets the kernels skip reading kv_index; the max lengths are host ints sizing the launch grid."""
    return _varlen_kernels().varlen_attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, kv_index, max_seqlen_q,
                                                  max_seqlen_k, scale, pack_rows, identity)


@varlen_attention_fwd.register_fake
def _varlen_attention_fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, kv_index, max_seqlen_q, max_seqlen_k, scale,
                               pack_rows, identity):
    total_q, num_heads = q.shape[0], q.shape[1]
    return (q.new_empty((total_q, num_heads, v.shape[-1])),
            q.new_empty((num_heads, total_q), dtype=torch.float32))


@torch.library.custom_op("bpmt_fast::varlen_attention_bwd", mutates_args=())
def varlen_attention_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         out: torch.Tensor, lse: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                         kv_index: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, scale: float, pack_rows: bool,
                         identity: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward launcher: dq, dk, dv (contiguous, the inputs' dtype) from the forward's out and lse."""
    return _varlen_kernels().varlen_attention_bwd(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, kv_index,
                                                  max_seqlen_q, max_seqlen_k, scale, pack_rows, identity)


@varlen_attention_bwd.register_fake
def _varlen_attention_bwd_fake(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, kv_index, max_seqlen_q,
                               max_seqlen_k, scale, pack_rows, identity):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous, as the launcher


def _varlen_setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens_q, cu_seqlens_k, kv_index, max_seqlen_q, max_seqlen_k, scale, pack_rows, identity = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, kv_index)
    ctx.sizes = (max_seqlen_q, max_seqlen_k, scale, pack_rows, identity)


def _varlen_backward(ctx, grad_out, grad_lse):
    # grad_lse is ignored: lse is an internal of the backward, never differentiated by callers.
    q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, kv_index = ctx.saved_tensors
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()  # as the autograd.Function does
    dq, dk, dv = varlen_attention_bwd(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, kv_index, *ctx.sizes)
    return dq, dk, dv, None, None, None, None, None, None, None, None


varlen_attention_fwd.register_autograd(_varlen_backward, setup_context=_varlen_setup_context)


# ---------------------------------------------------------------------------------------------------------------
# custom op for padded sequences read in place (the model's path when sequences have lengths)
# ---------------------------------------------------------------------------------------------------------------
def _padded_views(q, kv):
    """(S*N, H, D) views of queries, keys and values: q None takes the queries from kv[:, :, 0]."""
    flat = kv.flatten(0, 1)  # (S*N, F, H, D) view
    queries = flat[:, 0] if q is None else q.flatten(0, 1)
    return queries, flat[:, -2], flat[:, -1]


@torch.library.custom_op("bpmt_fast::padded_attention", mutates_args=())
def padded_attention(q: torch.Tensor | None, kv: torch.Tensor, lengths: torch.Tensor, max_seqlen: int,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention of S padded sequences: q `(S, N, H, D)` with kv `(S, N, 2, H, D)`, or q None with kv
    `(S, N, 3, H, D)` (fused projections; last dims contiguous), int32 `lengths (S,)`, `max_seqlen` >= every
    length. -> out `(S, N, H, Dv)` (zeros in the padding) and the logsumexp `(H, S*N)` float32."""
    batch, n = kv.shape[0], kv.shape[1]
    out, lse = _varlen_kernels().padded_attention_fwd(*_padded_views(q, kv), lengths, n, max_seqlen, scale)
    return out.view(batch, n, *out.shape[1:]), lse


@padded_attention.register_fake
def _padded_attention_fake(q, kv, lengths, max_seqlen, scale):
    batch, n, _, heads, _ = kv.shape
    return (kv.new_empty((batch, n, heads, kv.shape[-1])), kv.new_empty((heads, batch * n), dtype=torch.float32))


@torch.library.custom_op("bpmt_fast::padded_attention_bwd", mutates_args=())
def padded_attention_bwd(grad_out: torch.Tensor, q: torch.Tensor | None, kv: torch.Tensor, out: torch.Tensor,
                         lse: torch.Tensor, lengths: torch.Tensor, max_seqlen: int,
                         scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad of q `(S, N, H, D)`, or an empty tensor when q is None; grad of kv, kv's shape, contiguous): the
    kernels write dq / dk / dv into slices of the one fused gradient."""
    kernels = _varlen_kernels()
    n = kv.shape[1]
    grad_kv = kernels._alloc(kv.shape, kv.dtype, kv.device)
    grad_q = kernels._alloc(q.shape, q.dtype, q.device) if q is not None else kv.new_empty(0)
    dq, dk, dv = _padded_views(grad_q if q is not None else None, grad_kv)
    grad_out = grad_out if grad_out.stride(-1) == 1 else grad_out.contiguous()
    kernels.padded_attention_bwd(grad_out.flatten(0, 1), *_padded_views(q, kv), out.flatten(0, 1), lse, lengths, n,
                                 max_seqlen, scale, dq, dk, dv)
    return grad_q, grad_kv


@padded_attention_bwd.register_fake
def _padded_attention_bwd_fake(grad_out, q, kv, out, lse, lengths, max_seqlen, scale):
    return (q.new_empty(q.shape) if q is not None else kv.new_empty(0)), kv.new_empty(kv.shape)


def _padded_setup_context(ctx, inputs, output):
    q, kv, lengths, max_seqlen, scale = inputs
    ctx.has_q = q is not None
    ctx.save_for_backward(*((q,) if q is not None else ()), kv, lengths, *output)
    ctx.sizes = (max_seqlen, scale)


def _padded_backward(ctx, grad_out, grad_lse):
    # grad_lse is ignored: lse is an internal of the backward, never differentiated by callers.
    saved = list(ctx.saved_tensors)
    q = saved.pop(0) if ctx.has_q else None
    kv, lengths, out, lse = saved
    grad_q, grad_kv = padded_attention_bwd(grad_out, q, kv, out, lse, lengths, *ctx.sizes)
    return (grad_q if ctx.has_q else None), grad_kv, None, None, None


padded_attention.register_autograd(_padded_backward, setup_context=_padded_setup_context)
