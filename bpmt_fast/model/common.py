"""Pieces shared by BPMT and the baseline: the model config, input checks, encoders and the identity head."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from bpmt_fast.attention import layout
from bpmt_fast.attention.layout import PackedLayout

from .attention_blocks import PartTransformerBlock, wants_packed_layout
from .layers import GlobalBatchNorm1d, GroupedLayerNorm
from .skeleton import FORMATS
from .streams import STREAMS


@dataclass
class ModelConfig:
    """The architecture. Types and the "range" metadata are checked when a config is read from YAML
    (bpmt_fast.train.config, which also requires dim divisible by heads); direct construction trusts the caller."""

    skeleton: Literal[tuple(FORMATS)] = "coco17"  # joint layout of the input poses (bpmt_fast.model.skeleton)
    in_channels: Literal[3, 4] = 3  # per joint: x, y, confidence (2D) or x, y, z, confidence (3D)
    dim: int = field(default=64, metadata={"range": "[1, inf)"})  # token width
    heads: int = field(default=4, metadata={"range": "[1, inf)"})  # attention heads (head_dim = dim / heads)
    # depth of each stage-1 part encoder (baseline: of its whole-body encoder)
    part_layers: int = field(default=2, metadata={"range": "[1, inf)"})
    pair_layers: int = field(default=1, metadata={"range": "[1, inf)"})  # depth of each stage-2 cross-part stack
    mlp_ratio: float = field(default=4.0, metadata={"range": "(0, inf)"})  # FFN hidden width / dim
    dropout: float = field(default=0.1, metadata={"range": "[0, 1)"})
    embedding_dim: int = field(default=128, metadata={"range": "[1, inf)"})  # identity embedding size
    # >0 adds a classifier (cross-entropy) on top of the embedding; the training pipeline sets it
    num_classes: int = field(default=0, metadata={"range": "[0, inf)"})
    attn_backend: str | None = None  # None: env BPMT_ATTN_BACKEND, else auto
    # per-joint input features the tokenizer embeds (bpmt_fast.model.streams): joints, bones, velocity, angles
    streams: list[Literal[STREAMS]] = field(default_factory=lambda: ["joints"])
    # finetune only: IIP-style inter-part attention over the P part summaries (0: off; BPMT only)
    inter_part_layers: int = field(default=0, metadata={"range": "[0, inf)"})


def check_pose_batch(poses, lengths, frame_mask, num_joints: int, in_channels: int, num_parts: int,
                     check_values: bool = True):
    """Validate a model input batch; returns lengths (None when the value checks find every sequence full).

    Shape and dtype checks are free and always run. The value checks (lengths in [1, T], no NaN/inf in valid
    frames) read tensors back to the host, a sync per forward: they run only with `check_values` (the models
    pass `not self.training` unless told otherwise) and never while torch.compile traces. Training batches come
    from the data path, which validates and normalises every pose sequence once when it is loaded.
    """
    if not isinstance(poses, torch.Tensor) or poses.dim() != 4:
        raise ValueError(f"poses must be a (B, T, J, C) tensor, got {getattr(poses, 'shape', type(poses))}")
    batch, frames, joints, channels = poses.shape
    if joints != num_joints or channels != in_channels:
        raise ValueError(f"poses have {joints} joints x {channels} channels, the model expects "
                         f"{num_joints} x {in_channels}")
    if not poses.is_floating_point():
        raise ValueError(f"poses must be floating point, got {poses.dtype}")
    if frame_mask is not None and (frame_mask.shape != (batch, num_parts, frames) or frame_mask.dtype != torch.bool):
        raise ValueError(f"frame_mask must be bool of shape ({batch}, {num_parts}, {frames}), got "
                         f"{frame_mask.dtype} {tuple(frame_mask.shape)}")
    if lengths is not None and lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    if lengths is not None and (lengths.dtype.is_floating_point or lengths.dtype == torch.bool):
        raise ValueError(f"lengths must be an integer tensor, got {lengths.dtype}")
    if not check_values or torch.compiler.is_compiling():
        return lengths
    return _check_pose_values(poses, lengths, frames)


def _check_pose_values(poses, lengths, frames: int):
    """The value checks of check_pose_batch (host syncs)."""
    if lengths is not None:
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1 or high > frames:
            raise ValueError(f"lengths must lie in [1, {frames}], got values from {low} to {high}")
        if low == frames:
            lengths = None  # nothing is padded: lets mask-free kernels run
    valid = poses if lengths is None else poses[torch.arange(frames, device=poses.device)[None] < lengths[:, None]]
    if not bool(torch.isfinite(valid).all()):
        raise ValueError("poses contain NaN or inf in valid frames; clean or mark them (confidence 0) first")
    return lengths


def attention_layout(backend, lengths, batch: int, groups: int, frames: int, device,
                     host_stats: tuple[int, int] | None) -> PackedLayout:
    """The PackedLayout of one forward's B*groups sequences, built once and shared by every attention call.

    `host_stats` = (max length, length sum) as host ints, or None when the backend needs no packing."""
    if lengths is None:
        return PackedLayout.full(batch * groups, frames, device)
    pack = host_stats is not None
    max_len, length_sum = host_stats if pack else (None, None)
    return PackedLayout.from_lengths(lengths.to(device), groups, frames, max_len, length_sum, pack=pack)


def host_length_stats(backend, lengths, frames: int, device, max_length: int | None,
                      total_length: int | None) -> tuple[int, int] | None:
    """(max length, length sum) host ints for packing layouts; None when `backend` does not pack on `device`.

    Given by the caller (the collate knows lengths on the CPU) they cost nothing; else one host sync."""
    if lengths is None or not wants_packed_layout(backend, device.type):
        return None
    if max_length is not None and total_length is not None:
        return int(max_length), int(total_length)
    return layout.host_length_stats(lengths)


def valid_frames(lengths, batch: int, frames: int, device) -> torch.Tensor:
    """`(B, T)` bool, True at real frames."""
    if lengths is None:
        return torch.ones(batch, frames, dtype=torch.bool, device=device)
    return torch.arange(frames, device=device)[None] < lengths[:, None]


class PartEncoder(nn.Module):
    """A stack of transformer blocks over G groups at once, with a final norm."""

    def __init__(self, groups: int, config: ModelConfig):
        super().__init__()
        self.blocks = nn.ModuleList(
            PartTransformerBlock(groups, config.dim, config.heads, config.mlp_ratio, config.dropout,
                                 config.attn_backend)
            for _ in range(config.part_layers))
        self.norm = GroupedLayerNorm(groups, config.dim)

    def forward(self, x, layout=None):
        """x `(B, G, N, d)`, layout: the forward's PackedLayout of the B*G sequences (or lengths / None)."""
        for block in self.blocks:
            x = block(x, layout)
        return self.norm(x)


