"""Fused softmax attention on packed variable-length segments (FlashAttention-2 style), forward and backward.

Layouts
    q `(total_q, H, D)`, k `(total_k, H, D)`, v `(total_k, H, Dv)`, out `(total_q, H, Dv)`: segments back to back,
    last dim contiguous (other strides are free). `cu_seqlens_q` / `cu_seqlens_k` are int32 `(S + 1,)` offsets.
    Query segment i attends to key/value segment `kv_index[i]` (default: segment i), so any list of
    (query segment, key/value segment) pairs runs in one launch, and one key/value segment may serve several
    query segments (the model's part pairs have their own key projections, so it passes the identity). The
    log-sum-exp of each query row is kept for the backward as `lse (H, total_q)` float32, natural log.
    Padded sequences (`padded_attention_fwd / bwd`, the model's calls when sequences have lengths): q, k, v
    `(S*N, H, D)` views of the fused projections, sequence s at rows s*N onwards with int32 `lengths (S,)`; the
    constexpr `PADDED` makes the kernels take (start, rows) = (s*N, lengths[s]) instead of the offsets, and every
    one of the N rows of the output and of dq / dk / dv is written (zeros in the padding, which the model needs):
    nothing is packed around the kernels. Self-attention only (identity pairs, one lengths array).

Two ways to give rows to blocks (one set of kernels; the constexpr `PACK_ROWS` switches the prologue and mask)
    per segment: a block holds rows of one segment; any `kv_index`. A segment shorter than the tile leaves the
        rest of its tile masked.
    packed rows: a block holds BLOCK consecutive rows of all segments back to back (`total_q` rows for queries,
        `total_k` for keys). Only for an identity `kv_index` (query segment i attends to key/value segment i;
        lengths may differ): a block's rows span segments s_first..s_last, whose keys (queries, for dK/dV) are
        then one contiguous range `[cu_k[s_first], cu_k[s_last + 1])`, looped over in blocks. Scores are masked
        block-diagonally, `segment(row) == segment(key)`, from per-token segment ids (int32, searchsorted over
        `cu_seqlens` on the device: no host sync).
    Automatic choice (`pack_rows=None`): packed rows iff kv_index is the identity and every packed row tile holds
    at least two segments of the longest length: max_seqlen_q <= BLOCK_M / 2 (query tile of the forward / dQ) and
    max_seqlen_k <= BLOCK_N / 2 (key tile of dK/dV) of `_packed_config`, i.e. both <= 128 under the interpreter
    (256-row tiles), both <= 32 on a GPU (64-row tiles; fp32: <= 16 with 32-row tiles, <= 8 at head dim 128).
    Long segments and any other kv_index: per segment. `pack_rows=True` / `False` forces a mode (True still needs
    the identity).

Persistent grids: only real work is launched
    A launch's work units are (row block, head) pairs, the head minor (programs side by side read all heads of a
    token row). Per segment the row blocks come from a work table built on the device without a host sync
    (`_work_items`): a stable descending sort of the segment lengths, a prefix sum of their block counts and one
    searchsorted give every item its (segment, block), longest segment first; the real item count stays on the
    device, where the kernels read their loop bound. When every segment is full length (host ints say so) the
    items are arithmetic and nothing is built. A launch runs `_num_programs` programs (at most PROGRAMS_PER_SM per
    SM, and at most a lower bound on the real units, `cdiv(total, BLOCK) * H`), each looping over units
    `pid, pid + programs, ...`: no program is idle, and the longest segments start first. Identity kv_index
    and shared q / k offsets (self-attention) are compile-time switches (`IDENTITY_KV`, `SHARED_OFFSETS`): a
    unit's prologue then reads the work table and one pair of offsets, nothing more, before its tile loads.

Forward, per (query block, head) unit:
    1. load the query tile `(BLOCK_M, D)` (when the whole key segment fits one key tile, `ONE_KEY_BLOCK`, its K and
       V tiles are loaded beside it and there is no key loop);
    2. for each key block of the block's key range: scores `s = q k^T * scale` in fp32 (keys outside the row's
       segment -> -inf), new running max `m`, rescale the running sum `l` and accumulator `acc` by
       `exp(m_old - m)`, add `exp(s - m)` and `exp(s - m) v` (online softmax; exponentials in base 2 with the scale
       folded into one multiply). A key block may hold no key of a row's segment (packed rows, or an empty key
       segment: `m = -inf`); the exponentials then use 0 in place of `m`, so they are 0, not NaN;
    3. `out = acc / l`, `lse = m + log(l)`; a row whose key/value segment is empty (`l = 0`) gets `out = 0` and
       `lse = 0`, which the backward never uses (all its scores are masked).
Backward, one of three (`backward=None` chooses, `_choose_backward`):
    one pass (`varlen_attention_bwd_fused_kernel`): identity kv_index and every segment within one tile
        (`_fused_tile`: 64 tokens in fp16 / bf16 up to head dim 64, 32 in fp32 up to head dim 32, 128 under the
        interpreter). A (segment, head) unit loads Q, K, V, O, dO and LSE once, computes delta = rowsum(dO * O)
        in registers and runs 5 matmuls (S = Q K^T, dP = dO V^T, dV = P^T dO, dK = dS^T Q, dQ = dS K) with one
        exponential per score, then writes dQ, dK, dV once. Units longest segment first.
    one launch per (segment, head) (`varlen_attention_bwd_segment_kernel`, "segment"): identity kv_index, any
        length, chosen when the (segment, head) units are enough to give every program of the persistent grid one
        (gait batches: thousands). A unit computes dK / dV per key block, streaming its query blocks, then dQ per
        query block, streaming its key blocks; delta = rowsum(dO * O) is recomputed from the O / dO tiles. Its
        re-reads stay inside one unit (L2), so each input leaves HBM once: no preprocess pass, no second launch.
    three kernels ("split": few long segments, where (segment, head) units cannot fill the GPU, or any other
        kv_index):
    1. preprocess: `delta = rowsum(dO * O)` per query row `(H, total_q)`;
    2. dK/dV: one unit per (key block, head) keeps its K/V tile and dK/dV accumulators in registers and loops
       over the query blocks that read it. Per segment: every query block of every query segment that maps to
       its key/value segment, from the inverse map (key/value segment -> query segments) as a CSR array built on
       the device with a sort, so shared key/value segments need no atomics (the identity needs no map). Packed
       rows: the contiguous query range of its key segments;
    3. dQ: one unit per (query block, head) loops over the key blocks of its key range, as in the forward.
    Recomputes `p = exp(s - lse)` (0 where masked), `dS = p * (dO v^T - delta)`, `dV = p^T dO`,
    `dK = dS^T q * scale`, `dQ = dS k * scale`. Each output element is written by exactly one unit with a fixed
    loop order, in every mode: the backward is deterministic (bitwise reproducible) by construction; there is no
    atomic path.

Tiles: `_config` (per segment), `_packed_config`, `_fused_config`, `_segment_config`; a tuned table for the GPU
    architecture (`kernels/tuning.py`, `bpmt-fast bench tune`) overrides the defaults when it has an entry (the
    automatic row-mode choice and packed fp32 tiles always use the defaults); the interpreter keeps one fixed
    configuration. The cost model (`bpmt-fast bench model`) counts what these choices launch.

Limits
    fp32 / fp16 / bf16; head dims 1..128 (tiles are padded to a power of two >= 16 and masked); non-causal only;
    CUDA, or CPU tensors under the Triton interpreter (TRITON_INTERPRET=1), where bf16 `tl.dot` is wrong and
    therefore unsupported. Empty segments are allowed: a query segment whose key/value segment is empty gets
    zero output and zero gradients. `max_seqlen_q/k` must bound the segments (checked unless
    `check_values=False`), or some rows are left unwritten (per segment the work table is sized from them; packed
    rows cover `total_q` and `total_k` whatever the max lengths, which then only steer the automatic choices).
    Packed rows are correct for any lengths, but a block's key range spans all segments its rows touch: empty
    query segments between them, or keys much longer than queries, widen it (the automatic rule bounds both
    lengths, not their ratio). Grids are 1-D and persistent, so no CUDA grid-axis limit applies to S * H.

Differences from the reference (`bpmt_fast.reference.softmax`)
    No `(Nq, Nk)` score matrix is stored: softmax is computed blockwise online, so results differ by rounding
    order only. Matmul inputs stay in the input dtype (fp16/bf16 probabilities are rounded to that dtype before
    `p v`, as in FlashAttention), accumulation is fp32, fp32 matmuls use IEEE precision (no TF32). The LSE is
    saved so the backward recomputes probabilities instead of storing them.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .common import DOT_PRECISION, INTERPRET, check_packed_qkv
from .common import head_block as _head_block, last_dim_contiguous as _last_dim_contiguous
from .tuning import tuned_config

LOG2E = 1.4426950408889634  # exp(x) == exp2(x * LOG2E)
# Packed-rows tile (rows and keys) under the interpreter; segments up to half of it are packed automatically.
PACKED_BLOCK_INTERPRET = 256


def _alloc(shape, dtype, device) -> torch.Tensor:
    """Every buffer a kernel writes is allocated here, so tests can poison them (NaN-fill) in one place."""
    return torch.empty(shape, dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _load_tile(ptr, rows, stride_t, head_offset, cols, row_mask, col_limit):
    """Tile `(len(rows), len(cols))` of a `(T, H, D)` tensor at one head (`head_offset` = head * head stride),
    in its dtype: rows outside `row_mask` and lanes from `col_limit` on read as 0."""
    return tl.load(ptr + rows[:, None] * stride_t + head_offset + cols[None, :],
                   mask=row_mask[:, None] & (cols[None, :] < col_limit), other=0.0)


@triton.jit
def _store_tile(ptr, rows, stride_t, head_offset, cols, value, row_mask, col_limit):
    """Store `value` (cast to the tensor's dtype) into the tile `_load_tile` would read."""
    tl.store(ptr + rows[:, None] * stride_t + head_offset + cols[None, :], value.to(ptr.dtype.element_ty),
             mask=row_mask[:, None] & (cols[None, :] < col_limit))


@triton.jit
def _segment_span(CU, seg, padded_n, PADDED: tl.constexpr):
    """(first row, rows) of a segment: from packed offsets `CU (S + 1,)`, or, PADDED, rows seg * N onwards of
    padded sequences whose lengths `CU (S,)` holds."""
    if PADDED:
        start = seg * padded_n
        length = tl.load(CU + seg)
    else:
        start = tl.load(CU + seg)
        length = tl.load(CU + seg + 1) - start
    return start, length


@triton.jit
def _segment_unit(unit, num_heads, ORDER, CU_Q, CU_K, padded_n, SORTED: tl.constexpr,
                  SHARED_OFFSETS: tl.constexpr, PADDED: tl.constexpr):
    """(head, q start, q rows, k start, k rows) of a (segment, head) unit of the one-launch backwards; SORTED: the
    segments in `ORDER` (the most work first, so the last trips are the short ones)."""
    item = unit // num_heads
    head = unit % num_heads
    if SORTED:
        seg = tl.load(ORDER + item)
    else:
        seg = item
    q_start, q_len = _segment_span(CU_Q, seg, padded_n, PADDED)
    if SHARED_OFFSETS:
        k_start = q_start
        k_len = q_len
    else:
        k_start, k_len = _segment_span(CU_K, seg, padded_n, PADDED)
    return head, q_start, q_len, k_start, k_len


@triton.jit
def _work_unit(unit, num_heads, CU, WORK, blocks_per_segment, total, padded_n,
               PACK_ROWS: tl.constexpr, UNIFORM: tl.constexpr, PADDED: tl.constexpr):
    """Work unit -> (segment, head, row block, first row, rows) of one program's loop trip.

    Units are (item, head) with the head minor, so programs running side by side read all heads of a token row.
    Items: packed rows -> the row block itself (segment 0, unused); UNIFORM (every segment has the same number
    of blocks) -> arithmetic; else row (segment, block) of the device-built work table (longest segment first)."""
    item = unit // num_heads
    head = unit % num_heads
    if PACK_ROWS:  # the rows of all segments back to back form one range
        seg = item * 0
        block = item
        start = item * 0
        length = item * 0 + total
    else:
        if UNIFORM:
            seg = item // blocks_per_segment
            block = item % blocks_per_segment
        else:
            seg = tl.load(WORK + 2 * item)
            block = tl.load(WORK + 2 * item + 1)
        start, length = _segment_span(CU, seg, padded_n, PADDED)
    return seg, head, block, start, length


@triton.jit
def _key_range(seg, q_start, q_len, first_row, total_q, CU_K, KV_INDEX, SEG_Q, BLOCK_M: tl.constexpr,
               PACK_ROWS: tl.constexpr, IDENTITY_KV: tl.constexpr, SHARED_OFFSETS: tl.constexpr):
    """(first key, keys) a query block reads. Packed rows: the keys of the segments its rows span (identity);
    per segment: its key/value segment, with no index load for the identity and no offset load when q and k
    share their offsets (self-attention: the prologue's dependent global reads are what a short program waits on).
    """
    if PACK_ROWS:
        s_first = tl.load(SEG_Q + first_row)
        s_last = tl.load(SEG_Q + tl.minimum(first_row + BLOCK_M, total_q) - 1)
        k_start = tl.load(CU_K + s_first)
        k_len = tl.load(CU_K + s_last + 1) - k_start
    else:
        if IDENTITY_KV and SHARED_OFFSETS:
            k_start = q_start
            k_len = q_len
        else:
            if IDENTITY_KV:
                kv_seg = seg
            else:
                kv_seg = tl.load(KV_INDEX + seg)
            k_start = tl.load(CU_K + kv_seg)
            k_len = tl.load(CU_K + kv_seg + 1) - k_start
    return k_start, k_len


@triton.jit
def _work_count(WORK_COUNT, num_units, num_heads, COUNTED: tl.constexpr):
    """Units of the launch: the device-side item count times heads (no host sync), or a host int."""
    if COUNTED:
        return tl.load(WORK_COUNT) * num_heads
    else:
        return num_units


@triton.jit
def varlen_attention_fwd_kernel(
    Q, K, V, O, LSE, CU_Q, CU_K, KV_INDEX, SEG_Q, SEG_K, WORK, WORK_COUNT,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    total_q, num_heads, num_units, blocks_per_segment, num_programs, padded_n, qk_scale,  # scale * log2(e)
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PACK_ROWS: tl.constexpr, UNIFORM: tl.constexpr,
    COUNTED: tl.constexpr, IDENTITY_KV: tl.constexpr, SHARED_OFFSETS: tl.constexpr, ONE_KEY_BLOCK: tl.constexpr,
    PADDED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    n_units = _work_count(WORK_COUNT, num_units, num_heads, COUNTED)
    for unit in range(tl.program_id(0), n_units, num_programs):  # persistent: every unit is real work
        seg, head, block, q_start, q_len = _work_unit(unit, num_heads, CU_Q, WORK, blocks_per_segment, total_q,
                                                      padded_n, PACK_ROWS, UNIFORM, PADDED)
        k_start, k_len = _key_range(seg, q_start, q_len, block * BLOCK_M, total_q, CU_K, KV_INDEX, SEG_Q, BLOCK_M,
                                    PACK_ROWS, IDENTITY_KV, SHARED_OFFSETS)
        offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = offs_m < q_len
        rows = (q_start + offs_m).to(tl.int64)  # int64: token * stride can pass 2^31 on big batches
        if PADDED:  # blocks cover all N padded rows, so the padding gets its zeros; a padding-only block skips keys
            row_store = offs_m < padded_n
            k_len = tl.where(block * BLOCK_M < q_len, k_len, 0)
        else:
            row_store = row_ok
        if ONE_KEY_BLOCK:  # the whole key segment is one tile: issue the K / V loads beside Q's, no loop
            col_ok = offs_n < k_len
            keys = (k_start + offs_n).to(tl.int64)
            k = _load_tile(K, keys, stride_kt, head * stride_kh, offs_d, col_ok, HEAD_DIM)  # (BLOCK_N, BLOCK_D)
            v = _load_tile(V, keys, stride_vt, head * stride_vh, offs_dv, col_ok, HEAD_DIM_V)  # (BLOCK_N, BLOCK_DV)
        q = _load_tile(Q, rows, stride_qt, head * stride_qh, offs_d, row_ok, HEAD_DIM)  # (BLOCK_M, BLOCK_D)
        if ONE_KEY_BLOCK:
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
            s = tl.where(col_ok[None, :], s, float("-inf"))
            m_i = tl.max(s, 1)
            m_ref = tl.where(m_i == float("-inf"), 0.0, m_i)  # an empty key segment: all -inf, p = 0, no NaN
            p = tl.exp2(s - m_ref[:, None])
            l_i = tl.sum(p, 1)
            acc = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_DV)
        else:
            if PACK_ROWS:
                row_seg = tl.load(SEG_Q + rows, mask=row_ok, other=-1)  # (BLOCK_M,); -1 matches no key
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max, base-2 scaled scores
            l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2(s - m_i)
            acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
            for start_n in range(0, k_len, BLOCK_N):
                cols = start_n + offs_n
                col_ok = cols < k_len
                keys = (k_start + cols).to(tl.int64)
                k = _load_tile(K, keys, stride_kt, head * stride_kh, offs_d, col_ok, HEAD_DIM)  # (BLOCK_N, BLOCK_D)
                v = _load_tile(V, keys, stride_vt, head * stride_vh, offs_dv, col_ok, HEAD_DIM_V)  # (BLOCK_N, BLOCK_DV)
                s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
                if PACK_ROWS:
                    # Block-diagonal mask: a row sees the keys of its own segment only (-2 past the range matches no
                    # row). A block may hold none of a row's keys (m_new = -inf): exponentiate against 0 then, not
                    # -inf, so no exp2(-inf - -inf) NaN appears; p and alpha are 0 for such rows until their keys come.
                    col_seg = tl.load(SEG_K + keys, mask=col_ok, other=-2)
                    s = tl.where(row_seg[:, None] == col_seg[None, :], s, float("-inf"))
                    m_new = tl.maximum(m_i, tl.max(s, 1))
                    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
                else:
                    # Every block holds at least one valid key, so m_new is finite: no exp2(-inf - -inf) NaN.
                    s = tl.where(col_ok[None, :], s, float("-inf"))
                    m_new = tl.maximum(m_i, tl.max(s, 1))
                    m_ref = m_new
                alpha = tl.exp2(m_i - m_ref)  # 0 on the first block (m_i = -inf)
                p = tl.exp2(s - m_ref[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
                m_i = m_new

        # has_keys is False only for an empty key/value segment (and padding rows): zero output, lse 0 (never read)
        has_keys = (l_i > 0) & row_ok
        out = tl.where(has_keys[:, None], acc / tl.where(has_keys, l_i, 1.0)[:, None], 0.0)
        lse = tl.where(has_keys, (m_i + tl.log2(tl.where(has_keys, l_i, 1.0))) * 0.6931471805599453, 0.0)  # * ln 2
        _store_tile(O, rows, stride_ot, head * stride_oh, offs_dv, out, row_store, HEAD_DIM_V)
        tl.store(LSE + head * total_q + rows, lse, mask=row_store)


@triton.jit
def varlen_attention_bwd_fused_kernel(
    Q, K, V, O, DO, LSE, DQ, DK, DV, CU_Q, CU_K, ORDER,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_dot, stride_doh,
    stride_dqt, stride_dqh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    total_q, num_heads, num_units, num_programs, padded_n, scale, qk_scale,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, SORTED: tl.constexpr, SHARED_OFFSETS: tl.constexpr,
    PADDED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One-pass backward: one (segment, head) per loop trip, the whole segment in one tile (identity kv_index).

    Loads Q, K, V, O, dO, LSE once, writes dQ, dK, dV once: delta = rowsum(dO * O) in registers, then 5 matmuls
    (S = Q K^T, dP = dO V^T, dV = P^T dO, dK = dS^T Q, dQ = dS K) and one exponential per score. Every output
    element has one writer and a fixed order: deterministic, no atomics."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    for unit in range(tl.program_id(0), num_units, num_programs):
        head, q_start, q_len, k_start, k_len = _segment_unit(unit, num_heads, ORDER, CU_Q, CU_K, padded_n, SORTED,
                                                             SHARED_OFFSETS, PADDED)
        row_ok = offs_m < q_len
        col_ok = offs_n < k_len
        rows = (q_start + offs_m).to(tl.int64)
        keys = (k_start + offs_n).to(tl.int64)
        q = _load_tile(Q, rows, stride_qt, head * stride_qh, offs_d, row_ok, HEAD_DIM)  # (BLOCK_M, BLOCK_D)
        k = _load_tile(K, keys, stride_kt, head * stride_kh, offs_d, col_ok, HEAD_DIM)  # (BLOCK_N, BLOCK_D)
        v = _load_tile(V, keys, stride_vt, head * stride_vh, offs_dv, col_ok, HEAD_DIM_V)  # (BLOCK_N, BLOCK_DV)
        o = _load_tile(O, rows, stride_ot, head * stride_oh, offs_dv, row_ok, HEAD_DIM_V)  # (BLOCK_M, BLOCK_DV)
        do = _load_tile(DO, rows, stride_dot, head * stride_doh, offs_dv, row_ok, HEAD_DIM_V)  # (BLOCK_M, BLOCK_DV)
        lse2 = tl.load(LSE + head * total_q + rows, mask=row_ok, other=0.0) * 1.4426950408889634  # * log2(e)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,)
        valid = row_ok[:, None] & col_ok[None, :]
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.exp2(tl.where(valid, s - lse2[:, None], float("-inf")))  # masked -> 0, never exp of garbage
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_DV)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = (p * (dp - delta[:, None])).to(q.dtype)  # (BLOCK_M, BLOCK_N)
        dk = tl.dot(tl.trans(ds), q, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_D)
        dq = tl.dot(ds, k, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_D)
        if PADDED:  # the tile holds all N padded rows: padding rows get their zero gradients (p = 0 there)
            row_store = offs_m < padded_n
            col_store = offs_n < padded_n
        else:
            row_store = row_ok
            col_store = col_ok
        _store_tile(DQ, rows, stride_dqt, head * stride_dqh, offs_d, dq * scale, row_store, HEAD_DIM)
        _store_tile(DK, keys, stride_dkt, head * stride_dkh, offs_d, dk * scale, col_store, HEAD_DIM)
        _store_tile(DV, keys, stride_dvt, head * stride_dvh, offs_dv, dv, col_store, HEAD_DIM_V)


@triton.jit
def varlen_attention_bwd_segment_kernel(
    Q, K, V, O, DO, LSE, DQ, DK, DV, CU_Q, CU_K, ORDER,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_dot, stride_doh,
    stride_dqt, stride_dqh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    total_q, num_heads, num_units, num_programs, padded_n, scale, qk_scale,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, SORTED: tl.constexpr, SHARED_OFFSETS: tl.constexpr,
    PADDED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Backward of one (segment, head) per loop trip, any length (identity kv_index), in one launch: dK / dV per
    key block (looping over the query blocks), then dQ per query block (looping over the key blocks); delta =
    rowsum(dO * O) recomputed from the O / dO tiles where needed. One unit reads its segment's tensors from HBM
    once (its re-reads stay in L2) and writes each gradient once: no preprocess pass, no second launch, no
    atomics, deterministic."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    for unit in range(tl.program_id(0), num_units, num_programs):
        head, q_start, q_len, k_start, k_len = _segment_unit(unit, num_heads, ORDER, CU_Q, CU_K, padded_n, SORTED,
                                                             SHARED_OFFSETS, PADDED)
        # PADDED: the outer loops cover all N padded rows (padding gets zero gradients), a padding-only block skips
        # its inner loop
        if PADDED:
            k_extent = padded_n
            q_extent = padded_n
        else:
            k_extent = k_len
            q_extent = q_len
        # dK, dV: key block resident, query blocks streamed
        for start_n in range(0, k_extent, BLOCK_N):
            col_ok = start_n + offs_n < k_len
            col_store = start_n + offs_n < k_extent
            keys = (k_start + start_n + offs_n).to(tl.int64)
            k = _load_tile(K, keys, stride_kt, head * stride_kh, offs_d, col_ok, HEAD_DIM)  # (BLOCK_N, BLOCK_D)
            v = _load_tile(V, keys, stride_vt, head * stride_vh, offs_dv, col_ok, HEAD_DIM_V)  # (BLOCK_N, BLOCK_DV)
            dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
            dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
            for start_m in range(0, tl.where(start_n < k_len, q_len, 0), BLOCK_M):
                row_ok = start_m + offs_m < q_len
                rows = (q_start + start_m + offs_m).to(tl.int64)
                q = _load_tile(Q, rows, stride_qt, head * stride_qh, offs_d, row_ok, HEAD_DIM)  # (BLOCK_M, BLOCK_D)
                o = _load_tile(O, rows, stride_ot, head * stride_oh, offs_dv, row_ok, HEAD_DIM_V)  # (BLOCK_M, BLOCK_DV)
                # (BLOCK_M, BLOCK_DV)
                do = _load_tile(DO, rows, stride_dot, head * stride_doh, offs_dv, row_ok, HEAD_DIM_V)
                lse2 = tl.load(LSE + head * total_q + rows, mask=row_ok, other=0.0) * 1.4426950408889634
                delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,)
                s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
                p_t = tl.exp2(tl.where(col_ok[:, None] & row_ok[None, :], s_t - lse2[None, :], float("-inf")))
                dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
                dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
                ds_t = p_t * (dp_t - delta[None, :])
                dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)
            _store_tile(DK, keys, stride_dkt, head * stride_dkh, offs_d, dk * scale, col_store, HEAD_DIM)
            _store_tile(DV, keys, stride_dvt, head * stride_dvh, offs_dv, dv, col_store, HEAD_DIM_V)
        # dQ: query block resident, key blocks streamed
        for start_m in range(0, q_extent, BLOCK_M):
            row_ok = start_m + offs_m < q_len
            row_store = start_m + offs_m < q_extent
            rows = (q_start + start_m + offs_m).to(tl.int64)
            q = _load_tile(Q, rows, stride_qt, head * stride_qh, offs_d, row_ok, HEAD_DIM)  # (BLOCK_M, BLOCK_D)
            o = _load_tile(O, rows, stride_ot, head * stride_oh, offs_dv, row_ok, HEAD_DIM_V)  # (BLOCK_M, BLOCK_DV)
            do = _load_tile(DO, rows, stride_dot, head * stride_doh, offs_dv, row_ok, HEAD_DIM_V)  # (BLOCK_M, BLOCK_DV)
            lse2 = tl.load(LSE + head * total_q + rows, mask=row_ok, other=0.0) * 1.4426950408889634
            delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,)
            dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            for start_n in range(0, tl.where(start_m < q_len, k_len, 0), BLOCK_N):
                col_ok = start_n + offs_n < k_len
                keys = (k_start + start_n + offs_n).to(tl.int64)
                k = _load_tile(K, keys, stride_kt, head * stride_kh, offs_d, col_ok, HEAD_DIM)  # (BLOCK_N, BLOCK_D)
                v = _load_tile(V, keys, stride_vt, head * stride_vh, offs_dv, col_ok, HEAD_DIM_V)  # (BLOCK_N, BLOCK_DV)
                s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
                p = tl.exp2(tl.where(row_ok[:, None] & col_ok[None, :], s - lse2[:, None], float("-inf")))
                dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
            _store_tile(DQ, rows, stride_dqt, head * stride_dqh, offs_d, dq * scale, row_store, HEAD_DIM)


@triton.jit
def varlen_attention_bwd_preprocess_kernel(
    O, DO, DELTA, stride_ot, stride_oh, stride_dot, stride_doh, total_q,
    HEAD_DIM_V: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    head = tl.program_id(1)
    rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask = (rows[:, None] < total_q) & (offs_dv[None, :] < HEAD_DIM_V)
    o = tl.load(O + rows[:, None] * stride_ot + head * stride_oh + offs_dv[None, :], mask=mask, other=0.0)
    do = tl.load(DO + rows[:, None] * stride_dot + head * stride_doh + offs_dv[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_T,)
    tl.store(DELTA + head * total_q + rows, delta, mask=rows < total_q)


@triton.jit
def varlen_attention_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU_Q, CU_K, Q_OF_KV_PTR, Q_OF_KV, SEG_Q, SEG_K, WORK, WORK_COUNT,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    total_q, total_k, num_heads, num_units, blocks_per_segment, num_programs, scale, qk_scale,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PACK_ROWS: tl.constexpr, UNIFORM: tl.constexpr,
    COUNTED: tl.constexpr, IDENTITY_KV: tl.constexpr, SHARED_OFFSETS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    n_units = _work_count(WORK_COUNT, num_units, num_heads, COUNTED)
    for unit in range(tl.program_id(0), n_units, num_programs):  # units over key blocks, as the forward's
        kv_seg, head, block, k_start, k_len = _work_unit(unit, num_heads, CU_K, WORK, blocks_per_segment, total_k,
                                                         0, PACK_ROWS, UNIFORM, False)
        offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = offs_n < k_len
        keys = (k_start + offs_n).to(tl.int64)
        k = _load_tile(K, keys, stride_kt, head * stride_kh, offs_d, col_ok, HEAD_DIM)  # (BLOCK_N, BLOCK_D)
        v = _load_tile(V, keys, stride_vt, head * stride_vh, offs_dv, col_ok, HEAD_DIM_V)  # (BLOCK_N, BLOCK_DV)
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
        if PACK_ROWS:  # keys of segments s_first..s_last: their queries are one contiguous range, one trip below
            first_key = block * BLOCK_N
            s_first = tl.load(SEG_K + first_key)
            s_last = tl.load(SEG_K + tl.minimum(first_key + BLOCK_N, total_k) - 1)
            col_seg = tl.load(SEG_K + keys, mask=col_ok, other=-2)  # (BLOCK_N,); -2 matches no query
            pair_start = 0
            pair_end = 1
        else:
            if IDENTITY_KV:  # kv segment j is read by query segment j alone
                pair_start = kv_seg
                pair_end = kv_seg + 1
            else:  # every query segment that reads this key/value segment, in a fixed order (CSR row kv_seg)
                pair_start = tl.load(Q_OF_KV_PTR + kv_seg)
                pair_end = tl.load(Q_OF_KV_PTR + kv_seg + 1)

        for i in range(pair_start, pair_end):
            if PACK_ROWS:
                q_start = tl.load(CU_Q + s_first)
                q_len = tl.load(CU_Q + s_last + 1) - q_start
            else:
                if IDENTITY_KV and SHARED_OFFSETS:
                    q_start = k_start
                    q_len = k_len
                else:
                    if IDENTITY_KV:
                        q_seg = i
                    else:
                        q_seg = tl.load(Q_OF_KV + i)
                    q_start = tl.load(CU_Q + q_seg)
                    q_len = tl.load(CU_Q + q_seg + 1) - q_start
            for start_m in range(0, q_len, BLOCK_M):
                cur_m = start_m + offs_m
                row_ok = cur_m < q_len
                rows = (q_start + cur_m).to(tl.int64)
                q = _load_tile(Q, rows, stride_qt, head * stride_qh, offs_d, row_ok, HEAD_DIM)  # (BLOCK_M, BLOCK_D)
                # (BLOCK_M, BLOCK_DV)
                do = _load_tile(DO, rows, stride_dot, head * stride_doh, offs_dv, row_ok, HEAD_DIM_V)
                lse2 = tl.load(LSE + head * total_q + rows, mask=row_ok, other=0.0) * 1.4426950408889634  # * log2(e)
                delta = tl.load(DELTA + head * total_q + rows, mask=row_ok, other=0.0)
                if PACK_ROWS:  # block-diagonal: a key sees the queries of its own segment only
                    row_seg = tl.load(SEG_Q + rows, mask=row_ok, other=-1)
                    valid = col_seg[:, None] == row_seg[None, :]  # (BLOCK_N, BLOCK_M)
                else:
                    valid = col_ok[:, None] & row_ok[None, :]
                s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
                # Padded keys / queries are zero, so s_t is finite there, but exp2(s - lse) could still overflow (or
                # meet another segment's lse): masked entries become exp2(-inf) = 0.
                p_t = tl.exp2(tl.where(valid, s_t - lse2[None, :], float("-inf")))
                dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
                dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
                ds_t = p_t * (dp_t - delta[None, :])
                dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)

        _store_tile(DK, keys, stride_dkt, head * stride_dkh, offs_d, dk * scale, col_ok, HEAD_DIM)
        _store_tile(DV, keys, stride_dvt, head * stride_dvh, offs_dv, dv, col_ok, HEAD_DIM_V)


@triton.jit
def varlen_attention_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU_Q, CU_K, KV_INDEX, SEG_Q, SEG_K, WORK, WORK_COUNT,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dqt, stride_dqh,
    total_q, num_heads, num_units, blocks_per_segment, num_programs, scale, qk_scale,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, PACK_ROWS: tl.constexpr, UNIFORM: tl.constexpr,
    COUNTED: tl.constexpr, IDENTITY_KV: tl.constexpr, SHARED_OFFSETS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    n_units = _work_count(WORK_COUNT, num_units, num_heads, COUNTED)
    for unit in range(tl.program_id(0), n_units, num_programs):  # the forward's units
        seg, head, block, q_start, q_len = _work_unit(unit, num_heads, CU_Q, WORK, blocks_per_segment, total_q,
                                                      0, PACK_ROWS, UNIFORM, False)
        k_start, k_len = _key_range(seg, q_start, q_len, block * BLOCK_M, total_q, CU_K, KV_INDEX, SEG_Q, BLOCK_M,
                                    PACK_ROWS, IDENTITY_KV, SHARED_OFFSETS)
        offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = offs_m < q_len
        rows = (q_start + offs_m).to(tl.int64)
        q = _load_tile(Q, rows, stride_qt, head * stride_qh, offs_d, row_ok, HEAD_DIM)  # (BLOCK_M, BLOCK_D)
        do = _load_tile(DO, rows, stride_dot, head * stride_doh, offs_dv, row_ok, HEAD_DIM_V)  # (BLOCK_M, BLOCK_DV)
        lse2 = tl.load(LSE + head * total_q + rows, mask=row_ok, other=0.0) * 1.4426950408889634  # * log2(e)
        delta = tl.load(DELTA + head * total_q + rows, mask=row_ok, other=0.0)
        if PACK_ROWS:
            row_seg = tl.load(SEG_Q + rows, mask=row_ok, other=-1)  # (BLOCK_M,); -1 matches no key
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start_n in range(0, k_len, BLOCK_N):
            cols = start_n + offs_n
            col_ok = cols < k_len
            keys = (k_start + cols).to(tl.int64)
            k = _load_tile(K, keys, stride_kt, head * stride_kh, offs_d, col_ok, HEAD_DIM)  # (BLOCK_N, BLOCK_D)
            v = _load_tile(V, keys, stride_vt, head * stride_vh, offs_dv, col_ok, HEAD_DIM_V)  # (BLOCK_N, BLOCK_DV)
            if PACK_ROWS:  # block-diagonal, as in the forward
                col_seg = tl.load(SEG_K + keys, mask=col_ok, other=-2)
                valid = row_seg[:, None] == col_seg[None, :]  # (BLOCK_M, BLOCK_N)
            else:
                valid = row_ok[:, None] & col_ok[None, :]
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
            p = tl.exp2(tl.where(valid, s - lse2[:, None], float("-inf")))
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
        _store_tile(DQ, rows, stride_dqt, head * stride_dqh, offs_d, dq * scale, row_ok, HEAD_DIM)

# ---------------------------------------------------------------------------------------------------------------
# launch configuration
# ---------------------------------------------------------------------------------------------------------------
class _Config(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def _fit(n: int, cap: int) -> int:
    """Smallest power of two >= n, within [16, cap] (tl.dot needs tile sides >= 16)."""
    return max(16, min(cap, triton.next_power_of_2(max(int(n), 1))))


# fp32 matmuls run on FMA units (IEEE precision, no tensor cores): their operands are held per thread, so fp32
# tiles are smaller, with 8 warps, to stay spill-free (compile report: benchmarks/results/compile-report.md).
FP32_TILE = 32


def _config(kernel: str, head_block: int, max_seqlen_q: int, max_seqlen_k: int,
            dtype: torch.dtype = torch.float16) -> _Config:
    """Block sizes per kernel from the (padded) head dim, the longest segments and the dtype.

    Gait sequences are short (30-500 frames): a whole key segment fits in one BLOCK_N when it can, and blocks
    shrink to the segment so short segments do not pay for masked lanes. fp16 / bf16 (tensor cores): up to 64-row
    query tiles, 128-key forward tiles (64 at head dim 64, 32 above; 4 warps), 8 warps in the backward above head
    dim 64. fp32 (FMA): 32 x 32
    tiles, 16-query tiles in dK/dV and in the forward above head dim 64, 8 warps; a few bytes of spill remain in
    some fp32 specializations (the report's fp32 allowance).
    fp16 / bf16 choices compile without spills for sm80 and sm90 (triton 3.9; the compile report checks it). Under the
    interpreter one fixed, large choice: fewer programs and loop trips are what costs time there.
    """
    if INTERPRET:
        return _Config(_fit(max_seqlen_q, 128), _fit(max_seqlen_k, 128), 4, 1)
    tuned = tuned_config(kernel, "segment", head_block, max(max_seqlen_q, max_seqlen_k), dtype)
    if tuned is not None:  # measured on this GPU architecture (kernels/tuned/, `bpmt-fast bench tune`)
        return _Config(**tuned)
    return _default_config(kernel, head_block, max_seqlen_q, max_seqlen_k, dtype)


def _default_config(kernel: str, head_block: int, max_seqlen_q: int, max_seqlen_k: int,
                    dtype: torch.dtype) -> _Config:
    """`_config`'s GPU choice without a tuned table (also the fp32 tiles of the packed-rows mode)."""
    if dtype == torch.float32:
        tile_k = _fit(max_seqlen_k, FP32_TILE)
        if kernel == "dkdv" or (kernel == "fwd" and head_block > 64):  # 16-query tiles: 32 spill on sm80/sm90
            return _Config(_fit(max_seqlen_q, 16), tile_k, 8, 2)
        return _Config(_fit(max_seqlen_q, FP32_TILE), tile_k, 8, 1 if kernel == "fwd" else 2)
    big = head_block > 64
    if kernel == "fwd":  # q tile resident, loop over keys (wider keys spill a few bytes on sm80, triton 3.6)
        key_tile = 128 if head_block <= 32 else 64 if head_block <= 64 else 32
        return _Config(_fit(max_seqlen_q, 64), _fit(max_seqlen_k, key_tile), 8 if big else 4, 2)
    if kernel == "dkdv":  # k, v, dk, dv tiles resident, loop over queries
        return _Config(_fit(max_seqlen_q, 32), _fit(max_seqlen_k, 64), 8 if big else 4, 2)
    return _Config(_fit(max_seqlen_q, 64), _fit(max_seqlen_k, 32 if big else 64), 8 if big else 4, 2)  # dq


def _packed_config(kernel: str, head_block: int, dtype: torch.dtype = torch.float16, max_seqlen: int = 0,
                   tuned: bool = True) -> _Config:
    """Block sizes per kernel in the packed-rows mode (fixed: they do not shrink to the segments, which share them).

    The packed row tile is BLOCK_M (queries) in "fwd" and "dq" and BLOCK_N (keys) in "dkdv"; the other side is
    the loop tile. fp16 / bf16: 64-row packed tiles in all three kernels; loop tiles and warps as `_config` at its
    caps (32-query loop tiles in dK/dV, 32-key loop tiles in dQ and the forward above head dim 64, 8 warps
    in the backward there), except a 64-key loop tile in the forward up to head dim 64. fp32: `_config`'s tiles
    (32 x 32, 16-row forward tiles at head dim 128: packed mode then takes segments <= 16, <= 8 at head dim 128).
    Most products of a packed tile are masked off (block-diagonal), which is cheap next to the memory latency of
    many tiny programs at gait lengths; untuned: to be measured on a GPU. Under the interpreter one fixed, large
    square tile: programs and loop trips are what cost time there, masked lanes are nearly free, so the tile is
    as large as the interpreter handles comfortably.
    """
    if INTERPRET:
        return _Config(PACKED_BLOCK_INTERPRET, PACKED_BLOCK_INTERPRET, 4, 1)
    table = tuned_config(kernel, "packed", head_block, max_seqlen, dtype) if tuned else None
    if table is not None:  # measured on this GPU architecture
        return _Config(**table)
    if dtype == torch.float32:  # the per-segment defaults: a "segment" table entry must not leak into packed rows
        return _default_config(kernel, head_block, FP32_TILE, FP32_TILE, dtype)
    big = head_block > 64
    if kernel == "fwd":
        return _Config(64, 32 if big else 64, 8 if big else 4, 2)
    if kernel == "dkdv":  # 64 packed keys, 32-query loop tiles
        return _Config(32, 64, 8 if big else 4, 2)
    return _Config(64, 32 if big else 64, 8 if big else 4, 2)  # dq


def _auto_pack_rows(head_dim: int, head_dim_v: int, max_seqlen_q: int, max_seqlen_k: int,
                    dtype: torch.dtype = torch.float16) -> bool:
    """The automatic choice for an identity kv_index: packed rows when every packed row tile holds at least two
    segments of the longest length, max_seqlen_q <= BLOCK_M / 2 of the "fwd" / "dq" tile and
    max_seqlen_k <= BLOCK_N / 2 of the "dkdv" tile (interpreter: both <= 128; GPU: both <= 32, fp32 <= 16)."""
    head_block = max(_head_block(head_dim), _head_block(head_dim_v))
    tiles = {kind: _packed_config(kind, head_block, dtype, tuned=False) for kind in ("fwd", "dq", "dkdv")}
    return (max_seqlen_q <= min(tiles["fwd"].block_m, tiles["dq"].block_m) // 2
            and max_seqlen_k <= tiles["dkdv"].block_n // 2)


def _strides(*tensors):
    """(token stride, head stride) of each `(T, H, D)` tensor, flattened for the kernel arguments."""
    return [s for x in tensors for s in (x.stride(0), x.stride(1))]


def _queries_of_kv(kv_index: torch.Tensor, num_kv_segments: int, identity: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of kv_index as CSR: query segments of kv segment j are q_of_kv[ptr[j]:ptr[j + 1]], ascending.

    Built with a stable sort and searchsorted on the device: no host sync, no atomics in the kernel. The identity
    (the model's case) needs no sort: kv segment j has query segment j alone.
    """
    if identity:
        ptr = torch.arange(num_kv_segments + 1, dtype=torch.int32, device=kv_index.device)  # (S + 1,)
        return ptr, ptr[:-1]
    kv_sorted, order = torch.sort(kv_index.long(), stable=True)
    bounds = torch.arange(num_kv_segments + 1, device=kv_index.device)
    ptr = torch.searchsorted(kv_sorted, bounds).to(torch.int32)  # (S_k + 1,)
    return ptr, order.to(torch.int32)  # (S_k + 1,), (S_q,)


def _segment_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Segment of each token, int32 `(total,)`: the number of segment ends <= token. searchsorted on the device,
    no host sync; empty segments own no token."""
    tokens = torch.arange(total, dtype=torch.int32, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].contiguous(), tokens, right=True, out_int32=True)


class _Work(NamedTuple):
    """The row blocks of a persistent launch (units are items x heads). `table` `(upper, 2)` int32 holds
    (segment, block) per item, longest segment first, and `count` `(1,)` int32 the number of real items: both on
    the device, built without a host sync. Host ints: `items` (exact when `uniform`, else the table's upper
    bound) and `lower`, a lower bound on the real items that sizes the grid so no program is left without work."""
    table: torch.Tensor
    count: torch.Tensor
    items: int
    lower: int
    blocks_per_segment: int  # uniform launches: item i is block i % blocks_per_segment of segment i // it
    uniform: bool  # every segment has the same number of blocks: no table, no count
    packed: bool = False


def _work_items(cu_seqlens: torch.Tensor, total: int, max_seqlen: int, block: int) -> _Work:
    """Each segment's `cdiv(length, block)` row blocks as work items, longest segment first.

    All segments full (`max_seqlen * S == total`, host ints): item i is block i % nb of segment i // nb, nothing
    built. Else on the device: a stable descending sort of the lengths, a prefix sum of their block counts and
    one searchsorted give every item its (segment, block); the real item count stays on the device, where the
    kernel reads it. At least `cdiv(total, block)` items are real (blocks cover every token), so a grid of at most
    that many units x heads never has an idle program; empty segments have no items."""
    segments = cu_seqlens.numel() - 1
    per_segment = triton.cdiv(max_seqlen, block) if max_seqlen else 0
    lower = triton.cdiv(total, block)
    if max_seqlen * segments == total:
        return _Work(cu_seqlens, cu_seqlens, segments * per_segment, lower, max(per_segment, 1), True)
    upper = min(lower + segments, segments * per_segment)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # (S,)
    order = torch.argsort(lengths, descending=True, stable=True)  # (S,) longest first
    blocks = (lengths[order] + block - 1) // block  # (S,) in that order
    ends = torch.cumsum(blocks, 0)  # (S,) items before the next segment
    items = torch.arange(upper, device=cu_seqlens.device)  # (upper,)
    position = torch.searchsorted(ends, items, right=True).clamp_(max=segments - 1)  # (upper,); past count: unused
    first = ends[position] - blocks[position]  # (upper,) first item of its segment
    table = torch.stack([order[position], items - first], 1).to(torch.int32)  # (upper, 2)
    count = ends[-1:].clamp(max=upper).to(torch.int32)  # (1,); the clamp only bites if max_seqlen was too small
    return _Work(table, count, upper, lower, 1, False)


# Persistent grids: programs per SM (several resident programs hide each other's memory latency), and the SM
# count assumed where no GPU is queried (meta tensors of the compile report and the cost model: an H100 SXM).
PROGRAMS_PER_SM = 8
DEFAULT_SMS = 132
INTERPRET_PROGRAMS = 16  # the interpreter runs programs one by one: their number barely matters


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_programs(units: int, device, sms: int | None = None) -> int:
    """Programs of a persistent launch over `units` (a lower bound on its real units): at most a few per SM, never
    more than the units, so none is idle. `sms` overrides the device's SM count (the cost model's GPUs)."""
    device = torch.device(device)
    if sms is None:
        if device.type == "cuda":
            sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
        elif INTERPRET and device.type == "cpu":
            return max(1, min(units, INTERPRET_PROGRAMS))
        else:
            sms = DEFAULT_SMS
    return max(1, min(units, sms * PROGRAMS_PER_SM))


def _fused_tile(head_block: int, dtype: torch.dtype) -> int:
    """Longest segment the one-pass backward takes: its whole segment is one tile of this many rows and keys.
    fp16 / bf16: 64 (head dims <= 64; above, five resident tiles and three fp32 accumulators spill), fp32 (FMA
    dots, operands per thread): 32 up to head dim 32; interpreter: 128 (fewer, bigger steps)."""
    if INTERPRET:
        return 128
    if dtype == torch.float32:
        return 32 if head_block <= 32 else 0
    return 64 if head_block <= 64 else 0


def _auto_fused_backward(head_block: int, max_seqlen_q: int, max_seqlen_k: int, dtype: torch.dtype) -> bool:
    """The one-pass backward fits: both sides of every segment within `_fused_tile` (identity kv_index assumed)."""
    return max(max_seqlen_q, max_seqlen_k) <= _fused_tile(head_block, dtype)


def _fused_config(head_block: int, max_seqlen_q: int, max_seqlen_k: int, dtype: torch.dtype) -> _Config:
    """Square tile of the longest segment (>= 16, tl.dot); 4 warps up to 32 rows, else 8; one stage: the
    persistent loop has no inner loop to pipeline."""
    tile = _fit(max(max_seqlen_q, max_seqlen_k), max(_fused_tile(head_block, dtype), 16))
    tuned = None if INTERPRET else tuned_config("fused_bwd", "segment", head_block, tile, dtype)
    if tuned is not None:  # warps and stages only: the tile must hold the whole segment
        return _Config(tile, tile, tuned["num_warps"], tuned["num_stages"])
    return _Config(tile, tile, 4 if tile <= 32 else 8, 1)


def _segment_config(head_block: int, max_seqlen_q: int, max_seqlen_k: int, dtype: torch.dtype) -> _Config:
    """Tiles of the "segment" backward: the dK/dV phase keeps a key tile and two fp32 accumulators, the dQ phase a
    query tile and one, so the tiles are dK/dV's (32 queries x 64 keys in fp16 / bf16, 8 warps and 32 keys
    above head dim 64; fp32 16 x 32, 8 warps, 16 x 16 at head dim 128). Interpreter: the segment in one tile
    where it fits (<= 128)."""
    if INTERPRET:
        return _Config(_fit(max_seqlen_q, 128), _fit(max_seqlen_k, 128), 4, 1)
    tuned = tuned_config("segment_bwd", "segment", head_block, max(max_seqlen_q, max_seqlen_k), dtype)
    if tuned is not None:  # measured on this GPU architecture
        return _Config(**tuned)
    if dtype == torch.float32:  # 16-key tiles and one stage at head dim 128: 32 keys spilled 52-80 B on sm90
        big = head_block > 64
        return _Config(_fit(max_seqlen_q, 16), _fit(max_seqlen_k, 16 if big else FP32_TILE), 8, 1 if big else 2)
    big = head_block > 64
    return _Config(_fit(max_seqlen_q, 32), _fit(max_seqlen_k, 32 if big else 64), 8 if big else 4, 2)


BACKWARDS = ("fused", "segment", "split")


def _programs_cap(device) -> int:
    """Most programs a persistent launch runs on `device` (see `_num_programs`)."""
    return _num_programs(2**62, device)


def _choose_backward(identity: bool, head_block: int, max_seqlen_q: int, max_seqlen_k: int, dtype: torch.dtype,
                     units: int, device) -> str:
    """"fused" when every segment fits the one-pass tile; else "segment" when there are enough (segment, head)
    units to give every program of a persistent grid one; else "split" (few long segments: parallel over
    blocks). Any kv_index other than the identity: "split"."""
    if not identity:
        return "split"
    if _auto_fused_backward(head_block, max_seqlen_q, max_seqlen_k, dtype):
        return "fused"
    return "segment" if units >= _programs_cap(device) else "split"


def _check_backward(backward, identity, head_block, max_seqlen_q, max_seqlen_k, dtype, units, device) -> str:
    """The backward to run: the automatic choice for None, else `backward` if it can run (ValueError if not)."""
    if backward is None:
        return _choose_backward(identity, head_block, max_seqlen_q, max_seqlen_k, dtype, units, device)
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be None (automatic) or one of {', '.join(BACKWARDS)}, got {backward!r}")
    if backward != "split" and not identity:
        raise ValueError(f"backward={backward!r} needs kv_index to be the identity (query segment i attends to "
                         f"key/value segment i); use backward=None or 'split' for other kv_index")
    if backward == "fused" and not _auto_fused_backward(head_block, max_seqlen_q, max_seqlen_k, dtype):
        raise ValueError(f"backward='fused' needs every segment within one tile: max lengths {max_seqlen_q} / "
                         f"{max_seqlen_k} > {_fused_tile(head_block, dtype)} at head block {head_block}, {dtype}; "
                         f"use backward=None, 'segment' or 'split'")
    return backward


def _longest_first(cu_seqlens_q, cu_seqlens_k, total_q, total_k, max_seqlen_q, max_seqlen_k):
    """(order `(S,)` int32 of segments by q_len * k_len descending, True), or (placeholder, False) when every
    segment is full length (host ints: no sort needed)."""
    segments = cu_seqlens_q.numel() - 1
    if max_seqlen_q * segments == total_q and max_seqlen_k * segments == total_k:
        return cu_seqlens_q, False
    work = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).long() * (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).long()  # (S,)
    return torch.argsort(work, descending=True, stable=True).to(torch.int32), True


# ---------------------------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------------------------
def _packing(pack_rows, cu_seqlens_q, cu_seqlens_k, total_q, total_k):
    """Per-token segment ids `(SEG_Q, SEG_K)` for packed rows; otherwise placeholders the kernels never read."""
    if pack_rows:
        return _segment_ids(cu_seqlens_q, total_q), _segment_ids(cu_seqlens_k, total_k)
    return cu_seqlens_q, cu_seqlens_k


def _same_offsets(cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor) -> bool:
    """q and k use one offsets tensor (self-attention): the kernels then read the offsets once."""
    if cu_seqlens_q is cu_seqlens_k:
        return True
    if cu_seqlens_q.device.type == "meta":  # meta tensors have no addresses to compare
        return False
    return (cu_seqlens_q.data_ptr() == cu_seqlens_k.data_ptr() and cu_seqlens_q.shape == cu_seqlens_k.shape
            and cu_seqlens_q.stride() == cu_seqlens_k.stride())


def _launch_items(pack_rows: bool, cu_seqlens: torch.Tensor, total: int, max_seqlen: int, block: int) -> _Work:
    """The row blocks one launch covers: packed row blocks, or each segment's blocks (`_work_items`)."""
    if pack_rows:
        blocks = triton.cdiv(total, block)
        return _Work(cu_seqlens, cu_seqlens, blocks, blocks, 1, False, True)  # placeholders never read
    return _work_items(cu_seqlens, total, max_seqlen, block)


def _work_kwargs(work: _Work, num_heads: int, device) -> tuple[list, dict]:
    """(runtime arguments after the strides' totals, constexprs) describing the units of a persistent launch."""
    programs = _num_programs(work.lower * num_heads, device)
    return ([work.items * num_heads, work.blocks_per_segment, programs],
            dict(UNIFORM=work.uniform, COUNTED=not (work.uniform or work.packed)))


def varlen_attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, kv_index, max_seqlen_q, max_seqlen_k, scale,
                         pack_rows=False, identity=False):
    """q `(Tq, H, D)`, k `(Tk, H, D)`, v `(Tk, H, Dv)` -> out `(Tq, H, Dv)` in q's dtype, lse `(H, Tq)` fp32.

    `pack_rows=True` needs kv_index to be the identity (the caller's promise: it is not read); so does
    `identity=True` (kv_index 0, 1, ...: the per-segment kernel then skips reading it)."""
    total_q, num_heads, head_dim = q.shape
    head_dim_v = v.shape[-1]
    out = _alloc((total_q, num_heads, head_dim_v), q.dtype, q.device)
    lse = _alloc((num_heads, total_q), torch.float32, q.device)
    block_d, block_dv = _head_block(head_dim), _head_block(head_dim_v)
    if pack_rows:
        cfg = _packed_config("fwd", max(block_d, block_dv), q.dtype, max(max_seqlen_q, max_seqlen_k))
    else:
        cfg = _config("fwd", max(block_d, block_dv), max_seqlen_q, max_seqlen_k, q.dtype)
    if total_q == 0 or num_heads == 0:
        return out, lse
    work = _launch_items(pack_rows, cu_seqlens_q, total_q, max_seqlen_q, cfg.block_m)
    seg_q, seg_k = _packing(pack_rows, cu_seqlens_q, cu_seqlens_k, total_q, k.shape[0])
    units, unit_meta = _work_kwargs(work, num_heads, q.device)
    varlen_attention_fwd_kernel[(units[-1],)](
        q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, kv_index, seg_q, seg_k, work.table, work.count,
        *_strides(q, k, v, out), total_q, num_heads, *units, 0, scale * LOG2E,
        HEAD_DIM=head_dim, HEAD_DIM_V=head_dim_v, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d,
        BLOCK_DV=block_dv, PACK_ROWS=bool(pack_rows), IDENTITY_KV=bool(identity or pack_rows),
        SHARED_OFFSETS=_same_offsets(cu_seqlens_q, cu_seqlens_k),
        ONE_KEY_BLOCK=not pack_rows and max_seqlen_k <= cfg.block_n, PADDED=False, DOT_PRECISION=DOT_PRECISION,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **unit_meta)
    return out, lse


def padded_attention_fwd(q, k, v, lengths, padded_n, max_seqlen, scale):
    """Self-attention of S padded sequences read in place: q, k `(S*N, H, D)`, v `(S*N, H, Dv)` (any token and
    head strides: views of the model's fused projections), int32 `lengths (S,)`, `max_seqlen` >= every length
    (host int). -> out `(S*N, H, Dv)` with zeros in the padding, lse `(H, S*N)` float32. No packing: the kernel
    takes sequence s at rows s*N onwards and writes all N rows (units of cdiv(N, BLOCK_M) blocks per sequence;
    padding-only blocks skip the keys and store zeros)."""
    rows, num_heads, head_dim = q.shape
    head_dim_v = v.shape[-1]
    out = _alloc((rows, num_heads, head_dim_v), q.dtype, q.device)
    lse = _alloc((num_heads, rows), torch.float32, q.device)
    block_d, block_dv = _head_block(head_dim), _head_block(head_dim_v)
    cfg = _config("fwd", max(block_d, block_dv), max_seqlen, max_seqlen, q.dtype)
    blocks = triton.cdiv(padded_n, cfg.block_m)
    units = lengths.numel() * blocks * num_heads
    programs = _num_programs(units, q.device)
    varlen_attention_fwd_kernel[(programs,)](
        q, k, v, out, lse, lengths, lengths, lengths, lengths, lengths, lengths, lengths,
        *_strides(q, k, v, out), rows, num_heads, units, blocks, programs, padded_n, scale * LOG2E,
        HEAD_DIM=head_dim, HEAD_DIM_V=head_dim_v, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d,
        BLOCK_DV=block_dv, PACK_ROWS=False, UNIFORM=True, COUNTED=False, IDENTITY_KV=True, SHARED_OFFSETS=True,
        ONE_KEY_BLOCK=max_seqlen <= cfg.block_n, PADDED=True, DOT_PRECISION=DOT_PRECISION,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out, lse


def padded_attention_bwd(do, q, k, v, out, lse, lengths, padded_n, max_seqlen, scale, dq, dk, dv):
    """Backward of `padded_attention_fwd` into the given gradient buffers (`(S*N, H, D)` views with the last dim
    contiguous, e.g. slices of one fused gradient), every row written (zeros in the padding): the one-pass kernel
    when the N padded rows fit its tile, else one launch per (segment, head)."""
    head_block = max(_head_block(q.shape[-1]), _head_block(v.shape[-1]))
    backward = "fused" if _auto_fused_backward(head_block, padded_n, padded_n, q.dtype) else "segment"
    _unit_backward(backward, do, q, k, v, out, lse, dq, dk, dv, lengths, lengths, max_seqlen, max_seqlen, scale,
                   True, padded_n)


def varlen_attention_bwd(do, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, kv_index, max_seqlen_q,
                         max_seqlen_k, scale, pack_rows=False, identity=False, backward=None):
    """Gradients dq `(Tq, H, D)`, dk `(Tk, H, D)`, dv `(Tk, H, Dv)` in the inputs' dtype; `pack_rows` as in the
    forward that made `out` and `lse` (the backward may run another mode: lse does not depend on it).

    `backward`: None chooses (`_choose_backward`), or one of BACKWARDS: "fused" (one pass, segments within one
    tile), "segment" (one launch, a (segment, head) per unit), "split" (three kernels); the first two need an
    identity kv_index."""
    total_q, num_heads, head_dim = q.shape
    total_k, head_dim_v = k.shape[0], v.shape[-1]
    device = q.device
    dq = _alloc(q.shape, q.dtype, device)
    dk = _alloc(k.shape, k.dtype, device)
    dv = _alloc(v.shape, v.dtype, device)
    if total_q == 0 or total_k == 0:  # nothing attends: all gradients are zero
        return dq.zero_(), dk.zero_(), dv.zero_()
    identity = bool(identity or pack_rows)
    head_block = max(_head_block(head_dim), _head_block(head_dim_v))
    shared = _same_offsets(cu_seqlens_q, cu_seqlens_k)
    units = (cu_seqlens_q.numel() - 1) * num_heads
    backward = _check_backward(backward, identity, head_block, max_seqlen_q, max_seqlen_k, q.dtype, units, device)
    if backward == "split":
        _split_backward(do, q, k, v, out, lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, kv_index, max_seqlen_q,
                        max_seqlen_k, scale, identity, shared, bool(pack_rows))
    else:
        _unit_backward(backward, do, q, k, v, out, lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                       max_seqlen_k, scale, shared)
    return dq, dk, dv


def _split_backward(do, q, k, v, out, lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, kv_index, max_seqlen_q,
                    max_seqlen_k, scale, identity, shared, pack_rows):
    """Three launches: delta = rowsum(dO * O), dK / dV per key block, dQ per query block."""
    total_q, num_heads, head_dim = q.shape
    total_k, head_dim_v = k.shape[0], v.shape[-1]
    device = q.device
    block_d, block_dv = _head_block(head_dim), _head_block(head_dim_v)
    head_block = max(block_d, block_dv)
    sizes = dict(HEAD_DIM=head_dim, HEAD_DIM_V=head_dim_v, BLOCK_D=block_d, BLOCK_DV=block_dv,
                 PACK_ROWS=bool(pack_rows), IDENTITY_KV=identity, SHARED_OFFSETS=shared,
                 DOT_PRECISION=DOT_PRECISION)
    delta = _alloc((num_heads, total_q), torch.float32, device)
    block_t = 128 if INTERPRET else 64
    varlen_attention_bwd_preprocess_kernel[(triton.cdiv(total_q, block_t), num_heads)](
        out, do, delta, *_strides(out, do), total_q, HEAD_DIM_V=head_dim_v, BLOCK_T=block_t, BLOCK_DV=block_dv)

    num_kv_segments = cu_seqlens_k.numel() - 1
    seg_q, seg_k = _packing(pack_rows, cu_seqlens_q, cu_seqlens_k, total_q, total_k)
    if pack_rows:  # blocks of packed key rows; their queries follow from the identity kv_index
        cfg = _packed_config("dkdv", head_block, q.dtype, max(max_seqlen_q, max_seqlen_k))
        q_of_kv_ptr, q_of_kv = cu_seqlens_k, cu_seqlens_q  # placeholders, never read
    else:
        cfg = _config("dkdv", head_block, max_seqlen_q, max_seqlen_k, q.dtype)
        q_of_kv_ptr, q_of_kv = _queries_of_kv(kv_index, num_kv_segments, identity)
    work = _launch_items(pack_rows, cu_seqlens_k, total_k, max_seqlen_k, cfg.block_n)
    units, unit_meta = _work_kwargs(work, num_heads, device)
    varlen_attention_bwd_dkdv_kernel[(units[-1],)](
        q, k, v, do, lse, delta, dk, dv, cu_seqlens_q, cu_seqlens_k, q_of_kv_ptr, q_of_kv, seg_q, seg_k,
        work.table, work.count, *_strides(q, k, v, do, dk, dv), total_q, total_k, num_heads, *units, scale,
        scale * LOG2E, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages, **unit_meta, **sizes)

    if pack_rows:  # blocks of packed query rows, keys as in the forward
        cfg = _packed_config("dq", head_block, q.dtype, max(max_seqlen_q, max_seqlen_k))
    else:
        cfg = _config("dq", head_block, max_seqlen_q, max_seqlen_k, q.dtype)
    work = _launch_items(pack_rows, cu_seqlens_q, total_q, max_seqlen_q, cfg.block_m)
    units, unit_meta = _work_kwargs(work, num_heads, device)
    varlen_attention_bwd_dq_kernel[(units[-1],)](
        q, k, v, do, lse, delta, dq, cu_seqlens_q, cu_seqlens_k, kv_index, seg_q, seg_k, work.table, work.count,
        *_strides(q, k, v, do, dq), total_q, num_heads, *units, scale, scale * LOG2E,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **unit_meta, **sizes)


def _unit_backward(backward, do, q, k, v, out, lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                   max_seqlen_k, scale, shared, padded_n=0):
    """One launch of the "fused" or "segment" backward: a persistent program per group of (segment, head) units,
    the most work (q_len * k_len) first. `padded_n` > 0: padded sequences of N rows, `cu_seqlens_q` holding
    their lengths (`padded_attention_bwd`)."""
    total_q, num_heads, head_dim = q.shape
    head_dim_v = v.shape[-1]
    block_d, block_dv = _head_block(head_dim), _head_block(head_dim_v)
    if backward == "fused":  # padded: the tile holds all N rows, so the padding gets its zeros
        tile_q, tile_k = (padded_n, padded_n) if padded_n else (max_seqlen_q, max_seqlen_k)
        cfg, kernel = (_fused_config(max(block_d, block_dv), tile_q, tile_k, q.dtype),
                       varlen_attention_bwd_fused_kernel)
    else:
        cfg, kernel = (_segment_config(max(block_d, block_dv), max_seqlen_q, max_seqlen_k, q.dtype),
                       varlen_attention_bwd_segment_kernel)
    if padded_n:  # lengths (S,); heaviest first
        segments = cu_seqlens_q.numel()
        order = torch.argsort(cu_seqlens_q, descending=True, stable=True).to(torch.int32)  # (S,)
        is_sorted = True
    else:
        segments = cu_seqlens_q.numel() - 1
        order, is_sorted = _longest_first(cu_seqlens_q, cu_seqlens_k, total_q, k.shape[0], max_seqlen_q,
                                          max_seqlen_k)
    units = segments * num_heads
    programs = _num_programs(units, q.device)
    kernel[(programs,)](
        q, k, v, out, do, lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, order,
        *_strides(q, k, v, out, do, dq, dk, dv), total_q, num_heads, units, programs, padded_n, scale,
        scale * LOG2E, HEAD_DIM=head_dim, HEAD_DIM_V=head_dim_v, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_D=block_d, BLOCK_DV=block_dv, SORTED=is_sorted, SHARED_OFFSETS=shared, PADDED=bool(padded_n),
        DOT_PRECISION=DOT_PRECISION, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


class VarlenAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, kv_index, max_seqlen_q, max_seqlen_k, scale, pack_rows,
                identity, backward):
        out, lse = varlen_attention_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, kv_index, max_seqlen_q,
                                        max_seqlen_k, scale, pack_rows, identity)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, kv_index)
        ctx.sizes = (max_seqlen_q, max_seqlen_k, scale, pack_rows, identity, backward)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, kv_index = ctx.saved_tensors
        dq, dk, dv = varlen_attention_bwd(_last_dim_contiguous(grad_out), q, k, v, out, lse, cu_seqlens_q,
                                          cu_seqlens_k, kv_index, *ctx.sizes)
        return dq, dk, dv, None, None, None, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------------------------
# public function
# ---------------------------------------------------------------------------------------------------------------
def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, max_seqlen_q: int | None = None, max_seqlen_k: int | None = None,
                     *, scale: float | None = None, kv_index: torch.Tensor | None = None,
                     deterministic: bool = True, check_values: bool = True,
                     pack_rows: bool | None = None, backward: str | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v for each (query segment, key/value segment) pair of packed sequences.

    q `(Tq, H, D)`, k `(Tk, H, D)`, v `(Tk, H, Dv)`; `cu_seqlens_q (S_q + 1,)`, `cu_seqlens_k (S_k + 1,)` int32
    offsets on q's device. Query segment i attends to key/value segment `kv_index[i]` (int32 `(S_q,)`; default:
    segment i, which needs S_q == S_k). `scale` defaults to 1/sqrt(D). Returns `(Tq, H, Dv)` in q's dtype;
    differentiable in q, k, v. The backward is always deterministic (`deterministic=False` is rejected: there is
    no atomic path). `check_values=False` skips the checks that read tensor values back to the host (offsets,
    max lengths, kv_index range) for callers that built them themselves; max lengths must then be given.

    `pack_rows` picks how programs map to rows (the results agree up to rounding order): None (default) chooses
    packed rows when kv_index is the identity (None, or read back as 0, 1, ... by the value checks) and the
    segments are short (`_auto_pack_rows`: max_seqlen_q <= BLOCK_M / 2 and max_seqlen_k <= BLOCK_N / 2 of the
    packed tile), else one segment per program; True forces packed rows (kv_index must be the identity: an
    explicit one is read back to check, even with check_values=False); False forces one segment per program.
    `backward` picks the backward: None (default) chooses (`_choose_backward`: "fused" when kv_index is the
    identity and every segment fits the one-pass tile, "segment" for an identity kv_index with enough (segment,
    head) units to fill the GPU, else "split"); a name forces it, refused with the reason where it cannot run.
    """
    _check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, kv_index)
    if not deterministic:
        raise ValueError("deterministic=False is not available: this kernel has only the deterministic backward "
                         "(no atomics), so pass deterministic=True")
    if pack_rows is not None and not isinstance(pack_rows, bool):
        raise ValueError(f"pack_rows must be None (automatic), True or False, got {pack_rows!r}")
    if backward is not None and backward not in BACKWARDS:
        raise ValueError(f"backward must be None (automatic) or one of {', '.join(BACKWARDS)}, got {backward!r}")
    identity = kv_index is None  # query segment i attends to key/value segment i
    if kv_index is None:
        kv_index = torch.arange(cu_seqlens_q.numel() - 1, dtype=torch.int32, device=q.device)
    if check_values:
        max_seqlen_q, max_seqlen_k, identity = _check_values(q, k, cu_seqlens_q, cu_seqlens_k, kv_index,
                                                             max_seqlen_q, max_seqlen_k)
    elif max_seqlen_q is None or max_seqlen_k is None:
        raise ValueError("check_values=False needs max_seqlen_q and max_seqlen_k (they size the launch grid)")
    if (pack_rows or backward in ("fused", "segment")) and not identity:
        identity = _is_identity(kv_index.cpu(), cu_seqlens_k.numel() - 1)  # forced: read it back once
        if pack_rows and not identity:
            raise ValueError("pack_rows=True needs kv_index to be the identity (query segment i attends to "
                             "key/value segment i); use pack_rows=None or False for other kv_index")
    if backward is not None:  # refused now, not at the backward
        head_block = max(_head_block(q.shape[-1]), _head_block(v.shape[-1]))
        _check_backward(backward, identity, head_block, max_seqlen_q, max_seqlen_k, q.dtype, 0, q.device)
    if pack_rows is None:
        pack_rows = identity and _auto_pack_rows(q.shape[-1], v.shape[-1], max_seqlen_q, max_seqlen_k, q.dtype)
    scale = _resolve_scale(scale, q.shape[-1])
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    return VarlenAttentionFunction.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, kv_index, int(max_seqlen_q),
                                         int(max_seqlen_k), scale, pack_rows, identity, backward)


def _resolve_scale(scale: float | None, head_dim: int) -> float:
    """The softmax scale as a float: 1/sqrt(head_dim) by default; ValueError unless finite."""
    scale = head_dim ** -0.5 if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


def _check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, kv_index) -> None:
    """Shape, dtype and device checks: free, no host sync."""
    check_packed_qkv(q, k, v)
    for name, index in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k), ("kv_index", kv_index)):
        if index is None:
            continue
        if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.dtype != torch.int32:
            got = f"{index.dtype} tensor of shape {tuple(index.shape)}" if isinstance(index, torch.Tensor) else \
                type(index).__name__
            raise ValueError(f"{name} must be a 1-D int32 tensor, got {got}")
        if index.device != q.device:
            raise ValueError(f"{name} is on {index.device}, q on {q.device}: move it to q's device")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if cu.numel() < 2:
            raise ValueError(f"{name} needs at least 2 entries [0, ..., total], got {cu.numel()}")
    num_q_segments, num_kv_segments = cu_seqlens_q.numel() - 1, cu_seqlens_k.numel() - 1
    if kv_index is None and num_q_segments != num_kv_segments:
        raise ValueError(f"without kv_index, cu_seqlens_q and cu_seqlens_k need the same number of segments, got "
                         f"{num_q_segments} and {num_kv_segments}")
    if kv_index is not None and kv_index.numel() != num_q_segments:
        raise ValueError(f"kv_index needs one entry per query segment ({num_q_segments}), got {kv_index.numel()}")


def _is_identity(kv_index_host: torch.Tensor, num_kv_segments: int) -> bool:
    """kv_index (on the host) maps query segment i to key/value segment i."""
    return kv_index_host.numel() == num_kv_segments and bool(
        torch.equal(kv_index_host.long(), torch.arange(num_kv_segments)))


def _check_values(q, k, cu_seqlens_q, cu_seqlens_k, kv_index, max_seqlen_q,
                  max_seqlen_k) -> tuple[int, int, bool]:
    """Value checks (one host read of the small index tensors); returns the max lengths (computed if None) and
    whether kv_index is the identity."""
    maxima = []
    for name, cu, total, given in (("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q),
                                   ("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k)):
        values = cu.cpu().long()
        if int(values[0]) != 0:
            raise ValueError(f"{name} must start at 0, got {int(values[0])}")
        lengths = values[1:] - values[:-1]
        if int(lengths.min()) < 0:
            raise ValueError(f"{name} must be non-decreasing, got {values.tolist()[:16]}")
        if int(values[-1]) != total:
            raise ValueError(f"{name} must end at the token count {total}, got {int(values[-1])}")
        longest = int(lengths.max())
        if given is not None and int(given) < longest:
            raise ValueError(f"max_seqlen {int(given)} is smaller than the longest segment {longest} in {name}")
        maxima.append(longest if given is None else int(given))
    kv = kv_index.cpu()
    num_kv_segments = cu_seqlens_k.numel() - 1
    if kv.numel() and (int(kv.min()) < 0 or int(kv.max()) >= num_kv_segments):
        raise ValueError(f"kv_index values must lie in [0, {num_kv_segments - 1}] (key/value segments), got "
                         f"{int(kv.min())} ... {int(kv.max())}")
    return maxima[0], maxima[1], _is_identity(kv, num_kv_segments)
