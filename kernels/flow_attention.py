"""Fused Flowformer flow attention (phi = sigmoid) on packed variable-length segments, forward and backward.

Algorithm, per (segment, head), with `·` a dot over the head dim D, eps added elementwise, phi = sigmoid and
r = Nq / Nk (steps numbered as in the paper; the definition is `bpmt_fast.reference.flow`):
    1. flows:        incoming_i = 1 / ((phi(q_i)+eps) · (sum_j phi(k_j) + eps))
                     outgoing_j = 1 / ((phi(k_j)+eps) · (sum_i phi(q_i) + eps))
    2. conservation: sink_i   = (phi(q_i)+eps) · (w_k + eps),   w_k = sum_j phi(k_j) outgoing_j
                     source_j = (phi(k_j)+eps) · (w_q + eps),   w_q = sum_i phi(q_i) incoming_i, clamped to [-1, 1]
    3. competition and allocation: allocation_i = sigmoid(sink_i * r), competition_j = softmax_j(source_j) * Nk
    4. out_i = gate_i phi(q_i) S,   gate_i = allocation_i incoming_i,   S = sum_j phi(k_j)^T (v_j competition_j)
Steps 1-3 are per-token scalars from D-vectors; only step 4 has a D x Dv state. Every kernel that holds (a part
of) a D x Dv state runs one program per (segment or chunk, head, Dv block): its columns dv0 .. dv0 + BLOCK_DV of
S (and of dS or R), BLOCK_DV <= 32, so no program holds a 128 x 128 fp32 state. Quantities that sum over Dv are
written per block into float32 workspaces and summed, in block order (deterministic, no atomics), by a dot-free
"chain" kernel that runs the scalar chain of the backward.

Two non-causal paths compute the same function from the same per-range passes (`_phi_sum`, `_w_sum`,
`_key_state`, `_write_out`, `_bwd_queries`, `_bwd_keys`, `_chain_*`: loops over rows lo .. hi of a segment):
single pass (one program per segment loops over all of it: many short segments) and chunked (one program per
chunk of a segment: a few long ones, else a 16384-token segment keeps 2 x H x NDV programs busy for its whole
length). `use_chunked` picks one from host ints, never a sync: chunked when the longest segment is longer than
`chunked_min_len` tokens (GPU 1024, interpreter 256), the longest being `max_seqlen` where the caller has it
(`flow_attention_varlen` with check_values reads the offsets anyway; the `flow-triton` backend passes its host
max lengths) and otherwise the mean length cdiv(max(total_q, total_k), S), a lower bound (a caller without it
keeps the single pass when a few long segments hide among many short ones; gait shapes, segments of tens to
hundreds of tokens, always keep it). `chunked=True / False` forces a path. The causal path has no chunked variant.

Non-causal forward, single pass (`flow_attention_fwd_kernel`, grid (S, H, Dv blocks)), looping over token blocks
of BLOCK_N:
    pass 1 sums phi over queries and keys; pass 2 (queries) gives incoming_i and w_q; pass 3 (keys) gives
    outgoing_j, w_k, source_j and, in the same loop, e_j = exp(source_j), Z = sum_j e_j and this block's columns
    of sum_j phi(k_j)^T v_j e_j (the clamp bounds source_j, so the softmax needs no running max); pass 4 (queries)
    writes this block's output columns. Every block recomputes the cheap passes 1-3 (D-vectors and scalars).
    Saved for the backward: the four D-vectors (sum phi(q), sum phi(k), w_q, w_k), S and Z per (segment, head).
Non-causal forward, chunked: segment s splits into cdiv(max(Nq_s, Nk_s), CHUNK) chunks of chunk_tokens tokens
    (chunk c: queries and keys c CHUNK .. (c + 1) CHUNK, either side possibly empty); the work items, (segment,
    chunk) pairs numbered segment by segment, come from a prefix sum over the chunk counts and a searchsorted on
    the device (`_chunk_items`: item -> segment `(items,)`, segment -> first item `(S + 1,)`). Grids take the host
    bound items = total_q // CHUNK + S (one offsets tensor for q and kv) or (total_q + total_k) // CHUNK + S;
    programs past the real items return at once. Each sum over a segment is split into per-item float32 partials,
    then summed per (segment, head) over its chunks in chunk order (deterministic, no atomics):
      `flow_attention_chunk_vecs_kernel` (items, H), PHASE 0: sums of phi(q), phi(k) -> reduce;
      the same, PHASE 1: parts of w_q, w_k -> reduce (`flow_attention_chunk_reduce_kernel`, (S, H): D-vector
          slots of `(items, H, 4, D)` into the saved `(S, H, 4, D)`);
      `flow_attention_chunk_fwd_kernel` (items, H, Dv blocks), PART 0 (keys): parts of z and of this block's
          unnormalised state `(items, H, D, Dv)`, `(items, H)` -> `flow_attention_chunk_state_reduce_kernel`
          ((S, H, Dv blocks): S = sum * Nk / z and Z, the same FlowState as the single pass);
      the same, PART 1 (queries): this block's output columns.
Non-causal backward, reverse order of the steps (per-token scalars recomputed, each one D-dot from the saved
    vectors, never stored):
    4. dS = sum_i (gate_i phi(q_i))^T dO_i; dg_i = dO_i · (phi(q_i) S)
    3. d sink_i = dg_i incoming_i a_i (1 - a_i) r with a_i = allocation_i; d comp_j = v_j · (phi(k_j) dS) and,
       as sum_j comp_j d comp_j = <dS, S>, d source_j = comp_j (d comp_j - <dS, S> / Nk), zero where clamped
    2. d w_k = sum_i d sink_i (phi(q_i)+eps), d w_q = sum_j d source_j (phi(k_j)+eps)
    1. d incoming_i = dg_i a_i + d w_q · phi(q_i), d den_i = -d incoming_i incoming_i^2, and likewise for keys;
       the sums of phi get d sum phi(k) = sum_i d den_i (phi(q_i)+eps) (and the key-side mirror)
    dq = d phi(q) phi(q) (1 - phi(q)), the same for k. Two kernels:
      a. `flow_attention_bwd_state_kernel`, grid (S, H, Dv blocks): queries (this block's dS; partials of dg_i
         and of d phi(q_i)'s S-part gate_i dO_i S^T), then keys (dv, final; partials of d comp_j and of
         d phi(k_j)'s dS-part (v_j comp_j) dS^T), and the block's part of <dS, S>;
      b. `flow_attention_bwd_chain_kernel`, grid (S, H): the four passes of steps 3-1 over the summed partials
         (queries: d w_k; keys: d w_q, d sum phi(q); queries: dq, d sum phi(k); keys: dk).
    Chunked (the forward's work items; either backward reads either forward's FlowState):
      `flow_attention_chunk_bwd_state_kernel` (items, H, Dv blocks), PART 0 (queries): part a's query loop, its
          dS part to `(items, H, D, Dv)` -> `flow_attention_chunk_state_reduce_kernel` (BACKWARD: dS `(S, H, D,
          Dv)` and the blocks' parts of <dS, S>); PART 1 (keys): part a's key loop with that dS;
      `flow_attention_chunk_bwd_chain_kernel` (items, H), PASS 1-4: part b's four passes, one launch each, the
          D-vectors each pass sums (d w_k; d w_q and d sum phi(q); d sum phi(k)) reduced in between
          (`flow_attention_chunk_reduce_kernel` into `(S, H, 4, D)`).

Causal (self-attention, equal q/kv segments): every sum runs over j <= i and n_i = i + 1 rescales the flows
    (incoming and outgoing times n_i, conservation divided by n_i, no r, competition e_i / sum_{j<=i} e_j * n_i,
    gate divided by n_i). Scans over chunks of CHUNK tokens turn running D-vectors (sum phi(q), sum phi(k), w_q,
    w_k) and the running exp-sum into per-token prefixes with tl.cumsum.
    Forward, two kernels: `flow_attention_causal_flows_kernel` (grid (S, H)) scans steps 1-3 and writes every
    token's gate_i and competition_i (float32 `(total, H, 2)`); `flow_attention_causal_fwd_kernel` (grid (S, H,
    Dv blocks)) does step 4: a masked (CHUNK x CHUNK) product inside the chunk plus this block's columns of the
    running state.
    Backward, four kernels:
      0. the flows kernel again, also writing the running sums at every chain chunk's start (`(chunk rows, H,
         4, D)`, `(chunk rows, H)`);
      a. `flow_attention_causal_bwd_scan_kernel` (S, H, Dv blocks): the step-4 scan again; partials of dg_i and
         of d phi(q_i)'s S-part gate_i dO_i S_i^T;
      b. `flow_attention_causal_bwd_state_kernel` (S, H, Dv blocks): chunks last to first carrying this block's
         columns of R = sum_{i later} gate_i phi(q_i)^T dO_i; dv (final) and partials of d comp_j = v_j · d x_j
         and of d phi(k_j)'s step-4 part (masked (CHUNK x CHUNK) products inside the chunk);
      c. `flow_attention_causal_bwd_chain_kernel` (S, H): chunks last to first, rebuilding each chunk's prefixes
         from the chunk-start sums and carrying suffix sums instead (d w_q, d w_k, d sum phi(q), d sum phi(k):
         D-vectors; d(prefix exp-sum): a scalar; tl.cumsum(reverse=True) inside the chunk); dq, dk.

Layouts
    q `(total_q, H, D)`, k `(total_k, H, D)`, v `(total_k, H, Dv)` -> out `(total_q, H, Dv)` in q's dtype: segments
    back to back, last dim contiguous (token and head strides are free). `cu_seqlens_q` / `cu_seqlens_k`: int32
    `(S + 1,)` offsets; query segment i pairs with key/value segment i. Backward workspaces (float32), with NDV =
    ceil(Dv / BLOCK_DV) Dv blocks: dg and d comp partials `(total, H, NDV)`, d phi(q) and d phi(k) partials
    `(total, H, NDV, D)`; non-causal <dS, S> partials `(S, H, NDV)`; causal gate/competition `(total, H, 2)`.
    Chunked path, per work item (float32): D-vector partials `(items, H, 4, D)`, state or dS partials `(items, H,
    D, Dv)`, z partials `(items, H)`; per segment: dS `(S, H, D, Dv)`, gradient D-vectors `(S, H, 4, D)`. At
    B2 N16384 H8 D64 (self-attention: items = 32768 // 1024 + 2 = 34) the state partials are 4.5 MB, 13% of
    q, k, v, out in fp16.

Tiles (`_config`; one fixed config per head-dim class, nothing autotuned; D is the padded head dim)
    kernels with a D x Dv state: num_warps 8; BLOCK_DV = min(Dv, 32) (D64: 2 blocks, D128: 4); non-causal
      BLOCK_N 32 (16 at D or Dv 128); causal CHUNK 16;
    dot-free kernels (causal flows, chains): non-causal BLOCK_N 32 (D <= 32) / 16, causal CHUNK 16 (D <= 32) /
      8; 4 warps (8 at D128);
    chunked non-causal path: chunks of chunk_tokens = 1024 (at N16384 H8 D64: 16 chunks x 2 Dv blocks x H per
      segment, 256 programs per segment where the single pass has 16), chosen past chunked_min_len = 1024 tokens
      (two chunks at least); its kernels take the tiles above (with a state: BLOCK_N, BLOCK_DV, 8 warps; vecs
      and chain: the chain tiles; reduces: the chain warps, a (4, D) tile or the state block). The interpreter:
      chunks of 64 tokens, chunked past 256 (the tests force chunked at small sizes);
    launch option maxnreg = the most registers per thread the block allows (255 up to 8 warps): without it ptxas
      capped some kernels at 128 registers and spilled; num_stages 1 (the loops run once or a few times).
Precision (`_dot_precision`): every dot multiplies fp32 values into an fp32 accumulator; all other arithmetic is
    fp32. fp32 inputs: IEEE dots (FMA, no tensor cores), so fp32 results match an fp32 reference; Triton's FMA
    dot holds each thread's whole K extent of both operands in registers, so `_mm` runs dots over K as chunks of
    16 (triton 3.6's smallest fp32 K; triton 3.9 allows 8). fp16 / bf16 inputs: TF32 tensor cores (mma on sm80,
    wgmma or mma on sm90); `_tf32` rounds the operands to nearest first (the hardware truncates the fp32 bits
    Triton hands it, which doubled the fp16 error). TF32 keeps 10 mantissa bits (fp16's count, more than bf16's
    7) and fp32's range (S, R and the gradients are unbounded sums: fp16 operands could overflow or go
    subnormal). The interpreter ignores "tf32" but multiplies the same rounded operands, so the CPU fp16 tests
    see TF32's operand rounding. Measured under the interpreter (float64 reference, inputs as
    `specializations.case_inputs`, segments up to 60 and 400 tokens, D 16-128): max error / allowed
    (bpmt_fast.testing) <= 0.25 for fp16 and <= 0.28 for bf16 (the bf16 figure is the output's own rounding: IEEE
    dots give the same); truncated operands reached 0.55 in fp16. Not yet measured on a GPU.
Resources, compiled for sm80 and sm90 with triton 3.9 and 3.6 (`python -m bpmt_fast.bench.compile_report
    --kernels flow`), every flow kernel at D 16/32/64/128 in fp16, bf16 and fp32: 0 bytes of spill; at most
    (registers per thread / shared memory per block, over head dims, dtypes, archs and both tritons): fwd 174 /
    24,576 B, bwd_state 238 / 43,008 B, bwd_chain 165 / 4,096 B, causal_flows 119 / 4,096 B, causal_fwd 226 /
    26,624 B, causal_bwd_scan 251 / 34,816 B, causal_bwd_state 248 / 34,816 B, causal_bwd_chain 192 / 4,096 B
    (the fp32 D128 scan and state kernels are the closest to the 255-register limit). The chunked path's kernels
    are not in that report yet (`specializations.all_cases` has no chunked flow case).
    No GPU timings here: tile and warp choices were made for spill-free compiles, not measured speed.

Limits
    fp32 / fp16 / bf16 inputs; D, Dv in 1..128 (tiles padded to a power of two >= 16 and masked); segments of
    length >= 1; causal needs equal q/kv segments. Memory per (segment, head): O(D x Dv) state plus float32
    workspaces O(N (NDV D + NDV + 2)) in the backward (NDV <= 4); no per-token D x D (or D x Dv) state; the
    chunked path adds O(D x Dv) per chunk (Layouts). One program per (segment, head, Dv block) suits many short
    segments (parts x batch x heads); a few very long segments take the chunked path, whose extra launches (7
    forward, 10 backward, plus the item table's few torch ops) cost more than they give on short segments.
    Without max_seqlen the choice sees only the mean length (above). CPU only under the Triton interpreter.

Differences from the reference (`bpmt_fast.reference.flow`)
    Blocked summation order (rounding only), TF32 dot operands in fp16 / bf16 (above); the non-causal softmax uses
    exp(source_j) without max-subtraction, exact here because the clamp keeps source_j in [-1, 1]; the backward
    is hand-derived (above), not autograd, and recomputes per-token scalars instead of saving them. Inputs must
    be packed (no padding to ignore).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .common import INTERPRET, check_packed_qkv
from .common import head_block as _head_block, last_dim_contiguous as _last_dim_contiguous

DEFAULT_EPS = 1e-6  # the reference's default


def _alloc(shape, dtype, device) -> torch.Tensor:
    """Every buffer a kernel writes is allocated here, so tests can poison them (NaN-fill) in one place."""
    return torch.empty(shape, dtype=dtype, device=device)


def _dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` input precision per input dtype (every dot multiplies fp32 values into an fp32 accumulator):
    fp32 inputs keep IEEE products ("ieee": FMA, no tensor cores), so fp32 results match an fp32 reference;
    fp16 / bf16 inputs take TF32 tensor cores ("tf32": `_mm` rounds the operands to nearest TF32, 10 mantissa
    bits as in fp16 and more than bf16's 7, with fp32's range, so the unbounded states and gradients need no
    scaling). The interpreter ignores "tf32" but multiplies the same rounded operands, so the CPU tests see TF32's
    operand rounding."""
    return "ieee" if dtype == torch.float32 else "tf32"