class IdentityHead(nn.Module):
    """Pooled features -> identity embedding, BN-neck and optional classifier (OpenGait-style).

    No dropout between the pooled features and the BN-neck: dropout there shifts the variance (and, through the
    max-pooling, the mean) the BN statistics are learned on, so eval-mode embeddings no longer match what the
    classifier was trained on. On PsyMo that alone kept the training-side rank-1 at 0.6 and the cross-entropy near
    uniform guessing (tests/test_models.py::test_identity_head_is_deterministic_in_training)."""

    def __init__(self, in_dim: int, config: ModelConfig):
        super().__init__()
        # No bias: the BN-neck removes it and distances between embeddings cancel it.
        self.embed = nn.Linear(in_dim, config.embedding_dim, bias=False)
        self.neck = GlobalBatchNorm1d(config.embedding_dim)  # global-batch statistics under DDP
        classes = config.num_classes
        self.classifier = nn.Linear(config.embedding_dim, classes, bias=False) if classes else None

    def forward(self, pooled: torch.Tensor) -> dict:
        embeddings = self.embed(pooled)  # (B, E): metric losses use this
        normed = self.neck(embeddings)  # (B, E): retrieval uses this
        logits = self.classifier(normed) if self.classifier is not None else None
        return {"embeddings": embeddings, "normed": normed, "logits": logits}


def reconstruction(pred, target, frame_mask, valid, joint_valid) -> dict:
    """What the masked-reconstruction loss needs (see bpmt_fast.train.losses.reconstruction_terms)."""
    return {"pred": pred, "target": target, "frame_mask": frame_mask, "valid": valid, "joint_valid": joint_valid}


def model_output(training_feat: dict, inference_feat: dict, **summary) -> dict:
    """The OpenGait-style result dict every model returns."""
    return {"training_feat": training_feat, "inference_feat": inference_feat,
            "visual_summary": {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in summary.items()}}
