"""Conversions between the padded `(B, N, H, D)` + lengths layout and the packed `(total, H, D)` + cu_seqlens one."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def cu_seqlens_from_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """`(B,)` lengths -> `(B + 1,)` int32 cumulative offsets starting at 0."""
    return F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))


def lengths_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    return (cu_seqlens[1:] - cu_seqlens[:-1]).long()


def full_lengths(batch: int, n: int, device) -> torch.Tensor:
    return torch.full((batch,), n, dtype=torch.long, device=device)


def padding_mask(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """`(B, N)` bool, True at valid positions."""
    return torch.arange(n, device=lengths.device)[None, :] < lengths[:, None]


def pack(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`(B, N, H, D)` -> `(sum(lengths), H, D)`, sequences back to back."""
    return x[padding_mask(lengths.to(x.device), x.shape[1])]


def unpack(packed: torch.Tensor, lengths: torch.Tensor, n: int) -> torch.Tensor:
    """`(total, H, D)` -> `(B, N, H, D)` with zeros in the padding."""
    lengths = lengths.to(packed.device)
    out = packed.new_zeros(lengths.shape[0], n, *packed.shape[1:])
    return out.index_put((padding_mask(lengths, n),), packed)


def zero_padding(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Zero the padded tokens of `(B, N, ...)` with where(), so NaN/inf in padding cannot leak."""
    if lengths is None:
        return x
    mask = padding_mask(lengths.to(x.device), x.shape[1])
    return torch.where(mask.view(*mask.shape, *([1] * (x.dim() - 2))), x, 0.0)


@dataclass(frozen=True, eq=False)
class PackedLayout:
    """Where the valid tokens of S padded sequences `(S, N, ...)` lie: built once per forward, used by every call.

    A grouped attention call runs S = B*G sequences (G parts, part pairs, or 1), sequence `b*G + g` holding
    `lengths[b]` valid tokens. Padding-aware backends use `lengths` / `valid`; packing backends gather the valid
    tokens with the integer `index` (no boolean mask, so no `nonzero` and no host sync) and scatter their output
    back with it. `lengths`, `valid` and `index` are None when nothing is padded: packing is then a reshape view.
    `cu_seqlens` is None when the layout was built for padded backends only (`pack=False`, with padding).
    """

    sequences: int  # S = B * G
    n: int  # padded tokens per sequence
    lengths: torch.Tensor | None  # (S,) long: valid tokens per sequence
    valid: torch.Tensor | None  # (S, N) bool: True at valid tokens
    cu_seqlens: torch.Tensor | None  # (S + 1,) int32 offsets of the packed sequences
    index: torch.Tensor | None  # (total,) int64: row of each valid token in the flattened (S*N) token axis
    max_seqlen: int  # host int: the longest sequence
    total: int | None  # host int: valid tokens of all S sequences

    @classmethod
    def full(cls, sequences: int, n: int, device) -> "PackedLayout":
        """S sequences without padding: packing is a reshape, offsets are multiples of N (a free arange)."""
        cu = torch.arange(0, (sequences + 1) * n, n, dtype=torch.int32, device=device)  # (S + 1,)
        return cls(sequences, n, None, None, cu, None, n, sequences * n)

    @classmethod
    def from_lengths(cls, lengths: torch.Tensor, groups: int, n: int, max_len: int | None = None,
                     length_sum: int | None = None, *, pack: bool = True) -> "PackedLayout":
        """Layout of `B*groups` sequences of N tokens from per-sample `lengths` `(B,)` (each repeated per group).

        `max_len = int(lengths.max())` and `length_sum = int(lengths.sum())` are host ints the caller usually
        has for free (the collate's CPU lengths); given both, nothing here reads the device. Missing, they cost
        one host sync, and only when `pack` (padded backends need neither). Lengths must lie in [1, N].
        """
        batch, sequences = lengths.shape[0], lengths.shape[0] * groups
        if pack and (max_len is None or length_sum is None):
            max_len, length_sum = host_length_stats(lengths)
        if max_len == n and length_sum == batch * n:  # known on the host: nothing is padded
            return cls.full(sequences, n, lengths.device)
        seq_lengths = lengths.long().repeat_interleave(groups)  # (S,) matches the (b g) flattening
        valid = torch.arange(n, device=lengths.device)[None, :] < seq_lengths[:, None]  # (S, N)
        if not pack:
            return cls(sequences, n, seq_lengths, valid, None, None, n if max_len is None else max_len, None)
        total = groups * length_sum
        cu = F.pad(torch.cumsum(seq_lengths, 0, dtype=torch.int32), (1, 0))  # (S + 1,)
        # Token t of sequence s sits at packed row cu[s] + t and padded row s*N + t: shift each run by s*N - cu[s].
        shift = torch.arange(sequences, device=lengths.device) * n - cu[:-1]  # (S,) int64
        index = torch.arange(total, device=lengths.device) + shift.repeat_interleave(seq_lengths, output_size=total)
        return cls(sequences, n, seq_lengths, valid, cu, index, max_len, total)  # index (total,)

    @property
    def padded(self) -> bool:
        """Some sequence is shorter than N."""
        return self.lengths is not None

    @property
    def packed(self) -> bool:
        """Offsets (and the gather index, where needed) were built."""
        return self.cu_seqlens is not None

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """`(S, N, ...)` -> `(total, ...)`: one row gather, or a reshape (a view when x allows) without padding."""
        flat = x.reshape(self.sequences * self.n, *x.shape[2:])  # (S*N, ...)
        return flat if self.index is None else flat.index_select(0, self.index)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """`(total, ...)` -> `(S, N, ...)` with zeros in the padding: one scatter into zeros, or a reshape."""
        if self.index is not None:
            out = packed.new_zeros(self.sequences * self.n, *packed.shape[1:])  # (S*N, ...)
            packed = out.index_copy(0, self.index, packed)
        return packed.reshape(self.sequences, self.n, *packed.shape[1:])

    def zero_padding(self, x: torch.Tensor) -> torch.Tensor:
        """Zero the padded tokens of `(S, N, ...)` with where(), so NaN/inf there cannot leak."""
        if self.valid is None:
            return x
        return torch.where(self.valid.view(*self.valid.shape, *([1] * (x.dim() - 2))), x, 0.0)


def host_length_stats(lengths: torch.Tensor) -> tuple[int, int]:
    """`(max, sum)` of lengths as host ints, read back in one transfer (one sync on a GPU)."""
    longest, length_sum = torch.stack([lengths.max(), lengths.sum()]).tolist()
    return int(longest), int(length_sum)