# ---------------------------------------------------------------------------------------------------------------
# helpers (inlined into the kernels)
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _load_rows(ptr, row0, n_rows, stride_t, n_cols, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """Rows row0 .. row0 + BLOCK_N, columns 0 .. BLOCK_C of a `(tokens, C)` view (ptr already at the head and first
    column), fp32, zero outside n_rows x n_cols."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_C)
    mask = (offs_n[:, None] < n_rows) & (offs_c[None, :] < n_cols)
    rows = (row0 + offs_n).to(tl.int64)  # int64: token * stride can pass 2^31 on big batches
    x = tl.load(ptr + rows[:, None] * stride_t + offs_c[None, :], mask=mask, other=0.0)
    return x.to(tl.float32)


@triton.jit
def _store_rows(ptr, row0, n_rows, stride_t, n_cols, x, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_C)
    mask = (offs_n[:, None] < n_rows) & (offs_c[None, :] < n_cols)
    rows = (row0 + offs_n).to(tl.int64)
    tl.store(ptr + rows[:, None] * stride_t + offs_c[None, :], x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_tok(ptr, row0, n_rows, stride_t, BLOCK_N: tl.constexpr):
    """One float32 per token `(BLOCK_N,)`, zero outside."""
    offs_n = tl.arange(0, BLOCK_N)
    rows = (row0 + offs_n).to(tl.int64)
    return tl.load(ptr + rows * stride_t, mask=offs_n < n_rows, other=0.0)


@triton.jit
def _store_tok(ptr, row0, n_rows, stride_t, x, BLOCK_N: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    rows = (row0 + offs_n).to(tl.int64)
    tl.store(ptr + rows * stride_t, x, mask=offs_n < n_rows)


@triton.jit
def _sum_parts_rows(ptr, row0, n_rows, stride_t, C, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                    NDV: tl.constexpr):
    """Sum over the NDV per-Dv-block partials of a `(tokens, NDV, C)` float32 workspace view (ptr at the head),
    in block order (deterministic)."""
    acc = _load_rows(ptr, row0, n_rows, stride_t, C, BLOCK_N, BLOCK_C)
    for b in tl.static_range(1, NDV):
        acc += _load_rows(ptr + b * C, row0, n_rows, stride_t, C, BLOCK_N, BLOCK_C)
    return acc


@triton.jit
def _sum_parts_tok(ptr, row0, n_rows, stride_t, BLOCK_N: tl.constexpr, NDV: tl.constexpr):
    """Sum over the NDV partials of a `(tokens, NDV)` float32 workspace view (ptr at the head)."""
    acc = _load_tok(ptr, row0, n_rows, stride_t, BLOCK_N)
    for b in tl.static_range(1, NDV):
        acc += _load_tok(ptr + b, row0, n_rows, stride_t, BLOCK_N)
    return acc


@triton.jit
def _load_phi(ptr, row0, n_rows, stride_t, eps, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr):
    """phi = sigmoid(x) and phi + eps `(BLOCK_N, BLOCK_D)`, both exactly zero outside the tile (sigmoid(0) = 1/2
    and eps must not leak from masked rows or padded dims into any sum)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_n[:, None] < n_rows) & (offs_d[None, :] < D)
    phi = tl.where(ok, tl.sigmoid(_load_rows(ptr, row0, n_rows, stride_t, D, BLOCK_N, BLOCK_D)), 0.0)
    return phi, tl.where(ok, phi + eps, 0.0)


