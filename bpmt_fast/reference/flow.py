"""Naive flow attention (Flowformer, Wu et al. 2022): the reference every flow backend is tested against.

Flowformer reads attention as a flow network: queries are sinks, keys are sources, and the non-negative
feature map phi (here sigmoid, applied inside this function to q and k) gives the flow capacities. Per batch
and head, with `·` a dot product over the head dim D and eps added elementwise before it:

  1. flows:        sink_incoming_i   = 1 / ((phi(q_i)+eps) · (sum_j phi(k_j) + eps))
                   source_outgoing_j = 1 / ((phi(k_j)+eps) · (sum_i phi(q_i) + eps))
  2. conservation: conserved_sink_i   = (phi(q_i)+eps) · (sum_j phi(k_j) source_outgoing_j + eps)
                   conserved_source_j = (phi(k_j)+eps) · (sum_i phi(q_i) sink_incoming_i + eps), clamped to [-1, 1]
  3. competition and allocation:
                   sink_allocation_i    = sigmoid(conserved_sink_i * Nq / Nk)
                   source_competition_j = softmax_j(conserved_source_j) * Nk
  4. output_i = ((phi(q_i) sink_incoming_i) · sum_j phi(k_j)^T (v_j source_competition_j)) * sink_allocation_i

eps keeps the reciprocals in step 1 finite (also for a sequence whose phi sums are tiny); the clamp in step 2,
as in the paper's code, bounds the competition logits, so the causal exp() needs no max-subtraction.

Causal mode (self-attention only: Nq == Nk, same q/kv lengths) replaces every sum by a prefix sum over j <= i
and rescales by the position count n_i = i + 1 (the Flowformer causal variant): sink_incoming and
source_outgoing are multiplied by n_i, the conserved flows divided by n_i, the allocation has no Nq/Nk ratio,
the competition is exp(c_i) / sum_{j<=i} exp(c_j) * n_i, and the query side of step 4 is divided by n_i.

Layout: q `(B, Nq, H, D)`, k `(B, Nk, H, D)`, v `(B, Nk, H, Dv)` -> `(B, Nq, H, Dv)` in q's dtype. Computes in
float32 (float64 for float64 inputs).

Padding: `q_lengths` / `kv_lengths` `(B,)` mark the valid prefix of each sequence. Padded inputs are replaced
with zeros by torch.where before any arithmetic (so NaN/inf there cannot leak), padded tokens drop out of every
sum, softmax and count (Nq, Nk above are each sequence's own lengths), padded queries get an all-zero output,
and padded inputs get zero gradient. A padded sequence therefore gives the same valid outputs as alone.

Complexity: O(N·D·Dv) time and O(D·Dv) state per (batch, head). The non-causal path first builds the D x Dv
matrix sum_j phi(k_j)^T v'_j and then multiplies queries by it; it never forms the Nq x Nk matrix. The causal
step 4 runs chunk-wise: a masked (C x C) product inside a chunk plus one running D x Dv state carried across
chunks, so no per-token D x Dv state is ever materialised: O(N·C·(D + Dv) + N·D·Dv) time for chunk size C.
"""
from __future__ import annotations

import torch

from .softmax import valid_mask


def _check_lengths(name: str, lengths, batch: int, n: int, device: torch.device) -> torch.Tensor | None:
    if lengths is None:
        return None
    if not isinstance(lengths, torch.Tensor):
        raise ValueError(f"{name} must be an integer tensor of shape ({batch},), got {type(lengths).__name__}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype, got {lengths.dtype}")
    if lengths.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(lengths.shape)}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > n:
        raise ValueError(f"{name} must lie in [1, {n}], got values in [{lo}, {hi}]")
    return lengths.to(device=device, dtype=torch.long)


