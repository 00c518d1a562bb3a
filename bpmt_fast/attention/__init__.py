"""Attention with one swappable backend.

    attention(q, k, v, backend="auto", q_lengths=None, kv_lengths=None, scale=None)        # (B, N, H, D)
    attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, ...)                             # (total, H, D)

Backend choice, most specific first: the `backend=` argument, env BPMT_ATTN_BACKEND (the CLI's
--attn-backend sets it), then `auto`. A named backend that cannot run the inputs raises a BackendError (a
ValueError) listing the inputs and its reasons; there is never a silent fallback to another backend.
"""
from __future__ import annotations

import torch

from . import layout, validation
from .base import AttentionBackend, AttentionInputs, BackendError
from .registry import (AUTO, AUTO_PRIORITY, BACKENDS, ENV_VAR, AutoBackend, backend_names, check_backend_name,
                       default_backend_name, get_backend, register)

__all__ = ["attention", "attention_varlen", "get_backend", "backend_names", "register", "AttentionBackend",
           "AttentionInputs", "BackendError", "BACKENDS", "AUTO_PRIORITY", "ENV_VAR", "default_backend_name",
           "check_backend_name", "AutoBackend", "layout"]


def _resolve(backend):
    """Backend object for a call. Availability is not checked here: `check(inputs)` reports it together with
    every other reason, in one error that lists the inputs."""
    if isinstance(backend, (AttentionBackend, AutoBackend)):
        return backend
    name = check_backend_name(default_backend_name() if backend is None else backend)
    return AutoBackend() if name == AUTO else BACKENDS[name]()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, backend: str | None = None,
              q_lengths: torch.Tensor | None = None, kv_lengths: torch.Tensor | None = None,
              scale: float | None = None, causal: bool = False) -> torch.Tensor:
    """Softmax (or flow) attention on padded sequences.

    q `(B, Nq, H, D)`, k `(B, Nk, H, D)`, v `(B, Nk, H, Dv)` -> `(B, Nq, H, Dv)`. Tokens at or beyond a
    sequence's length are padding: their content is ignored and their output is zero.
    """
    validation.check_padded(q, k, v, q_lengths, kv_lengths, causal)
    chosen = _resolve(backend)
    inputs = AttentionInputs.describe(q, k, v, masked=q_lengths is not None or kv_lengths is not None,
                                      causal=causal, scale=scale)
    chosen.check(inputs)
    return chosen.padded(q, k, v, q_lengths, kv_lengths, scale, causal)


def attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, *, max_seqlen_q: int | None = None,
                     max_seqlen_k: int | None = None, backend: str | None = None, scale: float | None = None,
                     causal: bool = False) -> torch.Tensor:
    """Attention on packed sequences: segment i of q (tokens cu_seqlens_q[i]:cu_seqlens_q[i+1]) attends to
    segment i of k/v. q `(Tq, H, D)`, k `(Tk, H, D)`, v `(Tk, H, Dv)` -> `(Tq, H, Dv)`.

    Several query segments may use copies of one key segment: that is how all part pairs run in one call.
    """
    validation.check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal)
    if max_seqlen_q is None:
        max_seqlen_q = int(layout.lengths_from_cu_seqlens(cu_seqlens_q).max())
    if max_seqlen_k is None:
        max_seqlen_k = int(layout.lengths_from_cu_seqlens(cu_seqlens_k).max())
    chosen = _resolve(backend)
    chosen.check(AttentionInputs.describe(q, k, v, masked=True, causal=causal, scale=scale))
    return chosen.varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal)
