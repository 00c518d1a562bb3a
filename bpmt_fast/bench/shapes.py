"""Named shape sets: the workloads every benchmark suite runs, full size or shrunk for `--quick`.

Attention shape sets are lists of `AttentionCase` (one attention call each); `train-step` is a list of
`TrainCase` (one optimizer step of a model). Sizes follow the model: B sequences x 5 parts are B*5 segments of
one attention call, and the 20 ordered part pairs of stage 2 are B*20 segments of one cross-attention call.
"""
from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from typing import Callable

import torch

NUM_PARTS = 5  # COCO-17 body parts of BPMT: torso, two arms, two legs
NUM_PAIRS = 20  # ordered part pairs of stage 2: 5 * 4


@dataclass(frozen=True)
class AttentionCase:
    """One attention call. `batch` counts sequences of the call (segments when packed)."""

    name: str
    batch: int
    n_q: int
    n_k: int
    heads: int
    head_dim: int
    layout: str = "padded"  # "padded": (B, N, H, D) + lengths | "packed": attention_varlen on (total, H, D)
    q_lengths: tuple[int, ...] | None = None  # None: every sequence is full length
    kv_lengths: tuple[int, ...] | None = None

    @property
    def masked(self) -> bool:
        """Does the call exclude keys (lengths or packed segments)? Decides which backends can run it."""
        return self.layout == "packed" or self.q_lengths is not None or self.kv_lengths is not None

    def lengths(self, side: str) -> torch.Tensor:
        """`(B,)` valid tokens per sequence for side "q" or "kv"."""
        given, n = (self.q_lengths, self.n_q) if side == "q" else (self.kv_lengths, self.n_k)
        return torch.tensor(given) if given is not None else torch.full((self.batch,), n, dtype=torch.long)

    def token_pairs(self) -> int:
        """Sum over sequences of (valid queries x valid keys): the useful work of softmax attention."""
        return int((self.lengths("q") * self.lengths("kv")).sum())

    def tokens(self, side: str) -> int:
        return int(self.lengths(side).sum())


@dataclass(frozen=True)
class TrainCase:
    """One training step (forward + backward + AdamW) of a model at a batch size and clip length."""

    name: str
    model: str  # "bpmt" | "baseline"
    stage: str  # "part" | "pair" | "finetune"
    batch: int
    frames: int
    dim: int = 128
    heads: int = 8
    part_layers: int = 2
    pair_layers: int = 1
    num_classes: int = 64


@dataclass(frozen=True)
class ShapeSet:
    name: str
    kind: str  # "attention" | "train-step"
    description: str
    build: Callable[[bool], list]  # quick -> cases

    def cases(self, quick: bool = False) -> list:
        return self.build(quick)


def gait3d_lengths() -> list[int]:
    """The 472 sequence lengths (frames) of real Gait3D sequences, shipped with the package."""
    text = importlib.resources.files("bpmt_fast.bench").joinpath("gait3d_lengths.txt").read_text()
    return [int(value) for value in text.replace(",", " ").split()]


def sample_lengths(count: int, seed: int = 0) -> list[int]:
    """`count` lengths drawn with replacement from the Gait3D lengths, the same for every run."""
    pool = torch.tensor(gait3d_lengths())
    picks = torch.randint(len(pool), (count,), generator=torch.Generator().manual_seed(seed))
    return pool[picks].tolist()


def _fixed(quick: bool) -> list[AttentionCase]:
    batch = 2 if quick else 256
    cases = [(60, 8, 32), (60, 4, 16), (240, 8, 32)]  # N, H, D: ours, the original BPMT config, longer clips
    if quick:
        cases = [(n // 4, h, d) for n, h, d in cases]
    return [AttentionCase(f"B{batch}x{NUM_PARTS} N{n} H{h} D{d}", batch * NUM_PARTS, n, n, h, d)
            for n, h, d in cases]


def _varlen(quick: bool) -> list[AttentionCase]:
    sequences = 3 if quick else 256
    lengths = sample_lengths(sequences)
    if quick:
        lengths = [max(1, n // 8) for n in lengths]  # same spread, CPU-sized
    per_segment = tuple(n for n in lengths for _ in range(NUM_PARTS))  # every part of a sequence shares its length
    n_max = max(per_segment)
    name = f"{sequences}x{NUM_PARTS} Gait3D lengths {min(lengths)}-{n_max} H8 D32"
    common = dict(batch=len(per_segment), n_q=n_max, n_k=n_max, heads=8, head_dim=32, q_lengths=per_segment,
                  kv_lengths=per_segment)
    return [AttentionCase(f"{name} padded", layout="padded", **common),
            AttentionCase(f"{name} packed", layout="packed", **common)]


def _cross_pairs(quick: bool) -> list[AttentionCase]:
    batch = 2 if quick else 256
    n = 60 if not quick else 16
    return [AttentionCase(f"B{batch}x{NUM_PAIRS} pairs N{n} H8 D32", batch * NUM_PAIRS, n, n, 8, 32)]


def _long(quick: bool) -> list[AttentionCase]:
    lengths = (64, 128, 256) if quick else (64, 256, 1024, 4096, 16384)
    batch, heads = (1, 2) if quick else (2, 8)
    return [AttentionCase(f"B{batch} N{n} H{heads} D64", batch, n, n, heads, 64) for n in lengths]


def _train_step(quick: bool) -> list[TrainCase]:
    if quick:
        tiny = dict(batch=4, frames=16, dim=32, heads=2, part_layers=1, pair_layers=1, num_classes=8)
        return [TrainCase("bpmt finetune B4 N16", "bpmt", "finetune", **tiny),
                TrainCase("baseline finetune B4 N16", "baseline", "finetune", **tiny)]
    return [TrainCase("bpmt finetune B256 N60", "bpmt", "finetune", 256, 60),
            TrainCase("bpmt finetune B256 N120", "bpmt", "finetune", 256, 120),
            TrainCase("bpmt pair B256 N60", "bpmt", "pair", 256, 60),
            TrainCase("baseline finetune B256 N60", "baseline", "finetune", 256, 60)]


SHAPE_SETS: dict[str, ShapeSet] = {s.name: s for s in (
    ShapeSet("bpmt-fixed", "attention", "B sequences x 5 parts as segments of one self-attention call, all full "
             "length (ours H8 D32, the original BPMT H4 D16, and 240-frame clips)", _fixed),
    ShapeSet("bpmt-varlen", "attention", "real Gait3D sequence lengths (fixed seed) x 5 parts: padded to the "
             "longest with lengths, as the model calls it, and packed (attention_varlen)", _varlen),
    ShapeSet("cross-pairs", "attention", "the 20 ordered part pairs of stage 2 as one cross-attention call",
             _cross_pairs),
    ShapeSet("long", "attention", "few long sequences, N from 64 up, D64: how time and memory scale with N", _long),
    ShapeSet("train-step", "train-step", "one forward + backward + AdamW step of BPMT / the baseline", _train_step),
)}


def select_shape_sets(names: list[str] | None, kind: str | None = None) -> list[ShapeSet]:
    """Shape sets by name (None: all) of one kind; unknown names raise ValueError listing the valid ones."""
    if names:
        unknown = [n for n in names if n not in SHAPE_SETS]
        if unknown:
            raise ValueError(f"unknown shape set(s) {', '.join(unknown)}; valid: {', '.join(SHAPE_SETS)}")
    chosen = [SHAPE_SETS[n] for n in (names or SHAPE_SETS)]
    return [s for s in chosen if kind is None or s.kind == kind]