def _check_inputs(q, k, v, eps, chunk_size) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have rank 4 (B, N, H, D), got shape {tuple(t.shape)}")
        if not t.dtype.is_floating_point:
            raise ValueError(f"{name} must have a floating dtype, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    (bq, nq, hq, dq), (bk, nk, hk, dk), (bv, nv, hv, _) = q.shape, k.shape, v.shape
    if not (bq == bk == bv):
        raise ValueError(f"batch size B differs: q {bq}, k {bk}, v {bv}")
    if not (hq == hk == hv):
        raise ValueError(f"head count H differs: q {hq}, k {hk}, v {hv}")
    if dq != dk:
        raise ValueError(f"head dim D differs: q {dq}, k {dk}")
    if nk != nv:
        raise ValueError(f"key/value length Nk differs: k {nk}, v {nv}")
    if nq < 1 or nk < 1:
        raise ValueError(f"sequence lengths must be >= 1, got Nq={nq}, Nk={nk}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _causal_linear_product(a: torch.Tensor, kf: torch.Tensor, vf: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """out_i = a_i · sum_{j<=i} kf_j^T vf_j, chunk-wise. a, kf `(B, N, H, D)`, vf `(B, N, H, Dv)`."""
    batch, n, heads, _ = a.shape
    state = a.new_zeros(batch, heads, a.shape[-1], vf.shape[-1])  # (B, H, D, Dv): sum over earlier chunks
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=a.device).tril()  # (C, C)
    outs = []
    for start in range(0, n, chunk_size):
        chunk = slice(start, start + chunk_size)
        a_c, k_c, v_c = a[:, chunk], kf[:, chunk], vf[:, chunk]  # (B, c, H, D), (B, c, H, D), (B, c, H, Dv)
        c = a_c.shape[1]  # the last chunk may be shorter
        scores = torch.einsum("bihd,bjhd->bhij", a_c, k_c)  # (B, H, c, c)
        scores = scores.masked_fill(~causal[:c, :c], 0.0)  # j <= i within the chunk
        out = torch.einsum("bhij,bjhm->bihm", scores, v_c)  # (B, c, H, Dv)
        out = out + torch.einsum("bihd,bhdm->bihm", a_c, state)  # all earlier chunks
        state = state + torch.einsum("bjhd,bjhm->bhdm", k_c, v_c)
        outs.append(out)
    return torch.cat(outs, dim=1)  # (B, N, H, Dv)


def _flow(phi_q, phi_k, v, q_valid, kv_valid, eps):
    """Non-causal steps 1-4. phi_q `(B, Nq, H, D)`, phi_k `(B, Nk, H, D)` (zero at padding), v `(B, Nk, H, Dv)`."""
    n_q = q_valid.sum(1, keepdim=True).to(phi_q.dtype)  # (B, 1, 1): each sequence's own Nq
    n_k = kv_valid.sum(1, keepdim=True).to(phi_q.dtype)  # (B, 1, 1): each sequence's own Nk
    # 1. incoming flow of each sink, outgoing flow of each source
    sink_incoming = 1.0 / torch.einsum("bihd,bhd->bih", phi_q + eps, phi_k.sum(1) + eps)  # (B, Nq, H)
    source_outgoing = 1.0 / torch.einsum("bjhd,bhd->bjh", phi_k + eps, phi_q.sum(1) + eps)  # (B, Nk, H)
    # padded tokens would still get a (huge, finite) flow through eps: they have none
    sink_incoming = torch.where(q_valid, sink_incoming, 0.0)
    source_outgoing = torch.where(kv_valid, source_outgoing, 0.0)
    # 2. conservation: the flow each sink receives when every source sends out exactly 1, and vice versa
    conserved_sink = torch.einsum("bihd,bhd->bih", phi_q + eps, (phi_k * source_outgoing[..., None]).sum(1) + eps)
    conserved_source = torch.einsum("bjhd,bhd->bjh", phi_k + eps, (phi_q * sink_incoming[..., None]).sum(1) + eps)
    conserved_source = conserved_source.clamp(-1.0, 1.0)  # for stability, as in the paper
    # 3. sinks are allocated flow by a gate, sources compete for it through a softmax over valid keys
    sink_allocation = torch.sigmoid(conserved_sink * (n_q / n_k))  # (B, Nq, H)
    conserved_source = conserved_source.masked_fill(~kv_valid, float("-inf"))  # padded keys do not compete
    source_competition = torch.softmax(conserved_source, dim=1) * n_k  # (B, Nk, H)
    # 4. linear order: the D x Dv matrix first, then the queries; never the Nq x Nk matrix
    kv = torch.einsum("bjhd,bjhm->bhdm", phi_k, v * source_competition[..., None])  # (B, H, D, Dv)
    out = torch.einsum("bihd,bhdm->bihm", phi_q * sink_incoming[..., None], kv)  # (B, Nq, H, Dv)
    return out * sink_allocation[..., None]


def _causal_flow(phi_q, phi_k, v, eps, chunk_size):
    """Causal steps 1-4: prefix sums, rescaled by n_i = i + 1. phi_q, phi_k `(B, N, H, D)`, v `(B, N, H, Dv)`.

    A padded tail needs no masking here: position i only reads positions j <= i, so the (zeroed) tail cannot
    reach a valid position, and the caller zeroes the tail's output.
    """
    n = phi_q.shape[1]
    normal = torch.arange(1, n + 1, dtype=phi_q.dtype, device=phi_q.device)[None, :, None]  # (1, N, 1): n_i
    # 1. flows against the prefix, times n_i so they stay on the scale of the non-causal flows
    sink_incoming = normal / ((phi_q + eps) * (phi_k.cumsum(1) + eps)).sum(-1)  # (B, N, H)
    source_outgoing = normal / ((phi_k + eps) * (phi_q.cumsum(1) + eps)).sum(-1)  # (B, N, H)
    # 2. conservation over the prefix, divided by n_i
    conserved_sink = ((phi_q + eps) * ((phi_k * source_outgoing[..., None]).cumsum(1) + eps)).sum(-1) / normal
    conserved_source = ((phi_k + eps) * ((phi_q * sink_incoming[..., None]).cumsum(1) + eps)).sum(-1) / normal
    conserved_source = conserved_source.clamp(-1.0, 1.0)  # for stability; also keeps exp() below safe
    # 3. allocation gate; competition is a softmax over the prefix, times n_i
    sink_allocation = torch.sigmoid(conserved_sink)  # (B, N, H)
    exp_source = torch.exp(conserved_source)  # (B, N, H)
    source_competition = exp_source / exp_source.cumsum(1) * normal  # (B, N, H)
    # 4. causal linear product, chunk-wise
    out = _causal_linear_product(
        phi_q * (sink_incoming / normal)[..., None], phi_k, v * source_competition[..., None], chunk_size
    )  # (B, N, H, Dv)
    return out * sink_allocation[..., None]


def flow_attention_reference(q, k, v, *, q_lengths=None, kv_lengths=None, causal=False, eps=1e-6, chunk_size=64):
    """Flowformer flow attention with phi = sigmoid. Returns `(B, Nq, H, Dv)` in q's dtype.

    q `(B, Nq, H, D)`, k `(B, Nk, H, D)`, v `(B, Nk, H, Dv)`; q_lengths / kv_lengths optional integer `(B,)`
    valid lengths in [1, N]. causal=True needs Nq == Nk and equal lengths (None means full length).
    chunk_size only sets how the causal step 4 is blocked; it changes the result by rounding at most.
    """
    _check_inputs(q, k, v, eps, chunk_size)
    batch, n_q, _, _ = q.shape
    n_k = k.shape[1]
    q_lengths = _check_lengths("q_lengths", q_lengths, batch, n_q, q.device)
    kv_lengths = _check_lengths("kv_lengths", kv_lengths, batch, n_k, q.device)
    if causal:
        if n_q != n_k:
            raise ValueError(f"causal flow attention is self-attention: needs Nq == Nk, got Nq={n_q}, Nk={n_k}")
        full = torch.full((batch,), n_q, dtype=torch.long, device=q.device)
        q_len = full if q_lengths is None else q_lengths
        kv_len = full if kv_lengths is None else kv_lengths
        if not torch.equal(q_len, kv_len):
            raise ValueError(f"causal flow attention needs equal q_lengths and kv_lengths, "
                             f"got {q_len.tolist()} and {kv_len.tolist()}")

    out_dtype = q.dtype
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    q_valid = valid_mask(q_lengths, batch, n_q, q.device)[:, :, None]  # (B, Nq, 1)
    kv_valid = valid_mask(kv_lengths, batch, n_k, q.device)[:, :, None]  # (B, Nk, 1)
    # where(), not multiplication: NaN/inf in padding must not leak. phi is zeroed again after the sigmoid
    # because sigmoid(0) = 0.5 would otherwise let padded tokens carry flow.
    q = torch.where(q_valid[..., None], q.to(work), 0.0)  # (B, Nq, H, D)
    k = torch.where(kv_valid[..., None], k.to(work), 0.0)  # (B, Nk, H, D)
    v = torch.where(kv_valid[..., None], v.to(work), 0.0)  # (B, Nk, H, Dv)
    phi_q = torch.where(q_valid[..., None], torch.sigmoid(q), 0.0)  # (B, Nq, H, D)
    phi_k = torch.where(kv_valid[..., None], torch.sigmoid(k), 0.0)  # (B, Nk, H, D)

    if causal:
        out = _causal_flow(phi_q, phi_k, v, eps, chunk_size)
    else:
        out = _flow(phi_q, phi_k, v, q_valid, kv_valid, eps)
    out = torch.where(q_valid[..., None], out, 0.0)  # (B, Nq, H, Dv); padded queries: exactly zero
    return out.to(out_dtype)