@triton.jit
def _load_vec(ptr, BLOCK: tl.constexpr, N: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    return tl.load(ptr + offs, mask=offs < N, other=0.0)


@triton.jit
def _store_vec(ptr, x, BLOCK: tl.constexpr, N: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(ptr + offs, x, mask=offs < N)


@triton.jit
def _rowdot(x, vec):
    """x `(BLOCK_N, C)` · vec `(C,)` -> `(BLOCK_N,)`."""
    return tl.sum(x * vec[None, :], 1)


@triton.jit
def _flow(num, den, row_ok):
    """num / den on valid rows, 0 on masked ones (their den is 0: keep inf out of even the unused branch)."""
    return tl.where(row_ok, num / tl.where(row_ok, den, 1.0), 0.0)


@triton.jit
def _fp32_zero(BLOCK: tl.constexpr):
    """A float32 scalar 0 that is a tensor from the start (loop-carried values must keep their type)."""
    return tl.sum(tl.zeros([BLOCK], tl.float32), 0)


@triton.jit
def _halves(a, b):
    """a `(M, K)` and b `(K, N)` split at K / 2: (a[:, :K/2], a[:, K/2:], b[:K/2], b[K/2:]) (register shuffles)."""
    M: tl.constexpr = a.shape[0]
    K: tl.constexpr = a.shape[1]
    N: tl.constexpr = b.shape[1]
    a0, a1 = tl.split(tl.permute(tl.reshape(a, (M, 2, K // 2)), (0, 2, 1)))
    b0, b1 = tl.split(tl.permute(tl.reshape(b, (2, K // 2, N)), (1, 2, 0)))
    return a0, a1, b0, b1


@triton.jit
def _mm2(a, b, acc, PRECISION: tl.constexpr):
    a0, a1, b0, b1 = _halves(a, b)
    acc = tl.dot(a0, b0, acc, input_precision=PRECISION)
    return tl.dot(a1, b1, acc, input_precision=PRECISION)


@triton.jit
def _mm4(a, b, acc, PRECISION: tl.constexpr):
    a0, a1, b0, b1 = _halves(a, b)
    return _mm2(a1, b1, _mm2(a0, b0, acc, PRECISION), PRECISION)


@triton.jit
def _mm8(a, b, acc, PRECISION: tl.constexpr):
    a0, a1, b0, b1 = _halves(a, b)
    return _mm4(a1, b1, _mm4(a0, b0, acc, PRECISION), PRECISION)


@triton.jit
def _mm_chunks(a, b, acc, PRECISION: tl.constexpr, K_CHUNK: tl.constexpr):
    """acc + a @ b (acc may be None) as tl.dot's over K chunks of at most K_CHUNK (K up to 8 K_CHUNK), in order."""
    K: tl.constexpr = a.shape[1]
    tl.static_assert(K <= 8 * K_CHUNK)
    if K <= K_CHUNK:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    elif K <= 2 * K_CHUNK:
        acc = _mm2(a, b, acc, PRECISION)
    elif K <= 4 * K_CHUNK:
        acc = _mm4(a, b, acc, PRECISION)
    else:
        acc = _mm8(a, b, acc, PRECISION)
    return acc


@triton.jit
def _tf32(x):
    """x rounded to the nearest TF32 value (10 mantissa bits; ties away from zero), still an fp32 tensor.

    Triton hands fp32 registers to mma / wgmma .tf32 without a cvt.rna, and the tensor cores ignore the 13 low
    mantissa bits: truncation, a bias that doubled the fp16 errors (see the module docstring). Rounded first,
    the operands are exact TF32 values. Two integer ops per element."""
    return ((x.to(tl.int32, bitcast=True) + 4096) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def _mm(a, b, acc, PRECISION: tl.constexpr, K_CHUNK: tl.constexpr):
    """acc + a @ b (acc may be None; fp32 operands and accumulator) at `_dot_precision`, in K chunks of K_CHUNK.

    Triton's FMA dot (IEEE fp32) holds every thread's whole rows of a and columns of b in registers: chunks of K
    bound that. Tensor-core dots take K_CHUNK >= K (one dot). "tf32" rounds the operands first (`_tf32`); the
    interpreter ignores "tf32" and multiplies those rounded operands exactly, as the tensor cores do."""
    if PRECISION == "tf32":
        acc = _mm_chunks(_tf32(a), _tf32(b), acc, PRECISION, K_CHUNK)
    else:
        acc = _mm_chunks(a, b, acc, PRECISION, K_CHUNK)
    return acc


@triton.jit
def _causal_flows(phi_q, phi_q_eps, phi_k, phi_k_eps, n, row_ok, sum_q, sum_k, w_q, w_k, e_sum, eps_d):
    """Causal steps 1-3 for one chunk, given the running sums of all earlier chunks.

    phi tiles `(C, BLOCK_D)`, n `(C,)` = position + 1; sum_q, sum_k, w_q, w_k `(BLOCK_D,)`, e_sum a scalar.
    Returns the per-token prefixes (inclusive) and scalars; masked rows get zero scalars.
    """
    pre_k = sum_k[None, :] + tl.cumsum(phi_k, 0)  # (C, BLOCK_D): sum_{j<=i} phi(k_j)
    pre_q = sum_q[None, :] + tl.cumsum(phi_q, 0)
    # 1. flows against the prefix, times n_i
    incoming = _flow(n, tl.sum(phi_q_eps * (pre_k + eps_d[None, :]), 1), row_ok)  # (C,)
    outgoing = _flow(n, tl.sum(phi_k_eps * (pre_q + eps_d[None, :]), 1), row_ok)
    # 2. conservation over the prefix, divided by n_i
    pre_wq = w_q[None, :] + tl.cumsum(phi_q * incoming[:, None], 0)  # (C, BLOCK_D)
    pre_wk = w_k[None, :] + tl.cumsum(phi_k * outgoing[:, None], 0)
    sink = tl.sum(phi_q_eps * (pre_wk + eps_d[None, :]), 1) / n
    source = tl.sum(phi_k_eps * (pre_wq + eps_d[None, :]), 1) / n  # before the clamp (its gradient needs it)
    # 3. allocation gate; competition = exp / prefix exp-sum * n_i (the clamp keeps exp() in [1/e, e])
    allocation = tl.sigmoid(sink)
    e = tl.where(row_ok, tl.exp(tl.minimum(tl.maximum(source, -1.0), 1.0)), 0.0)
    pre_e = e_sum + tl.cumsum(e, 0)  # > 0: row 0 of a segment is always valid
    competition = tl.where(row_ok, e / pre_e * n, 0.0)
    return pre_q, pre_k, pre_wq, pre_wk, incoming, outgoing, source, allocation, e, pre_e, competition


# ---------------------------------------------------------------------------------------------------------------
# non-causal: the passes over a token range (rows lo .. hi of a segment), shared by the single-pass kernels
# (lo .. hi = the whole segment) and the chunked kernels (one chunk)
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _phi_sum(X, x0, lo, hi, stride_t, eps, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr):
    """sum_i phi(x_i) over rows lo .. hi of the segment that starts at token x0 `(BLOCK_D,)`."""
    acc = tl.zeros([BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        phi, _ = _load_phi(X, x0 + start, hi - start, stride_t, eps, BLOCK_N, BLOCK_D, D)
        acc += tl.sum(phi, 0)
    return acc


@triton.jit
def _w_sum(X, x0, lo, hi, stride_t, other_sum, eps_d, eps, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
           D: tl.constexpr):
    """Steps 1-2 on rows lo .. hi: sum_i phi(x_i) flow_i, flow_i = 1 / ((phi(x_i)+eps) · (other_sum + eps)).
    x = q, other = sum phi(k): w_q (incoming flows); x = k, other = sum phi(q): w_k (outgoing) `(BLOCK_D,)`."""
    offs_n = tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        phi, phi_eps = _load_phi(X, x0 + start, hi - start, stride_t, eps, BLOCK_N, BLOCK_D, D)
        flow = _flow(1.0, _rowdot(phi_eps, other_sum + eps_d), start + offs_n < hi)  # (BLOCK_N,)
        acc += tl.sum(phi * flow[:, None], 0)
    return acc


@triton.jit
def _key_state(K, V, k0, lo, hi, stride_kt, stride_vt, n_dv, sum_q, w_q, eps_d, eps, WITH_WK: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, D: tl.constexpr,
               DOT_PRECISION: tl.constexpr, DOT_K: tl.constexpr):
    """Steps 1-3 on keys lo .. hi: (w_k's part if WITH_WK, else zeros), z's part sum_j e_j and this Dv block's
    columns of sum_j phi(k_j)^T v_j e_j, e_j = exp(source_j) (the clamp bounds source_j: no running max)."""
    offs_n = tl.arange(0, BLOCK_N)
    w_k = tl.zeros([BLOCK_D], tl.float32)
    kv = tl.zeros([BLOCK_D, BLOCK_DV], tl.float32)
    z = _fp32_zero(BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        row_ok = start + offs_n < hi
        phi_k, phi_k_eps = _load_phi(K, k0 + start, hi - start, stride_kt, eps, BLOCK_N, BLOCK_D, D)
        v = _load_rows(V, k0 + start, hi - start, stride_vt, n_dv, BLOCK_N, BLOCK_DV)
        if WITH_WK:
            outgoing = _flow(1.0, _rowdot(phi_k_eps, sum_q + eps_d), row_ok)
            w_k += tl.sum(phi_k * outgoing[:, None], 0)
        source = tl.minimum(tl.maximum(_rowdot(phi_k_eps, w_q + eps_d), -1.0), 1.0)
        e = tl.where(row_ok, tl.exp(source), 0.0)
        z += tl.sum(e, 0)
        kv = _mm(tl.trans(phi_k), v * e[:, None], kv, DOT_PRECISION, DOT_K)
    return w_k, z, kv


@triton.jit
def _write_out(Q, O, q0, lo, hi, stride_qt, stride_ot, n_dv, sum_k, w_k, kv, ratio, eps_d, eps,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, D: tl.constexpr,
               DOT_PRECISION: tl.constexpr, DOT_K: tl.constexpr):
    """Steps 2-4 on queries lo .. hi: conserved sink -> allocation, out_i = gate_i phi(q_i) S (this block)."""
    offs_n = tl.arange(0, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        row_ok = start + offs_n < hi
        phi_q, phi_q_eps = _load_phi(Q, q0 + start, hi - start, stride_qt, eps, BLOCK_N, BLOCK_D, D)
        incoming = _flow(1.0, _rowdot(phi_q_eps, sum_k + eps_d), row_ok)
        allocation = tl.sigmoid(_rowdot(phi_q_eps, w_k + eps_d) * ratio)
        out = _mm(phi_q, kv, None, DOT_PRECISION, DOT_K) * (incoming * allocation)[:, None]
        _store_rows(O, q0 + start, hi - start, stride_ot, n_dv, out, BLOCK_N, BLOCK_DV)


@triton.jit
def _bwd_queries(Q, DO, D_GATE, D_PHI_Q, q0, lo, hi, stride_qt, stride_dot, num_heads, n_dv, sum_k, w_k, kv,
                 ratio, eps_d, eps, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                 D: tl.constexpr, NDV: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_K: tl.constexpr):
    """Backward step 4 on queries lo .. hi (this Dv block): writes the partials of dg_i and of d phi(q_i)'s
    S-part gate_i dO_i S^T; returns this range's part of dS `(BLOCK_D, BLOCK_DV)`."""
    offs_n = tl.arange(0, BLOCK_N)
    d_kv = tl.zeros([BLOCK_D, BLOCK_DV], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        row_ok = start + offs_n < hi
        phi_q, phi_q_eps = _load_phi(Q, q0 + start, hi - start, stride_qt, eps, BLOCK_N, BLOCK_D, D)
        do = _load_rows(DO, q0 + start, hi - start, stride_dot, n_dv, BLOCK_N, BLOCK_DV)
        incoming = _flow(1.0, _rowdot(phi_q_eps, sum_k + eps_d), row_ok)
        allocation = tl.sigmoid(_rowdot(phi_q_eps, w_k + eps_d) * ratio)
        gate = incoming * allocation  # (BLOCK_N,): out_i = gate_i phi(q_i) S
        d_gate = tl.sum(do * _mm(phi_q, kv, None, DOT_PRECISION, DOT_K), 1)
        _store_tok(D_GATE, q0 + start, hi - start, num_heads * NDV, d_gate, BLOCK_N)
        d_phi = _mm(do * gate[:, None], tl.trans(kv), None, DOT_PRECISION, DOT_K)  # (BLOCK_N, BLOCK_D)
        _store_rows(D_PHI_Q, q0 + start, hi - start, num_heads * NDV * D, D, d_phi, BLOCK_N, BLOCK_D)
        d_kv = _mm(tl.trans(phi_q * gate[:, None]), do, d_kv, DOT_PRECISION, DOT_K)
    return d_kv


@triton.jit
def _bwd_keys(K, V, DV_OUT, D_COMP, D_PHI_K, k0, lo, hi, stride_kt, stride_vt, num_heads, n_dv, w_q, z, nk_f,
              d_kv, eps_d, eps, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
              D: tl.constexpr, DV: tl.constexpr, NDV: tl.constexpr, DOT_PRECISION: tl.constexpr,
              DOT_K: tl.constexpr):
    """Backward step 4 on keys lo .. hi, given the segment's dS (this block): dv (final) and the partials of
    d comp_j = v_j · (phi(k_j) dS) and of d phi(k_j)'s dS-part (v_j comp_j) dS^T."""
    offs_n = tl.arange(0, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        row_ok = start + offs_n < hi
        phi_k, phi_k_eps = _load_phi(K, k0 + start, hi - start, stride_kt, eps, BLOCK_N, BLOCK_D, D)
        v = _load_rows(V, k0 + start, hi - start, stride_vt, n_dv, BLOCK_N, BLOCK_DV)
        source = tl.minimum(tl.maximum(_rowdot(phi_k_eps, w_q + eps_d), -1.0), 1.0)
        competition = tl.where(row_ok, tl.exp(source) * (nk_f / z), 0.0)
        d_x = _mm(phi_k, d_kv, None, DOT_PRECISION, DOT_K)  # (BLOCK_N, BLOCK_DV): d(v_j comp_j)
        _store_tok(D_COMP, k0 + start, hi - start, num_heads * NDV, tl.sum(d_x * v, 1), BLOCK_N)
        _store_rows(DV_OUT, k0 + start, hi - start, num_heads * DV, n_dv, d_x * competition[:, None],
                    BLOCK_N, BLOCK_DV)
        d_phi = _mm(v * competition[:, None], tl.trans(d_kv), None, DOT_PRECISION, DOT_K)
        _store_rows(D_PHI_K, k0 + start, hi - start, num_heads * NDV * D, D, d_phi, BLOCK_N, BLOCK_D)


@triton.jit
def _chain_queries_1(Q, D_GATE, q0, lo, hi, stride_qt, num_heads, sum_k, w_k, ratio, eps_d, eps,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr, NDV: tl.constexpr):
    """Chain, queries, first pass (rows lo .. hi): 3. d sink; returns 2. d w_k's part."""
    offs_n = tl.arange(0, BLOCK_N)
    d_wk = tl.zeros([BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        row_ok = start + offs_n < hi
        phi_q, phi_q_eps = _load_phi(Q, q0 + start, hi - start, stride_qt, eps, BLOCK_N, BLOCK_D, D)
        d_gate = _sum_parts_tok(D_GATE, q0 + start, hi - start, num_heads * NDV, BLOCK_N, NDV)
        incoming = _flow(1.0, _rowdot(phi_q_eps, sum_k + eps_d), row_ok)
        allocation = tl.sigmoid(_rowdot(phi_q_eps, w_k + eps_d) * ratio)
        d_sink = d_gate * incoming * allocation * (1.0 - allocation) * ratio
        d_wk += tl.sum(phi_q_eps * d_sink[:, None], 0)
    return d_wk


@triton.jit
def _chain_keys_1(K, D_COMP, k0, lo, hi, stride_kt, num_heads, sum_q, w_q, z, nk_f, comp_dot, d_wk, eps_d, eps,
                  BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr, NDV: tl.constexpr):
    """Chain, keys, first pass (rows lo .. hi): 3. d source (softmax + clamp); returns the parts of 2. d w_q and
    of 1. d sum phi(q) (through outgoing_j)."""
    offs_n = tl.arange(0, BLOCK_N)
    d_wq = tl.zeros([BLOCK_D], tl.float32)
    d_sum_q = tl.zeros([BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        row_ok = start + offs_n < hi
        phi_k, phi_k_eps = _load_phi(K, k0 + start, hi - start, stride_kt, eps, BLOCK_N, BLOCK_D, D)
        d_comp = _sum_parts_tok(D_COMP, k0 + start, hi - start, num_heads * NDV, BLOCK_N, NDV)
        outgoing = _flow(1.0, _rowdot(phi_k_eps, sum_q + eps_d), row_ok)
        source = _rowdot(phi_k_eps, w_q + eps_d)
        unclamped = row_ok & (source >= -1.0) & (source <= 1.0)
        competition = tl.where(row_ok, tl.exp(tl.minimum(tl.maximum(source, -1.0), 1.0)) * (nk_f / z), 0.0)
        d_source = tl.where(unclamped, competition * (d_comp - comp_dot / nk_f), 0.0)
        d_wq += tl.sum(phi_k_eps * d_source[:, None], 0)
        d_den_k = -_rowdot(phi_k, d_wk) * outgoing * outgoing  # d outgoing_j = phi(k_j) · d w_k, times -outgoing_j^2
        d_sum_q += tl.sum(phi_k_eps * d_den_k[:, None], 0)
    return d_wq, d_sum_q


@triton.jit
def _chain_queries_2(Q, DQ, D_GATE, D_PHI_Q, q0, lo, hi, stride_qt, num_heads, sum_k, w_k, ratio, d_wq, d_sum_q,
                     eps_d, eps, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr,
                     NDV: tl.constexpr):
    """Chain, queries, second pass (rows lo .. hi): writes dq; returns the part of d sum phi(k) (through
    incoming_i)."""
    offs_n = tl.arange(0, BLOCK_N)
    d_sum_k = tl.zeros([BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        row_ok = start + offs_n < hi
        phi_q, phi_q_eps = _load_phi(Q, q0 + start, hi - start, stride_qt, eps, BLOCK_N, BLOCK_D, D)
        d_gate = _sum_parts_tok(D_GATE, q0 + start, hi - start, num_heads * NDV, BLOCK_N, NDV)
        incoming = _flow(1.0, _rowdot(phi_q_eps, sum_k + eps_d), row_ok)
        allocation = tl.sigmoid(_rowdot(phi_q_eps, w_k + eps_d) * ratio)
        d_sink = d_gate * incoming * allocation * (1.0 - allocation) * ratio
        d_incoming = d_gate * allocation + _rowdot(phi_q, d_wq)
        d_den_q = -d_incoming * incoming * incoming
        d_sum_k += tl.sum(phi_q_eps * d_den_q[:, None], 0)
        d_phi = _sum_parts_rows(D_PHI_Q, q0 + start, hi - start, num_heads * NDV * D, D, BLOCK_N, BLOCK_D, NDV)
        d_phi += d_sink[:, None] * (w_k + eps_d)[None, :] + incoming[:, None] * d_wq[None, :]
        d_phi += d_den_q[:, None] * (sum_k + eps_d)[None, :] + d_sum_q[None, :]
        _store_rows(DQ, q0 + start, hi - start, num_heads * D, D, d_phi * phi_q * (1.0 - phi_q), BLOCK_N, BLOCK_D)
    return d_sum_k


@triton.jit
def _chain_keys_2(K, DK, D_COMP, D_PHI_K, k0, lo, hi, stride_kt, num_heads, sum_q, w_q, z, nk_f, comp_dot, d_wk,
                  d_sum_k, eps_d, eps, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr,
                  NDV: tl.constexpr):
    """Chain, keys, second pass (rows lo .. hi): writes dk."""
    offs_n = tl.arange(0, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        row_ok = start + offs_n < hi
        phi_k, phi_k_eps = _load_phi(K, k0 + start, hi - start, stride_kt, eps, BLOCK_N, BLOCK_D, D)
        d_comp = _sum_parts_tok(D_COMP, k0 + start, hi - start, num_heads * NDV, BLOCK_N, NDV)
        outgoing = _flow(1.0, _rowdot(phi_k_eps, sum_q + eps_d), row_ok)
        source = _rowdot(phi_k_eps, w_q + eps_d)
        unclamped = row_ok & (source >= -1.0) & (source <= 1.0)
        competition = tl.where(row_ok, tl.exp(tl.minimum(tl.maximum(source, -1.0), 1.0)) * (nk_f / z), 0.0)
        d_source = tl.where(unclamped, competition * (d_comp - comp_dot / nk_f), 0.0)
        d_den_k = -_rowdot(phi_k, d_wk) * outgoing * outgoing
        d_phi = _sum_parts_rows(D_PHI_K, k0 + start, hi - start, num_heads * NDV * D, D, BLOCK_N, BLOCK_D, NDV)
        d_phi += d_source[:, None] * (w_q + eps_d)[None, :] + outgoing[:, None] * d_wk[None, :]
        d_phi += d_den_k[:, None] * (sum_q + eps_d)[None, :] + d_sum_k[None, :]
        _store_rows(DK, k0 + start, hi - start, num_heads * D, D, d_phi * phi_k * (1.0 - phi_k), BLOCK_N, BLOCK_D)


@triton.jit
def _i64(x):
    """x as int64 (tensor or, as loop indices are under the interpreter, a Python int): offsets past 2^31."""
    return x + tl.full([], 0, tl.int64)


@triton.jit
def _load_state_block(KV, pid, dv0, n_dv, D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr,
                      BLOCK_DV: tl.constexpr):
    """Columns dv0 .. dv0 + BLOCK_DV of the (pid)th D x Dv float32 state `(BLOCK_D, BLOCK_DV)`, zero outside."""
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    pid = _i64(pid)  # (items x heads) x D x Dv can pass 2^31 when many short segments are chunked
    return tl.load(KV + pid * D * DV + offs_d[:, None] * DV + (dv0 + offs_dv)[None, :],
                   mask=(offs_d[:, None] < D) & (offs_dv[None, :] < n_dv), other=0.0)


@triton.jit
def _store_state_block(KV, pid, dv0, n_dv, x, D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_DV: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    pid = _i64(pid)
    tl.store(KV + pid * D * DV + offs_d[:, None] * DV + (dv0 + offs_dv)[None, :], x,
             mask=(offs_d[:, None] < D) & (offs_dv[None, :] < n_dv))


@triton.jit
def _sum_s_dot(S_DOT, pid, NDV: tl.constexpr):
    """<dS, S> from its NDV per-block parts, in block order."""
    acc = tl.load(S_DOT + pid * NDV)
    for b in tl.static_range(1, NDV):
        acc += tl.load(S_DOT + pid * NDV + b)
    return acc


# ---------------------------------------------------------------------------------------------------------------
# non-causal kernels, single pass: one program per (segment, head, Dv block) loops over the whole segment
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def flow_attention_fwd_kernel(
    Q, K, V, O, VECS, KV, Z, CU_Q, CU_K,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, num_heads, eps,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_K: tl.constexpr,
):
    """Grid (segments, heads, Dv blocks): columns blk * BLOCK_DV .. + BLOCK_DV of the state and the output."""
    seg = tl.program_id(0)
    head = tl.program_id(1)
    blk = tl.program_id(2)
    q_start = tl.load(CU_Q + seg)
    n_q = tl.load(CU_Q + seg + 1) - q_start
    k_start = tl.load(CU_K + seg)
    n_k = tl.load(CU_K + seg + 1) - k_start
    dv0 = blk * BLOCK_DV
    n_dv = DV - dv0  # valid columns of this block (>= 1)
    Q += head * stride_qh
    K += head * stride_kh
    V += head * stride_vh + dv0
    O += head * DV + dv0  # O is contiguous (total_q, H, DV)
    offs_d = tl.arange(0, BLOCK_D)
    eps_d = tl.where(offs_d < D, eps, 0.0)  # (BLOCK_D,): eps on real dims only

    sum_q = _phi_sum(Q, q_start, 0, n_q, stride_qt, eps, BLOCK_N, BLOCK_D, D)
    sum_k = _phi_sum(K, k_start, 0, n_k, stride_kt, eps, BLOCK_N, BLOCK_D, D)
    w_q = _w_sum(Q, q_start, 0, n_q, stride_qt, sum_k, eps_d, eps, BLOCK_N, BLOCK_D, D)
    # w_k in the same pass over the keys as the state (it needs only sum phi(q))
    w_k, z, kv = _key_state(K, V, k_start, 0, n_k, stride_kt, stride_vt, n_dv, sum_q, w_q, eps_d, eps, True,
                            BLOCK_N, BLOCK_D, BLOCK_DV, D, DOT_PRECISION, DOT_K)
    kv = kv * (n_k.to(tl.float32) / z)  # 3. competition_j = e_j / z * Nk folded into the state
    _write_out(Q, O, q_start, 0, n_q, stride_qt, num_heads * DV, n_dv, sum_k, w_k, kv,
               n_q.to(tl.float32) / n_k.to(tl.float32), eps_d, eps, BLOCK_N, BLOCK_D, BLOCK_DV, D,
               DOT_PRECISION, DOT_K)

    # small per-(segment, head) state for the backward (the vectors and z from block 0: every block has them)
    pid = seg * num_heads + head
    if blk == 0:
        _store_vec(VECS + (pid * 4 + 0) * D, sum_q, BLOCK_D, D)
        _store_vec(VECS + (pid * 4 + 1) * D, sum_k, BLOCK_D, D)
        _store_vec(VECS + (pid * 4 + 2) * D, w_q, BLOCK_D, D)
        _store_vec(VECS + (pid * 4 + 3) * D, w_k, BLOCK_D, D)
        tl.store(Z + pid, z)
    _store_state_block(KV, pid, dv0, n_dv, kv, D, DV, BLOCK_D, BLOCK_DV)


@triton.jit
def flow_attention_bwd_state_kernel(
    Q, K, V, DO, DV_OUT, VECS, KV, Z, CU_Q, CU_K, D_GATE, D_PHI_Q, D_COMP, D_PHI_K, S_DOT,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, num_heads, eps,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    NDV: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_K: tl.constexpr,
):
    """Backward, part a, grid (segments, heads, Dv blocks): everything that touches this block's columns of S and
    dS. Writes dv (final) and float32 per-block partials of the sums over Dv: dg_i, gate_i dO_i S^T, <dS, S>,
    d comp_j = v_j · (phi(k_j) dS) and (v_j comp_j) dS^T."""
    seg = tl.program_id(0)
    head = tl.program_id(1)
    blk = tl.program_id(2)
    q_start = tl.load(CU_Q + seg)
    n_q = tl.load(CU_Q + seg + 1) - q_start
    k_start = tl.load(CU_K + seg)
    n_k = tl.load(CU_K + seg + 1) - k_start
    dv0 = blk * BLOCK_DV
    n_dv = DV - dv0
    Q += head * stride_qh
    K += head * stride_kh
    V += head * stride_vh + dv0
    DO += head * stride_doh + dv0
    DV_OUT += head * DV + dv0  # gradients are contiguous
    D_GATE += head * NDV + blk  # workspaces (total, H, NDV) and (total, H, NDV, D)
    D_PHI_Q += (head * NDV + blk) * D
    D_COMP += head * NDV + blk
    D_PHI_K += (head * NDV + blk) * D
    offs_d = tl.arange(0, BLOCK_D)
    eps_d = tl.where(offs_d < D, eps, 0.0)

    pid = seg * num_heads + head
    sum_k = _load_vec(VECS + (pid * 4 + 1) * D, BLOCK_D, D)
    w_q = _load_vec(VECS + (pid * 4 + 2) * D, BLOCK_D, D)
    w_k = _load_vec(VECS + (pid * 4 + 3) * D, BLOCK_D, D)
    kv = _load_state_block(KV, pid, dv0, n_dv, D, DV, BLOCK_D, BLOCK_DV)  # (BLOCK_D, BLOCK_DV): S
    z = tl.load(Z + pid)
    nk_f = n_k.to(tl.float32)

    d_kv = _bwd_queries(Q, DO, D_GATE, D_PHI_Q, q_start, 0, n_q, stride_qt, stride_dot, num_heads, n_dv, sum_k, w_k,
                        kv, n_q.to(tl.float32) / nk_f, eps_d, eps, BLOCK_N, BLOCK_D, BLOCK_DV, D, NDV,
                        DOT_PRECISION, DOT_K)
    # sum_j comp_j d comp_j = <dS, S>: the softmax Jacobian's shared term (this block's part)
    tl.store(S_DOT + pid * NDV + blk, tl.sum(tl.sum(d_kv * kv, 1), 0))
    _bwd_keys(K, V, DV_OUT, D_COMP, D_PHI_K, k_start, 0, n_k, stride_kt, stride_vt, num_heads, n_dv, w_q, z, nk_f,
              d_kv, eps_d, eps, BLOCK_N, BLOCK_D, BLOCK_DV, D, DV, NDV, DOT_PRECISION, DOT_K)


@triton.jit
def flow_attention_bwd_chain_kernel(
    Q, K, DQ, DK, VECS, Z, CU_Q, CU_K, D_GATE, D_PHI_Q, D_COMP, D_PHI_K, S_DOT,
    stride_qt, stride_qh, stride_kt, stride_kh, num_heads, eps,
    D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NDV: tl.constexpr,
):
    """Backward, part b, grid (segments, heads): the scalar chain through steps 3-1 (no D x Dv state, no dots),
    from the Dv-block partials summed in block order; writes dq and dk."""
    seg = tl.program_id(0)
    head = tl.program_id(1)
    q_start = tl.load(CU_Q + seg)
    n_q = tl.load(CU_Q + seg + 1) - q_start
    k_start = tl.load(CU_K + seg)
    n_k = tl.load(CU_K + seg + 1) - k_start
    Q += head * stride_qh
    K += head * stride_kh
    DQ += head * D  # gradients are contiguous
    DK += head * D
    D_GATE += head * NDV
    D_PHI_Q += head * NDV * D
    D_COMP += head * NDV
    D_PHI_K += head * NDV * D
    offs_d = tl.arange(0, BLOCK_D)
    eps_d = tl.where(offs_d < D, eps, 0.0)

    pid = seg * num_heads + head
    sum_q = _load_vec(VECS + (pid * 4 + 0) * D, BLOCK_D, D)
    sum_k = _load_vec(VECS + (pid * 4 + 1) * D, BLOCK_D, D)
    w_q = _load_vec(VECS + (pid * 4 + 2) * D, BLOCK_D, D)
    w_k = _load_vec(VECS + (pid * 4 + 3) * D, BLOCK_D, D)
    z = tl.load(Z + pid)
    comp_dot = _sum_s_dot(S_DOT, pid, NDV)
    nk_f = n_k.to(tl.float32)
    ratio = n_q.to(tl.float32) / nk_f

    d_wk = _chain_queries_1(Q, D_GATE, q_start, 0, n_q, stride_qt, num_heads, sum_k, w_k, ratio, eps_d, eps,
                            BLOCK_N, BLOCK_D, D, NDV)
    d_wq, d_sum_q = _chain_keys_1(K, D_COMP, k_start, 0, n_k, stride_kt, num_heads, sum_q, w_q, z, nk_f, comp_dot,
                                  d_wk, eps_d, eps, BLOCK_N, BLOCK_D, D, NDV)
    d_sum_k = _chain_queries_2(Q, DQ, D_GATE, D_PHI_Q, q_start, 0, n_q, stride_qt, num_heads, sum_k, w_k, ratio,
                               d_wq, d_sum_q, eps_d, eps, BLOCK_N, BLOCK_D, D, NDV)
    _chain_keys_2(K, DK, D_COMP, D_PHI_K, k_start, 0, n_k, stride_kt, num_heads, sum_q, w_q, z, nk_f, comp_dot,
                  d_wk, d_sum_k, eps_d, eps, BLOCK_N, BLOCK_D, D, NDV)


# ---------------------------------------------------------------------------------------------------------------
# non-causal kernels, chunked: one program per (work item = (segment, chunk), head[, Dv block]); partials of
# every sum over a segment go to float32 rows per item, reduced per (segment, head) in chunk order
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _chunk_ranges(CU_CHUNK, CU_Q, CU_K, item, seg, chunk_tokens):
    """The item's chunk of its segment: (q_start, n_q, k_start, n_k) of the segment and the chunk's rows,
    lo .. q_hi of the queries and lo .. k_hi of the keys (either may be empty when Nq != Nk)."""
    q_start = tl.load(CU_Q + seg)
    n_q = tl.load(CU_Q + seg + 1) - q_start
    k_start = tl.load(CU_K + seg)
    n_k = tl.load(CU_K + seg + 1) - k_start
    lo = (item - tl.load(CU_CHUNK + seg)) * chunk_tokens
    return q_start, n_q, k_start, n_k, lo, tl.minimum(lo + chunk_tokens, n_q), tl.minimum(lo + chunk_tokens, n_k)


@triton.jit
def flow_attention_chunk_vecs_kernel(
    Q, K, VECS, P_VECS, ITEM_SEG, CU_CHUNK, CU_Q, CU_K,
    stride_qt, stride_qh, stride_kt, stride_kh, num_heads, num_segments, chunk_tokens, eps,
    D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PHASE: tl.constexpr,
):
    """Forward steps 1-2 per chunk, grid (items, heads), dot-free. PHASE 0: the chunk's sums of phi(q), phi(k)
    (partial slots 0, 1); PHASE 1, from the reduced sums: its parts of w_q, w_k (slots 2, 3)."""
    item = tl.program_id(0)
    head = tl.program_id(1)
    seg = tl.load(ITEM_SEG + item)
    if seg >= num_segments:  # past the real items
        return
    q_start, n_q, k_start, n_k, lo, q_hi, k_hi = _chunk_ranges(CU_CHUNK, CU_Q, CU_K, item, seg, chunk_tokens)
    Q += head * stride_qh
    K += head * stride_kh
    offs_d = tl.arange(0, BLOCK_D)
    eps_d = tl.where(offs_d < D, eps, 0.0)
    row = (_i64(item) * num_heads + head) * 4  # (items, H, 4, D) partial rows
    if PHASE == 0:
        _store_vec(P_VECS + (row + 0) * D, _phi_sum(Q, q_start, lo, q_hi, stride_qt, eps, BLOCK_N, BLOCK_D, D),
                   BLOCK_D, D)
        _store_vec(P_VECS + (row + 1) * D, _phi_sum(K, k_start, lo, k_hi, stride_kt, eps, BLOCK_N, BLOCK_D, D),
                   BLOCK_D, D)
    else:
        pid = seg * num_heads + head
        sum_q = _load_vec(VECS + (pid * 4 + 0) * D, BLOCK_D, D)
        sum_k = _load_vec(VECS + (pid * 4 + 1) * D, BLOCK_D, D)
        _store_vec(P_VECS + (row + 2) * D,
                   _w_sum(Q, q_start, lo, q_hi, stride_qt, sum_k, eps_d, eps, BLOCK_N, BLOCK_D, D), BLOCK_D, D)
        _store_vec(P_VECS + (row + 3) * D,
                   _w_sum(K, k_start, lo, k_hi, stride_kt, sum_q, eps_d, eps, BLOCK_N, BLOCK_D, D), BLOCK_D, D)


@triton.jit
def flow_attention_chunk_reduce_kernel(
    P_VECS, VECS, CU_CHUNK, num_heads, slot0, n_slots,
    D: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Grid (segments, heads): slots slot0 .. slot0 + n_slots of the `(items, H, 4, D)` partials summed over the
    segment's chunks in chunk order (deterministic) into `(S, H, 4, D)`."""
    seg = tl.program_id(0)
    head = tl.program_id(1)
    c0 = tl.load(CU_CHUNK + seg)
    c1 = tl.load(CU_CHUNK + seg + 1)
    offs_s = tl.arange(0, 4)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_s[:, None] >= slot0) & (offs_s[:, None] < slot0 + n_slots) & (offs_d[None, :] < D)
    offs = offs_s[:, None] * D + offs_d[None, :]  # (4, BLOCK_D)
    acc = tl.zeros([4, BLOCK_D], tl.float32)
    for c in range(c0, c1):
        acc += tl.load(P_VECS + (_i64(c) * num_heads + head) * 4 * D + offs, mask=mask, other=0.0)
    tl.store(VECS + (seg * num_heads + head) * 4 * D + offs, acc, mask=mask)


@triton.jit
def flow_attention_chunk_fwd_kernel(
    Q, K, V, O, VECS, KV, P_KV, P_Z, ITEM_SEG, CU_CHUNK, CU_Q, CU_K,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, num_heads, num_segments, chunk_tokens, eps,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_K: tl.constexpr, PART: tl.constexpr,
):
    """Forward per chunk, grid (items, heads, Dv blocks). PART 0 (keys, given w_q): the chunk's part of z and of
    this block's columns of the unnormalised state (partials `(items, H, D, Dv)`, `(items, H)`); PART 1 (queries,
    given the reduced state): this block's output columns."""
    item = tl.program_id(0)
    head = tl.program_id(1)
    blk = tl.program_id(2)
    seg = tl.load(ITEM_SEG + item)
    if seg >= num_segments:  # past the real items
        return
    q_start, n_q, k_start, n_k, lo, q_hi, k_hi = _chunk_ranges(CU_CHUNK, CU_Q, CU_K, item, seg, chunk_tokens)
    dv0 = blk * BLOCK_DV
    n_dv = DV - dv0
    offs_d = tl.arange(0, BLOCK_D)
    eps_d = tl.where(offs_d < D, eps, 0.0)
    pid = seg * num_heads + head
    row = _i64(item) * num_heads + head
    if PART == 0:
        w_q = _load_vec(VECS + (pid * 4 + 2) * D, BLOCK_D, D)
        # w_k comes from the vecs kernel (WITH_WK False: sum phi(q), the 9th argument, goes unused)
        _, z, kv = _key_state(K + head * stride_kh, V + head * stride_vh + dv0, k_start, lo, k_hi, stride_kt,
                              stride_vt, n_dv, w_q, w_q, eps_d, eps, False, BLOCK_N, BLOCK_D, BLOCK_DV, D,
                              DOT_PRECISION, DOT_K)
        _store_state_block(P_KV, row, dv0, n_dv, kv, D, DV, BLOCK_D, BLOCK_DV)
        if blk == 0:
            tl.store(P_Z + row, z)
    else:
        sum_k = _load_vec(VECS + (pid * 4 + 1) * D, BLOCK_D, D)
        w_k = _load_vec(VECS + (pid * 4 + 3) * D, BLOCK_D, D)
        kv = _load_state_block(KV, pid, dv0, n_dv, D, DV, BLOCK_D, BLOCK_DV)  # normalised S
        _write_out(Q + head * stride_qh, O + head * DV + dv0, q_start, lo, q_hi, stride_qt, num_heads * DV, n_dv,
                   sum_k, w_k, kv, n_q.to(tl.float32) / n_k.to(tl.float32), eps_d, eps, BLOCK_N, BLOCK_D, BLOCK_DV,
                   D, DOT_PRECISION, DOT_K)


@triton.jit
def flow_attention_chunk_state_reduce_kernel(
    P_KV, P_Z, KV, Z, OUT, S_DOT, CU_CHUNK, CU_K, num_heads,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, NDV: tl.constexpr,
    BACKWARD: tl.constexpr,
):
    """Grid (segments, heads, Dv blocks): this block's columns of the `(items, H, D, Dv)` partials summed over the
    segment's chunks in chunk order. Forward: with z = the summed `(items, H)` partials, OUT = KV = the sum
    * Nk / z (the normalised state) and Z = z. Backward (partials of dS): OUT = dS and S_DOT = this block's
    part of <dS, S> (S = KV)."""
    seg = tl.program_id(0)
    head = tl.program_id(1)
    blk = tl.program_id(2)
    c0 = tl.load(CU_CHUNK + seg)
    c1 = tl.load(CU_CHUNK + seg + 1)
    dv0 = blk * BLOCK_DV
    n_dv = DV - dv0
    pid = seg * num_heads + head
    acc = tl.zeros([BLOCK_D, BLOCK_DV], tl.float32)
    for c in range(c0, c1):
        acc += _load_state_block(P_KV, c * num_heads + head, dv0, n_dv, D, DV, BLOCK_D, BLOCK_DV)
    if BACKWARD:
        _store_state_block(OUT, pid, dv0, n_dv, acc, D, DV, BLOCK_D, BLOCK_DV)
        kv = _load_state_block(KV, pid, dv0, n_dv, D, DV, BLOCK_D, BLOCK_DV)
        tl.store(S_DOT + pid * NDV + blk, tl.sum(tl.sum(acc * kv, 1), 0))
    else:
        z = tl.load(P_Z + _i64(c0) * num_heads + head)
        for c in range(c0 + 1, c1):
            z += tl.load(P_Z + _i64(c) * num_heads + head)
        n_k = tl.load(CU_K + seg + 1) - tl.load(CU_K + seg)
        _store_state_block(OUT, pid, dv0, n_dv, acc * (n_k.to(tl.float32) / z), D, DV, BLOCK_D, BLOCK_DV)
        if blk == 0:
            tl.store(Z + pid, z)


@triton.jit
def flow_attention_chunk_bwd_state_kernel(
    Q, K, V, DO, DV_OUT, VECS, KV, Z, DS, P_DS, ITEM_SEG, CU_CHUNK, CU_Q, CU_K, D_GATE, D_PHI_Q, D_COMP, D_PHI_K,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, num_heads,
    num_segments, chunk_tokens, eps,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    NDV: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_K: tl.constexpr, PART: tl.constexpr,
):
    """Backward part a per chunk, grid (items, heads, Dv blocks). PART 0 (queries): the partials of dg_i and of
    gate_i dO_i S^T, and the chunk's part of dS (`(items, H, D, Dv)`); PART 1 (keys, given the reduced dS): dv
    and the partials of d comp_j and of (v_j comp_j) dS^T."""
    item = tl.program_id(0)
    head = tl.program_id(1)
    blk = tl.program_id(2)
    seg = tl.load(ITEM_SEG + item)
    if seg >= num_segments:  # past the real items
        return
    q_start, n_q, k_start, n_k, lo, q_hi, k_hi = _chunk_ranges(CU_CHUNK, CU_Q, CU_K, item, seg, chunk_tokens)
    dv0 = blk * BLOCK_DV
    n_dv = DV - dv0
    offs_d = tl.arange(0, BLOCK_D)
    eps_d = tl.where(offs_d < D, eps, 0.0)
    pid = seg * num_heads + head
    nk_f = n_k.to(tl.float32)
    if PART == 0:
        sum_k = _load_vec(VECS + (pid * 4 + 1) * D, BLOCK_D, D)
        w_k = _load_vec(VECS + (pid * 4 + 3) * D, BLOCK_D, D)
        kv = _load_state_block(KV, pid, dv0, n_dv, D, DV, BLOCK_D, BLOCK_DV)
        d_kv = _bwd_queries(Q + head * stride_qh, DO + head * stride_doh + dv0, D_GATE + head * NDV + blk,
                            D_PHI_Q + (head * NDV + blk) * D, q_start, lo, q_hi, stride_qt, stride_dot, num_heads,
                            n_dv, sum_k, w_k, kv, n_q.to(tl.float32) / nk_f, eps_d, eps, BLOCK_N, BLOCK_D,
                            BLOCK_DV, D, NDV, DOT_PRECISION, DOT_K)
        _store_state_block(P_DS, _i64(item) * num_heads + head, dv0, n_dv, d_kv, D, DV, BLOCK_D, BLOCK_DV)
    else:
        w_q = _load_vec(VECS + (pid * 4 + 2) * D, BLOCK_D, D)
        z = tl.load(Z + pid)
        d_kv = _load_state_block(DS, pid, dv0, n_dv, D, DV, BLOCK_D, BLOCK_DV)
        _bwd_keys(K + head * stride_kh, V + head * stride_vh + dv0, DV_OUT + head * DV + dv0,
                  D_COMP + head * NDV + blk, D_PHI_K + (head * NDV + blk) * D, k_start, lo, k_hi, stride_kt,
                  stride_vt, num_heads, n_dv, w_q, z, nk_f, d_kv, eps_d, eps, BLOCK_N, BLOCK_D, BLOCK_DV, D, DV,
                  NDV, DOT_PRECISION, DOT_K)


@triton.jit
def flow_attention_chunk_bwd_chain_kernel(
    Q, K, DQ, DK, VECS, Z, G_VECS, P_G_VECS, ITEM_SEG, CU_CHUNK, CU_Q, CU_K, D_GATE, D_PHI_Q, D_COMP, D_PHI_K,
    S_DOT, stride_qt, stride_qh, stride_kt, stride_kh, num_heads, num_segments, chunk_tokens, eps,
    D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NDV: tl.constexpr, PASS: tl.constexpr,
):
    """Backward part b per chunk, grid (items, heads), dot-free: one of the chain's four passes, with the sums of
    the earlier passes reduced into G_VECS `(S, H, 4, D)` (slots d w_k, d w_q, d sum phi(q), d sum phi(k)).
    PASS 1 (queries): partial d w_k (slot 0); 2 (keys): partial d w_q, d sum phi(q) (slots 1, 2); 3 (queries):
    dq and partial d sum phi(k) (slot 3); 4 (keys): dk. Partials `(items, H, 4, D)`."""
    item = tl.program_id(0)
    head = tl.program_id(1)
    seg = tl.load(ITEM_SEG + item)
    if seg >= num_segments:  # past the real items
        return
    q_start, n_q, k_start, n_k, lo, q_hi, k_hi = _chunk_ranges(CU_CHUNK, CU_Q, CU_K, item, seg, chunk_tokens)
    Q += head * stride_qh
    K += head * stride_kh
    offs_d = tl.arange(0, BLOCK_D)
    eps_d = tl.where(offs_d < D, eps, 0.0)
    pid = seg * num_heads + head
    sum_q = _load_vec(VECS + (pid * 4 + 0) * D, BLOCK_D, D)
    sum_k = _load_vec(VECS + (pid * 4 + 1) * D, BLOCK_D, D)
    w_q = _load_vec(VECS + (pid * 4 + 2) * D, BLOCK_D, D)
    w_k = _load_vec(VECS + (pid * 4 + 3) * D, BLOCK_D, D)
    nk_f = n_k.to(tl.float32)
    ratio = n_q.to(tl.float32) / nk_f
    row = (_i64(item) * num_heads + head) * 4
    if PASS == 1:
        d_wk = _chain_queries_1(Q, D_GATE + head * NDV, q_start, lo, q_hi, stride_qt, num_heads, sum_k, w_k, ratio,
                                eps_d, eps, BLOCK_N, BLOCK_D, D, NDV)
        _store_vec(P_G_VECS + (row + 0) * D, d_wk, BLOCK_D, D)
    elif PASS == 2:
        d_wk = _load_vec(G_VECS + (pid * 4 + 0) * D, BLOCK_D, D)
        d_wq, d_sum_q = _chain_keys_1(K, D_COMP + head * NDV, k_start, lo, k_hi, stride_kt, num_heads, sum_q, w_q,
                                      tl.load(Z + pid), nk_f, _sum_s_dot(S_DOT, pid, NDV), d_wk, eps_d, eps,
                                      BLOCK_N, BLOCK_D, D, NDV)
        _store_vec(P_G_VECS + (row + 1) * D, d_wq, BLOCK_D, D)
        _store_vec(P_G_VECS + (row + 2) * D, d_sum_q, BLOCK_D, D)
    elif PASS == 3:
        d_wq = _load_vec(G_VECS + (pid * 4 + 1) * D, BLOCK_D, D)
        d_sum_q = _load_vec(G_VECS + (pid * 4 + 2) * D, BLOCK_D, D)
        d_sum_k = _chain_queries_2(Q, DQ + head * D, D_GATE + head * NDV, D_PHI_Q + head * NDV * D, q_start, lo,
                                   q_hi, stride_qt, num_heads, sum_k, w_k, ratio, d_wq, d_sum_q, eps_d, eps,
                                   BLOCK_N, BLOCK_D, D, NDV)
        _store_vec(P_G_VECS + (row + 3) * D, d_sum_k, BLOCK_D, D)
    else:
        d_wk = _load_vec(G_VECS + (pid * 4 + 0) * D, BLOCK_D, D)
        d_sum_k = _load_vec(G_VECS + (pid * 4 + 3) * D, BLOCK_D, D)
        _chain_keys_2(K, DK + head * D, D_COMP + head * NDV, D_PHI_K + head * NDV * D, k_start, lo, k_hi,
                      stride_kt, num_heads, sum_q, w_q, tl.load(Z + pid), nk_f, _sum_s_dot(S_DOT, pid, NDV), d_wk,
                      d_sum_k, eps_d, eps, BLOCK_N, BLOCK_D, D, NDV)


# ---------------------------------------------------------------------------------------------------------------
# causal kernels
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def flow_attention_causal_flows_kernel(
    Q, K, GC, CARRY, E_CARRY, CU,
    stride_qt, stride_qh, stride_kt, stride_kh, num_heads, eps,
    D: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, WRITE_CARRY: tl.constexpr,
):
    """Causal steps 1-3, grid (segments, heads): scans the chunks and writes every token's two step-4 scalars,
    gate_i = allocation_i incoming_i / n_i and competition_i (float32 `(total, H, 2)`); with WRITE_CARRY also the
    running D-vectors and exp-sum at every chunk start (what the reverse scans of the backward restart from)."""
    seg = tl.program_id(0)
    head = tl.program_id(1)
    start_tok = tl.load(CU + seg)
    n_tok = tl.load(CU + seg + 1) - start_tok
    Q += head * stride_qh
    K += head * stride_kh
    GC += head * 2
    offs_c = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, BLOCK_D)
    eps_d = tl.where(offs_d < D, eps, 0.0)
    # chunk rows: start_tok // CHUNK + seg + c never collide between segments and stay below
    # total // CHUNK + num_segments + 1 (no host-side chunk count needed)
    row0 = start_tok // CHUNK + seg

    # running sums over all earlier chunks
    sum_q = tl.zeros([BLOCK_D], tl.float32)
    sum_k = tl.zeros([BLOCK_D], tl.float32)
    w_q = tl.zeros([BLOCK_D], tl.float32)
    w_k = tl.zeros([BLOCK_D], tl.float32)
    e_sum = _fp32_zero(CHUNK)
    for start in range(0, n_tok, CHUNK):
        if WRITE_CARRY:
            carry = CARRY + ((row0 + start // CHUNK) * num_heads + head) * 4 * D
            _store_vec(carry + 0 * D, sum_q, BLOCK_D, D)
            _store_vec(carry + 1 * D, sum_k, BLOCK_D, D)
            _store_vec(carry + 2 * D, w_q, BLOCK_D, D)
            _store_vec(carry + 3 * D, w_k, BLOCK_D, D)
            tl.store(E_CARRY + (row0 + start // CHUNK) * num_heads + head, e_sum)
        row_ok = start + offs_c < n_tok
        n = (start + offs_c + 1).to(tl.float32)  # (CHUNK,): n_i
        phi_q, phi_q_eps = _load_phi(Q, start_tok + start, n_tok - start, stride_qt, eps, CHUNK, BLOCK_D, D)
        phi_k, phi_k_eps = _load_phi(K, start_tok + start, n_tok - start, stride_kt, eps, CHUNK, BLOCK_D, D)
        _, _, _, _, incoming, outgoing, _, allocation, e, _, competition = _causal_flows(
            phi_q, phi_q_eps, phi_k, phi_k_eps, n, row_ok, sum_q, sum_k, w_q, w_k, e_sum, eps_d)
        _store_tok(GC, start_tok + start, n_tok - start, num_heads * 2, allocation * incoming / n, CHUNK)
        _store_tok(GC + 1, start_tok + start, n_tok - start, num_heads * 2, competition, CHUNK)
        sum_q += tl.sum(phi_q, 0)
        sum_k += tl.sum(phi_k, 0)
        w_q += tl.sum(phi_q * incoming[:, None], 0)
        w_k += tl.sum(phi_k * outgoing[:, None], 0)
        e_sum += tl.sum(e, 0)


@triton.jit
def flow_attention_causal_fwd_kernel(
    Q, K, V, O, GC, CU,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, num_heads,
    D: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_K: tl.constexpr,
):
    """Causal step 4, grid (segments, heads, Dv blocks): this block's output columns, through its columns of the
    running state; the per-token scalars come from the flows kernel."""
    seg = tl.program_id(0)
    head = tl.program_id(1)
    blk = tl.program_id(2)
    start_tok = tl.load(CU + seg)
    n_tok = tl.load(CU + seg + 1) - start_tok
    dv0 = blk * BLOCK_DV
    n_dv = DV - dv0
    Q += head * stride_qh
    K += head * stride_kh
    V += head * stride_vh + dv0
    O += head * DV + dv0
    GC += head * 2
    offs_c = tl.arange(0, CHUNK)
    causal = offs_c[:, None] >= offs_c[None, :]  # (CHUNK, CHUNK): j <= i

    kv = tl.zeros([BLOCK_D, BLOCK_DV], tl.float32)  # sum_j phi(k_j)^T v_j competition_j (this block's columns)
    for start in range(0, n_tok, CHUNK):
        phi_q, _ = _load_phi(Q, start_tok + start, n_tok - start, stride_qt, 0.0, CHUNK, BLOCK_D, D)
        phi_k, _ = _load_phi(K, start_tok + start, n_tok - start, stride_kt, 0.0, CHUNK, BLOCK_D, D)
        v = _load_rows(V, start_tok + start, n_tok - start, stride_vt, n_dv, CHUNK, BLOCK_DV)
        gate = _load_tok(GC, start_tok + start, n_tok - start, num_heads * 2, CHUNK)
        competition = _load_tok(GC + 1, start_tok + start, n_tok - start, num_heads * 2, CHUNK)
        # 4. inside the chunk a masked product, earlier chunks through the running state
        x = v * competition[:, None]  # (CHUNK, BLOCK_DV)
        scores = tl.where(causal, _mm(phi_q, tl.trans(phi_k), None, DOT_PRECISION, DOT_K), 0.0)
        out = _mm(scores, x, None, DOT_PRECISION, DOT_K)
        out = _mm(phi_q, kv, out, DOT_PRECISION, DOT_K) * gate[:, None]
        _store_rows(O, start_tok + start, n_tok - start, num_heads * DV, n_dv, out, CHUNK, BLOCK_DV)
        kv = _mm(tl.trans(phi_k), x, kv, DOT_PRECISION, DOT_K)


@triton.jit
def flow_attention_causal_bwd_scan_kernel(
    Q, K, V, DO, GC, D_GATE, D_PHI_Q, CU,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, num_heads,
    D: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    NDV: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_K: tl.constexpr,
):
    """Backward part a, grid (segments, heads, Dv blocks): the step-4 forward scan again; writes this block's
    partials of dg_i = dO_i · (phi(q_i) S_i) and of d phi(q_i)'s S-part gate_i dO_i S_i^T."""
    seg = tl.program_id(0)
    head = tl.program_id(1)
    blk = tl.program_id(2)
    start_tok = tl.load(CU + seg)
    n_tok = tl.load(CU + seg + 1) - start_tok
    dv0 = blk * BLOCK_DV
    n_dv = DV - dv0
    Q += head * stride_qh
    K += head * stride_kh
    V += head * stride_vh + dv0
    DO += head * stride_doh + dv0
    GC += head * 2
    D_GATE += head * NDV + blk  # workspaces (total, H, NDV) and (total, H, NDV, D)
    D_PHI_Q += (head * NDV + blk) * D
    offs_c = tl.arange(0, CHUNK)
    causal = offs_c[:, None] >= offs_c[None, :]

    kv = tl.zeros([BLOCK_D, BLOCK_DV], tl.float32)
    for start in range(0, n_tok, CHUNK):
        phi_q, _ = _load_phi(Q, start_tok + start, n_tok - start, stride_qt, 0.0, CHUNK, BLOCK_D, D)
        phi_k, _ = _load_phi(K, start_tok + start, n_tok - start, stride_kt, 0.0, CHUNK, BLOCK_D, D)
        v = _load_rows(V, start_tok + start, n_tok - start, stride_vt, n_dv, CHUNK, BLOCK_DV)
        do = _load_rows(DO, start_tok + start, n_tok - start, stride_dot, n_dv, CHUNK, BLOCK_DV)
        gate = _load_tok(GC, start_tok + start, n_tok - start, num_heads * 2, CHUNK)  # out_i = gate_i phi(q_i) S_i
        competition = _load_tok(GC + 1, start_tok + start, n_tok - start, num_heads * 2, CHUNK)
        x = v * competition[:, None]
        scores = tl.where(causal, _mm(phi_q, tl.trans(phi_k), None, DOT_PRECISION, DOT_K), 0.0)
        u = _mm(scores, x, None, DOT_PRECISION, DOT_K)
        u = _mm(phi_q, kv, u, DOT_PRECISION, DOT_K)  # (CHUNK, BLOCK_DV): phi(q_i) S_i
        _store_tok(D_GATE, start_tok + start, n_tok - start, num_heads * NDV, tl.sum(do * u, 1), CHUNK)
        # d phi(q_i) = gate_i dO_i S_i^T = gate_i (sum_{j<=i in chunk} (dO_i · x_j) phi(k_j) + dO_i S_prev^T)
        dox = tl.where(causal, _mm(do, tl.trans(x), None, DOT_PRECISION, DOT_K), 0.0)  # (CHUNK, CHUNK)
        d_phi = _mm(dox, phi_k, None, DOT_PRECISION, DOT_K)
        d_phi = _mm(do, tl.trans(kv), d_phi, DOT_PRECISION, DOT_K) * gate[:, None]
        _store_rows(D_PHI_Q, start_tok + start, n_tok - start, num_heads * NDV * D, D, d_phi, CHUNK, BLOCK_D)
        kv = _mm(tl.trans(phi_k), x, kv, DOT_PRECISION, DOT_K)


@triton.jit
def _load_carry(CARRY, E_CARRY, chunk_row, num_heads, head, D: tl.constexpr, BLOCK_D: tl.constexpr):
    carry = CARRY + (chunk_row * num_heads + head) * 4 * D
    return (_load_vec(carry + 0 * D, BLOCK_D, D), _load_vec(carry + 1 * D, BLOCK_D, D),
            _load_vec(carry + 2 * D, BLOCK_D, D), _load_vec(carry + 3 * D, BLOCK_D, D),
            tl.load(E_CARRY + chunk_row * num_heads + head))


@triton.jit
def flow_attention_causal_bwd_state_kernel(
    Q, K, V, DO, GC, DV_OUT, D_COMP, D_PHI_K, CU,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, num_heads,
    D: tl.constexpr, DV: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    NDV: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_K: tl.constexpr,
):
    """Backward part b, grid (segments, heads, Dv blocks): chunks last to first, carrying this block's columns of
    R = sum_{i later} gate_i phi(q_i)^T dO_i; writes dv (final) and this block's partials of d comp_j = v_j · d x_j
    and of the step-4 part of d phi(k_j)."""
    seg = tl.program_id(0)
    head = tl.program_id(1)
    blk = tl.program_id(2)
    start_tok = tl.load(CU + seg)
    n_tok = tl.load(CU + seg + 1) - start_tok
    dv0 = blk * BLOCK_DV
    n_dv = DV - dv0
    Q += head * stride_qh
    K += head * stride_kh
    V += head * stride_vh + dv0
    DO += head * stride_doh + dv0
    GC += head * 2
    DV_OUT += head * DV + dv0
    D_COMP += head * NDV + blk
    D_PHI_K += (head * NDV + blk) * D
    offs_c = tl.arange(0, CHUNK)
    later = offs_c[:, None] <= offs_c[None, :]  # (CHUNK, CHUNK), rows j, columns i: i >= j

    # R^T for this block's columns: sum over later chunks of dO_i^T gate_i phi(q_i), kept transposed (the fp32
    # FMA dots of its update then need fewer registers: 0 instead of 4 B of spill at D128 on sm90)
    r_t = tl.zeros([BLOCK_DV, BLOCK_D], tl.float32)
    n_chunks = (n_tok + CHUNK - 1) // CHUNK
    for rev in range(0, n_chunks):
        start = (n_chunks - 1 - rev) * CHUNK
        phi_q, _ = _load_phi(Q, start_tok + start, n_tok - start, stride_qt, 0.0, CHUNK, BLOCK_D, D)
        phi_k, _ = _load_phi(K, start_tok + start, n_tok - start, stride_kt, 0.0, CHUNK, BLOCK_D, D)
        v = _load_rows(V, start_tok + start, n_tok - start, stride_vt, n_dv, CHUNK, BLOCK_DV)
        do = _load_rows(DO, start_tok + start, n_tok - start, stride_dot, n_dv, CHUNK, BLOCK_DV)
        gate = _load_tok(GC, start_tok + start, n_tok - start, num_heads * 2, CHUNK)
        competition = _load_tok(GC + 1, start_tok + start, n_tok - start, num_heads * 2, CHUNK)
        x = v * competition[:, None]  # (CHUNK, BLOCK_DV)
        gq = phi_q * gate[:, None]  # (CHUNK, BLOCK_D)

        # 4. key side of the causal product: d x_j = phi(k_j) R_j, d phi(k_j) = R_j x_j^T, R_j = sum_{i>=j} gq_i^T dO_i
        kq = tl.where(later, _mm(phi_k, tl.trans(gq), None, DOT_PRECISION, DOT_K), 0.0)  # (CHUNK_j, CHUNK_i)
        d_x = _mm(kq, do, None, DOT_PRECISION, DOT_K)
        d_x = _mm(phi_k, tl.trans(r_t), d_x, DOT_PRECISION, DOT_K)  # (CHUNK, BLOCK_DV)
        _store_tok(D_COMP, start_tok + start, n_tok - start, num_heads * NDV, tl.sum(d_x * v, 1), CHUNK)
        _store_rows(DV_OUT, start_tok + start, n_tok - start, num_heads * DV, n_dv, d_x * competition[:, None],
                    CHUNK, BLOCK_DV)
        xdo = tl.where(later, _mm(x, tl.trans(do), None, DOT_PRECISION, DOT_K), 0.0)  # (CHUNK_j, CHUNK_i)
        d_phi_k = _mm(xdo, gq, None, DOT_PRECISION, DOT_K)
        d_phi_k = _mm(x, r_t, d_phi_k, DOT_PRECISION, DOT_K)  # (CHUNK, BLOCK_D)
        _store_rows(D_PHI_K, start_tok + start, n_tok - start, num_heads * NDV * D, D, d_phi_k, CHUNK, BLOCK_D)
        r_t = _mm(tl.trans(do), gq, r_t, DOT_PRECISION, DOT_K)


@triton.jit
def flow_attention_causal_bwd_chain_kernel(
    Q, K, D_GATE, D_PHI_Q, D_COMP, D_PHI_K, CARRY, E_CARRY, DQ, DK, CU,
    stride_qt, stride_qh, stride_kt, stride_kh, num_heads, eps,
    D: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, NDV: tl.constexpr,
):
    """Backward part c, grid (segments, heads): chunks last to first, carrying the suffix sums of the scalar chain
    (D-vectors and one scalar; no D x Dv state, no dots); the Dv-block partials are summed in block order.
    Writes dq, dk."""
    seg = tl.program_id(0)
    head = tl.program_id(1)
    start_tok = tl.load(CU + seg)
    n_tok = tl.load(CU + seg + 1) - start_tok
    Q += head * stride_qh
    K += head * stride_kh
    D_GATE += head * NDV
    D_PHI_Q += head * NDV * D
    D_COMP += head * NDV
    D_PHI_K += head * NDV * D
    DQ += head * D
    DK += head * D
    offs_c = tl.arange(0, CHUNK)
    offs_d = tl.arange(0, BLOCK_D)
    eps_d = tl.where(offs_d < D, eps, 0.0)
    row0 = start_tok // CHUNK + seg
    tok = num_heads * NDV  # token stride of the scalar workspaces

    # suffix sums over all later chunks
    d_wq_suf = tl.zeros([BLOCK_D], tl.float32)
    d_wk_suf = tl.zeros([BLOCK_D], tl.float32)
    d_pre_q_suf = tl.zeros([BLOCK_D], tl.float32)  # gradients of the prefix sums of phi(q) / phi(k)
    d_pre_k_suf = tl.zeros([BLOCK_D], tl.float32)
    d_pre_e_suf = _fp32_zero(CHUNK)
    n_chunks = (n_tok + CHUNK - 1) // CHUNK
    for rev in range(0, n_chunks):
        c = n_chunks - 1 - rev
        start = c * CHUNK
        sum_q, sum_k, w_q, w_k, e_sum = _load_carry(CARRY, E_CARRY, row0 + c, num_heads, head, D, BLOCK_D)
        row_ok = start + offs_c < n_tok
        n = (start + offs_c + 1).to(tl.float32)
        phi_q, phi_q_eps = _load_phi(Q, start_tok + start, n_tok - start, stride_qt, eps, CHUNK, BLOCK_D, D)
        phi_k, phi_k_eps = _load_phi(K, start_tok + start, n_tok - start, stride_kt, eps, CHUNK, BLOCK_D, D)
        d_gate = _sum_parts_tok(D_GATE, start_tok + start, n_tok - start, tok, CHUNK, NDV)  # (CHUNK,)
        d_comp = _sum_parts_tok(D_COMP, start_tok + start, n_tok - start, tok, CHUNK, NDV)
        pre_q, pre_k, pre_wq, pre_wk, incoming, outgoing, source, allocation, e, pre_e, competition = \
            _causal_flows(phi_q, phi_q_eps, phi_k, phi_k_eps, n, row_ok, sum_q, sum_k, w_q, w_k, e_sum, eps_d)

        # 3. competition e_i / pre_e_i * n_i: direct term plus the suffix sum of d pre_e
        d_pre_e = -d_comp * competition / pre_e  # zero on masked rows (competition is)
        d_pre_e_in = d_pre_e_suf + tl.cumsum(d_pre_e, 0, reverse=True)  # sum over i >= j
        d_e = d_comp * n / pre_e + d_pre_e_in
        d_source = tl.where(row_ok & (source >= -1.0) & (source <= 1.0), d_e * e, 0.0)
        #    allocation = sigmoid(sink)
        d_sink = d_gate * incoming / n * allocation * (1.0 - allocation)

        # 2. conservation: source_i = (phi(k_i)+eps) · (pre_wq_i + eps) / n_i, sink likewise
        d_wq_i = phi_k_eps * (d_source / n)[:, None]  # (CHUNK, BLOCK_D): gradient of pre_wq_i
        d_wk_i = phi_q_eps * (d_sink / n)[:, None]
        d_wq_in = d_wq_suf[None, :] + tl.cumsum(d_wq_i, 0, reverse=True)  # gradient of phi(q_j) incoming_j
        d_wk_in = d_wk_suf[None, :] + tl.cumsum(d_wk_i, 0, reverse=True)
        d_incoming = d_gate * allocation / n + tl.sum(phi_q * d_wq_in, 1)
        d_outgoing = tl.sum(phi_k * d_wk_in, 1)

        # 1. flows: incoming_i = n_i / den_i, d den_i = -d incoming_i incoming_i^2 / n_i
        d_den_q = -d_incoming * incoming * incoming / n
        d_den_k = -d_outgoing * outgoing * outgoing / n
        d_pre_k_i = phi_q_eps * d_den_q[:, None]  # gradient of pre_k_i
        d_pre_q_i = phi_k_eps * d_den_k[:, None]

        d_phi_q = _sum_parts_rows(D_PHI_Q, start_tok + start, n_tok - start, tok * D, D, CHUNK, BLOCK_D, NDV)
        d_phi_q += d_sink[:, None] * (pre_wk + eps_d[None, :]) / n[:, None] + incoming[:, None] * d_wq_in
        d_phi_q += d_den_q[:, None] * (pre_k + eps_d[None, :])
        d_phi_q += d_pre_q_suf[None, :] + tl.cumsum(d_pre_q_i, 0, reverse=True)
        _store_rows(DQ, start_tok + start, n_tok - start, num_heads * D, D, d_phi_q * phi_q * (1.0 - phi_q),
                    CHUNK, BLOCK_D)
        d_phi_k = _sum_parts_rows(D_PHI_K, start_tok + start, n_tok - start, tok * D, D, CHUNK, BLOCK_D, NDV)
        d_phi_k += d_source[:, None] * (pre_wq + eps_d[None, :]) / n[:, None] + outgoing[:, None] * d_wk_in
        d_phi_k += d_den_k[:, None] * (pre_q + eps_d[None, :])
        d_phi_k += d_pre_k_suf[None, :] + tl.cumsum(d_pre_k_i, 0, reverse=True)
        _store_rows(DK, start_tok + start, n_tok - start, num_heads * D, D, d_phi_k * phi_k * (1.0 - phi_k),
                    CHUNK, BLOCK_D)

        d_wq_suf += tl.sum(d_wq_i, 0)
        d_wk_suf += tl.sum(d_wk_i, 0)
        d_pre_q_suf += tl.sum(d_pre_q_i, 0)
        d_pre_k_suf += tl.sum(d_pre_k_i, 0)
        d_pre_e_suf += tl.sum(d_pre_e, 0)


# ---------------------------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------------------------
class _Config(NamedTuple):
    block_n: int  # token block (non-causal) or chunk (causal) of the kernels with a D x Dv state
    block_dv: int  # Dv columns per program of those kernels (a power of two <= the padded Dv)
    num_warps: int  # their warps
    chain_n: int  # token block / chunk of the dot-free kernels (causal flows, the backward's chains)
    chain_warps: int  # their warps
    dot_k: int  # dots over a longer K run as several over K chunks of this size (`_mm`)
    num_stages: int = 1  # the loops run once or a few times: software pipelining would only cost registers
    chunk_tokens: int = 1024  # non-causal chunked path: tokens per chunk (work item)
    chunked_min_len: int = 1024  # automatic choice: chunked when the longest segment is longer than this


def _config(causal: bool, block_d: int, block_dv: int, dtype: torch.dtype) -> _Config:
    """One fixed config per shape class (nothing autotuned). The interpreter gets big blocks (fewer interpreted
    loop steps), no Dv split, the GPU's fp32 dot chunks in every dtype (so the tests run the chunked dots from
    D32 up), chunks of 64 tokens (tests span several) and the chunked path only past 256 tokens (the single-pass
    tests stay single-pass); on GPU see the module docstring (Tiles)."""
    if INTERPRET:
        return _Config(64 if causal else 128, block_dv, 4, 64 if causal else 128, 4, 16, chunk_tokens=64,
                       chunked_min_len=256)
    wide = max(block_d, block_dv) > 64  # D or Dv 128
    chain_n = 8 if block_d >= 64 else 16  # chain tiles of 4 (causal) / 8 elements per thread
    return _Config(block_n=16 if causal or wide else 32, block_dv=min(block_dv, 32), num_warps=8,
                   chain_n=chain_n if causal else 2 * chain_n, chain_warps=8 if block_d > 64 else 4,
                   dot_k=16 if dtype == torch.float32 else 128)


def _options(num_warps: int, num_stages: int) -> dict:
    """Launch options. maxnreg: the most registers per thread the block can have; without it ptxas capped some
    kernels at 128 registers and spilled."""
    return dict(num_warps=num_warps, num_stages=num_stages, maxnreg=min(255, 65536 // (32 * num_warps)))


class FlowState(NamedTuple):
    """What the non-causal backward reads: per (segment, head) float32 sums and the normalised D x Dv state."""
    vecs: torch.Tensor  # (S, H, 4, D): sum phi(q), sum phi(k), w_q, w_k
    kv: torch.Tensor  # (S, H, D, Dv): sum_j phi(k_j)^T v_j competition_j
    z: torch.Tensor  # (S, H): sum_j exp(source_j)


def _causal_flows_launch(q, k, cu_seqlens_q, eps, cfg: _Config, write_carry: bool):
    """Causal steps 1-3: per-token (gate, competition) `(total, H, 2)` float32 and, with write_carry, the running
    sums at every chain chunk's start (the chain kernel's restart points), else None, None."""
    total, heads, d = q.shape
    segments = cu_seqlens_q.numel() - 1
    gc = _alloc((total, heads, 2), torch.float32, q.device)
    carry = e_carry = gc  # unused without write_carry
    if write_carry:
        chunk_rows = total // cfg.chain_n + segments + 1  # bound on the chunk-row index, see the flows kernel
        carry = _alloc((chunk_rows, heads, 4, d), torch.float32, q.device)
        e_carry = _alloc((chunk_rows, heads), torch.float32, q.device)
    flow_attention_causal_flows_kernel[(segments, heads)](
        q, k, gc, carry, e_carry, cu_seqlens_q, q.stride(0), q.stride(1), k.stride(0), k.stride(1), heads, eps,
        D=d, CHUNK=cfg.chain_n, BLOCK_D=_head_block(d), WRITE_CARRY=write_carry,
        **_options(cfg.chain_warps, cfg.num_stages))
    return (gc, carry, e_carry) if write_carry else (gc, None, None)


def use_chunked(causal: bool, total_q: int, total_k: int, segments: int, max_seqlen: int | None = None,
                chunked: bool | None = None, cfg: _Config | None = None) -> bool:
    """The automatic choice between the single-pass and the chunked non-causal kernels, from host ints only.

    `chunked` True / False forces a path (True with causal is an error: causal has no chunked path). Otherwise
    chunked when the longest segment (q or kv) is longer than `chunked_min_len` (GPU 1024, interpreter 256):
    `max_seqlen` when the caller knows it, else the mean length cdiv(max(total_q, total_k), segments), a lower
    bound on the longest (a few long segments among many short ones keep the single pass then; no sync to find
    out). Short segments (gait: tens to hundreds of tokens) always keep the single pass."""
    if chunked is not None:
        if chunked and causal:
            raise ValueError("chunked=True: the causal flow attention has no chunked path")
        return bool(chunked)
    if causal:
        return False
    cfg = cfg or _config(False, 16, 16, torch.float32)  # chunk sizes do not depend on the head dims or dtype
    longest = max_seqlen if max_seqlen is not None else -(-max(total_q, total_k) // segments)
    return longest > cfg.chunked_min_len


class _Chunks(NamedTuple):
    """The chunked path's work items, (segment, chunk) pairs numbered segment by segment, built on the device."""
    items: int  # host bound on their count (the grid's first dim): programs past the real items exit at once
    item_seg: torch.Tensor  # (items,) int32: each item's segment; S past the real items
    cu_chunks: torch.Tensor  # (S + 1,) int32: first item of each segment


def _chunk_items(cu_seqlens_q, cu_seqlens_k, total_q: int, total_k: int, chunk: int) -> _Chunks:
    """Segment s has cdiv(max(Nq_s, Nk_s), chunk) chunks (chunk c: queries and keys c * chunk .. + chunk). Their
    prefix sum and a searchsorted give every item's segment without a host sync; the grid takes the bound
    sum_s cdiv(max, chunk) <= (sum_s max) / chunk + S, sum_s max <= total_q (one offsets tensor for both sides)
    or total_q + total_k."""
    segments = cu_seqlens_q.numel() - 1
    tokens = total_q if cu_seqlens_q is cu_seqlens_k else total_q + total_k  # >= sum_s max(Nq_s, Nk_s)
    items = tokens // chunk + segments
    lengths = torch.maximum(cu_seqlens_q.diff(), cu_seqlens_k.diff()).long()  # (S,)
    cu_chunks = torch.nn.functional.pad(((lengths + chunk - 1) // chunk).cumsum(0), (1, 0))  # (S + 1,)
    item_seg = torch.searchsorted(cu_chunks[1:], torch.arange(items, device=cu_chunks.device), right=True)
    return _Chunks(items, item_seg.to(torch.int32), cu_chunks.to(torch.int32))


def flow_attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, causal: bool, eps: float, *,
                       max_seqlen: int | None = None, chunked: bool | None = None):
    """Launch the forward. Returns (out `(total_q, H, Dv)` in q's dtype, FlowState or None when causal).
    `max_seqlen` (longest q or kv segment, optional) and `chunked` steer `use_chunked` (non-causal only)."""
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    total_q, heads, d = q.shape
    dv = v.shape[-1]
    segments = cu_seqlens_q.numel() - 1
    block_d = _head_block(d)
    cfg = _config(causal, block_d, _head_block(dv), q.dtype)
    chunked = use_chunked(causal, total_q, k.shape[0], segments, max_seqlen, chunked, cfg)
    out = _alloc((total_q, heads, dv), q.dtype, q.device)
    n_dv = triton.cdiv(dv, cfg.block_dv)
    grid = (segments, heads, n_dv)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1))
    meta = dict(D=d, DV=dv, BLOCK_D=block_d, BLOCK_DV=cfg.block_dv, DOT_PRECISION=_dot_precision(q.dtype),
                DOT_K=cfg.dot_k, **_options(cfg.num_warps, cfg.num_stages))
    if causal:
        gc, _, _ = _causal_flows_launch(q, k, cu_seqlens_q, eps, cfg, write_carry=False)
        flow_attention_causal_fwd_kernel[grid](q, k, v, out, gc, cu_seqlens_q, *strides, heads, CHUNK=cfg.block_n,
                                               **meta)
        return out, None
    state = FlowState(_alloc((segments, heads, 4, d), torch.float32, q.device),
                      _alloc((segments, heads, d, dv), torch.float32, q.device),
                      _alloc((segments, heads), torch.float32, q.device))
    if not chunked:
        flow_attention_fwd_kernel[grid](q, k, v, out, state.vecs, state.kv, state.z, cu_seqlens_q, cu_seqlens_k,
                                        *strides, heads, eps, BLOCK_N=cfg.block_n, **meta)
        return out, state
    # chunked: sums of phi -> w_q, w_k -> state and z -> outputs, each sum reduced over chunks in between
    ch = _chunk_items(cu_seqlens_q, cu_seqlens_k, total_q, k.shape[0], cfg.chunk_tokens)
    p_vecs = _alloc((ch.items, heads, 4, d), torch.float32, q.device)  # per-item parts of the four D-vectors
    p_kv = _alloc((ch.items, heads, d, dv), torch.float32, q.device)  # per-item unnormalised state
    p_z = _alloc((ch.items, heads), torch.float32, q.device)
    items = (ch.item_seg, ch.cu_chunks, cu_seqlens_q, cu_seqlens_k)
    vec_meta = dict(D=d, BLOCK_N=cfg.chain_n, BLOCK_D=block_d, **_options(cfg.chain_warps, cfg.num_stages))
    reduce_meta = dict(D=d, BLOCK_D=block_d, **_options(cfg.chain_warps, cfg.num_stages))
    for phase in (0, 1):
        flow_attention_chunk_vecs_kernel[(ch.items, heads)](
            q, k, state.vecs, p_vecs, *items, *strides[:4], heads, segments, cfg.chunk_tokens, eps, PHASE=phase,
            **vec_meta)
        flow_attention_chunk_reduce_kernel[(segments, heads)](p_vecs, state.vecs, ch.cu_chunks, heads, 2 * phase,
                                                              2, **reduce_meta)
    chunk_args = (q, k, v, out, state.vecs, state.kv, p_kv, p_z, *items, *strides, heads, segments,
                  cfg.chunk_tokens, eps)
    flow_attention_chunk_fwd_kernel[(ch.items, heads, n_dv)](*chunk_args, BLOCK_N=cfg.block_n, PART=0, **meta)
    flow_attention_chunk_state_reduce_kernel[grid](
        p_kv, p_z, state.kv, state.z, state.kv, state.z, ch.cu_chunks, cu_seqlens_k, heads, D=d, DV=dv,
        BLOCK_D=block_d, BLOCK_DV=cfg.block_dv, NDV=n_dv, BACKWARD=False, **_options(cfg.num_warps, cfg.num_stages))
    flow_attention_chunk_fwd_kernel[(ch.items, heads, n_dv)](*chunk_args, BLOCK_N=cfg.block_n, PART=1, **meta)
    return out, state


def flow_attention_bwd(do, q, k, v, cu_seqlens_q, cu_seqlens_k, state: FlowState | None, causal: bool,
                       eps: float, *, max_seqlen: int | None = None, chunked: bool | None = None):
    """Launch the backward. Returns dq, dk, dv in the inputs' dtype (contiguous). `max_seqlen` and `chunked` as in
    `flow_attention_fwd` (either path reads the same FlowState)."""
    do, q, k, v = (_last_dim_contiguous(x) for x in (do, q, k, v))
    total_q, heads, d = q.shape
    total_k, dv_dim = k.shape[0], v.shape[-1]
    segments = cu_seqlens_q.numel() - 1
    block_d = _head_block(d)
    cfg = _config(causal, block_d, _head_block(dv_dim), q.dtype)
    chunked = use_chunked(causal, total_q, total_k, segments, max_seqlen, chunked, cfg)
    n_dv = triton.cdiv(dv_dim, cfg.block_dv)
    dq = _alloc((total_q, heads, d), q.dtype, q.device)
    dk = _alloc((total_k, heads, d), k.dtype, k.device)
    dv = _alloc((total_k, heads, dv_dim), v.dtype, v.device)
    # float32 per-Dv-block partials of the sums over Dv (summed in block order by the chain kernel)
    d_gate = _alloc((total_q, heads, n_dv), torch.float32, q.device)
    d_phi_q = _alloc((total_q, heads, n_dv, d), torch.float32, q.device)
    d_comp = _alloc((total_k, heads, n_dv), torch.float32, q.device)
    d_phi_k = _alloc((total_k, heads, n_dv, d), torch.float32, q.device)
    grid = (segments, heads, n_dv)
    chain_grid = (segments, heads)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
               do.stride(0), do.stride(1))
    qk_strides = strides[:4]
    meta = dict(D=d, DV=dv_dim, BLOCK_D=block_d, BLOCK_DV=cfg.block_dv, NDV=n_dv,
                DOT_PRECISION=_dot_precision(q.dtype), DOT_K=cfg.dot_k, **_options(cfg.num_warps, cfg.num_stages))
    chain_meta = dict(D=d, BLOCK_D=block_d, NDV=n_dv, **_options(cfg.chain_warps, cfg.num_stages))
    if not causal and not chunked:
        s_dot = _alloc((segments, heads, n_dv), torch.float32, q.device)
        flow_attention_bwd_state_kernel[grid](
            q, k, v, do, dv, state.vecs, state.kv, state.z, cu_seqlens_q, cu_seqlens_k, d_gate, d_phi_q, d_comp,
            d_phi_k, s_dot, *strides, heads, eps, BLOCK_N=cfg.block_n, **meta)
        flow_attention_bwd_chain_kernel[chain_grid](
            q, k, dq, dk, state.vecs, state.z, cu_seqlens_q, cu_seqlens_k, d_gate, d_phi_q, d_comp, d_phi_k, s_dot,
            *qk_strides, heads, eps, BLOCK_N=cfg.chain_n, **chain_meta)
        return dq, dk, dv
    if chunked:
        # queries (partial dS) -> dS and <dS, S> -> keys -> the chain's four passes, sums reduced in between
        ch = _chunk_items(cu_seqlens_q, cu_seqlens_k, total_q, total_k, cfg.chunk_tokens)
        s_dot = _alloc((segments, heads, n_dv), torch.float32, q.device)
        ds = _alloc((segments, heads, d, dv_dim), torch.float32, q.device)
        p_ds = _alloc((ch.items, heads, d, dv_dim), torch.float32, q.device)  # per-item parts of dS
        g_vecs = _alloc((segments, heads, 4, d), torch.float32, q.device)  # d w_k, d w_q, d sum phi(q), (k)
        p_g_vecs = _alloc((ch.items, heads, 4, d), torch.float32, q.device)
        items = (ch.item_seg, ch.cu_chunks, cu_seqlens_q, cu_seqlens_k)
        state_args = (q, k, v, do, dv, state.vecs, state.kv, state.z, ds, p_ds, *items, d_gate, d_phi_q, d_comp,
                      d_phi_k, *strides, heads, segments, cfg.chunk_tokens, eps)
        flow_attention_chunk_bwd_state_kernel[(ch.items, heads, n_dv)](*state_args, BLOCK_N=cfg.block_n, PART=0,
                                                                       **meta)
        flow_attention_chunk_state_reduce_kernel[grid](
            p_ds, state.z, state.kv, state.z, ds, s_dot, ch.cu_chunks, cu_seqlens_k, heads, D=d, DV=dv_dim,
            BLOCK_D=block_d, BLOCK_DV=cfg.block_dv, NDV=n_dv, BACKWARD=True,
            **_options(cfg.num_warps, cfg.num_stages))
        flow_attention_chunk_bwd_state_kernel[(ch.items, heads, n_dv)](*state_args, BLOCK_N=cfg.block_n, PART=1,
                                                                       **meta)
        chain_args = (q, k, dq, dk, state.vecs, state.z, g_vecs, p_g_vecs, *items, d_gate, d_phi_q, d_comp, d_phi_k,
                      s_dot, *qk_strides, heads, segments, cfg.chunk_tokens, eps)
        reduce_meta = dict(D=d, BLOCK_D=block_d, **_options(cfg.chain_warps, cfg.num_stages))
        # the D-vector slots each pass sums (reduced before the next pass reads them): d w_k; d w_q, d sum
        # phi(q); d sum phi(k); none
        for chain_pass, slots in zip((1, 2, 3, 4), ((0, 1), (1, 2), (3, 1), None)):
            flow_attention_chunk_bwd_chain_kernel[(ch.items, heads)](*chain_args, BLOCK_N=cfg.chain_n,
                                                                     PASS=chain_pass, **chain_meta)
            if slots is not None:
                flow_attention_chunk_reduce_kernel[chain_grid](p_g_vecs, g_vecs, ch.cu_chunks, heads, *slots,
                                                               **reduce_meta)
        return dq, dk, dv
    gc, carry, e_carry = _causal_flows_launch(q, k, cu_seqlens_q, eps, cfg, write_carry=True)
    flow_attention_causal_bwd_scan_kernel[grid](
        q, k, v, do, gc, d_gate, d_phi_q, cu_seqlens_q, *strides, heads, CHUNK=cfg.block_n, **meta)
    flow_attention_causal_bwd_state_kernel[grid](
        q, k, v, do, gc, dv, d_comp, d_phi_k, cu_seqlens_q, *strides, heads, CHUNK=cfg.block_n, **meta)
    flow_attention_causal_bwd_chain_kernel[chain_grid](
        q, k, d_gate, d_phi_q, d_comp, d_phi_k, carry, e_carry, dq, dk, cu_seqlens_q, *qk_strides, heads, eps,
        CHUNK=cfg.chain_n, **chain_meta)
    return dq, dk, dv


class FlowAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, causal, eps, max_seqlen, chunked):
        out, state = flow_attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, eps, max_seqlen=max_seqlen,
                                        chunked=chunked)
        ctx.save_for_backward(q, k, v, cu_seqlens_q, cu_seqlens_k, *(state if state is not None else ()))
        ctx.causal, ctx.eps, ctx.max_seqlen, ctx.chunked = causal, eps, max_seqlen, chunked
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, cu_seqlens_q, cu_seqlens_k, *state = ctx.saved_tensors
        dq, dk, dv = flow_attention_bwd(grad_out, q, k, v, cu_seqlens_q, cu_seqlens_k,
                                        FlowState(*state) if state else None, ctx.causal, ctx.eps,
                                        max_seqlen=ctx.max_seqlen, chunked=ctx.chunked)
        return dq, dk, dv, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------------------------
# public function
# ---------------------------------------------------------------------------------------------------------------
def _check_cu_seqlens(name: str, cu: torch.Tensor, total: int, device: torch.device) -> None:
    if not isinstance(cu, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(cu).__name__}")
    if cu.dtype != torch.int32:
        raise ValueError(f"{name} must have dtype torch.int32, got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{name} must have shape (S + 1,) with S >= 1, got {tuple(cu.shape)}")
    if cu.device != device:
        raise ValueError(f"{name} must be on the inputs' device {device}, got {cu.device}")


def _check_cu_values(name: str, cu: torch.Tensor, total: int) -> list[int]:
    values = cu.tolist()
    if values[0] != 0 or values[-1] != total:
        raise ValueError(f"{name} must start at 0 and end at the token count {total}, got {values[0]} .. "
                         f"{values[-1]}")
    lengths = [b - a for a, b in zip(values, values[1:])]
    if min(lengths) < 1:
        raise ValueError(f"{name} must give segments of length >= 1, got a length {min(lengths)}")
    return lengths


def flow_attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                          cu_seqlens_k: torch.Tensor, *, causal: bool = False, eps: float = DEFAULT_EPS,
                          check_values: bool = True, chunked: bool | None = None) -> torch.Tensor:
    """Flowformer flow attention (phi = sigmoid) on packed segments; differentiable in q, k, v.

    q `(total_q, H, D)`, k `(total_k, H, D)`, v `(total_k, H, Dv)`, int32 `cu_seqlens_q` / `cu_seqlens_k`
    `(S + 1,)`: query segment i with key/value segment i. causal=True needs equal q/kv segments. Returns
    `(total_q, H, Dv)` in q's dtype, computed in float32 (TF32 dot operands for fp16 / bf16 inputs, see the module
    docstring). `check_values=False` skips the checks that read the offsets back to the host (a sync): for
    callers whose offsets are already validated. `chunked` (non-causal): None chooses between the single-pass and
    the chunked kernels (`use_chunked`: with check_values, from the longest segment, else from the mean length);
    True / False forces one (True with causal=True is a ValueError).
    """
    check_packed_qkv(q, k, v)
    if q.shape[0] < 1 or k.shape[0] < 1 or q.shape[1] < 1:
        raise ValueError(f"need at least one token and one head, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device)
    _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device)
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k give different segment counts: "
                         f"{cu_seqlens_q.numel() - 1} and {cu_seqlens_k.numel() - 1}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a float > 0, got {eps!r}")
    if causal and q.shape[0] != k.shape[0]:
        raise ValueError(f"causal flow attention needs equal q/kv segments, got {q.shape[0]} query and "
                         f"{k.shape[0]} key tokens")
    if chunked is not None and not isinstance(chunked, bool):
        raise ValueError(f"chunked must be None, True or False, got {chunked!r}")
    if chunked and causal:
        raise ValueError("chunked=True: the causal flow attention has no chunked path")
    max_seqlen = None
    if check_values and not torch.compiler.is_compiling():
        q_lengths = _check_cu_values("cu_seqlens_q", cu_seqlens_q, q.shape[0])
        kv_lengths = _check_cu_values("cu_seqlens_k", cu_seqlens_k, k.shape[0])
        if causal and q_lengths != kv_lengths:
            raise ValueError(f"causal flow attention needs equal q/kv segment lengths, got {q_lengths} and "
                             f"{kv_lengths}")
        max_seqlen = max(q_lengths + kv_lengths)  # already on the host: the exact longest segment
    return FlowAttentionFunction.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, bool(causal), float(eps), max_seqlen,
                                       chunked)
