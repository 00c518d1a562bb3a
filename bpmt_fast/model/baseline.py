"""Baseline: a plain whole-skeleton transformer (one token per frame, all joints), same interface as BPMT.

It is the one-group case of the same machinery: a tokenizer with a single "body" part, a one-group encoder,
the same pooling and identity head. Stage "part" is masked-frame pretraining of the whole skeleton.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .common import (IdentityHead, ModelConfig, PartEncoder, attention_layout, check_pose_batch, host_length_stats,
                     model_output, reconstruction, valid_frames)
from .layers import GroupedLinear, masked_temporal_pool
from .skeleton import get_format
from .streams import parent_index
from .tokenizer import PartTokenizer

BASELINE_STAGES = ("part", "finetune")


class Baseline(nn.Module):
    # Modules each stage trains (see BPMT.STAGE_MODULES).
    STAGE_MODULES = {"part": ("tokenizer", "encoder", "decoder"), "finetune": ("tokenizer.embed", "encoder", "head")}

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        self.skeleton = get_format(config.skeleton)
        self.tokenizer = PartTokenizer([tuple(range(self.skeleton.num_joints))], self.skeleton.num_joints,
                                       config.in_channels, config.dim, config.streams, parent_index(self.skeleton))
        self.encoder = PartEncoder(1, config)
        self.decoder = GroupedLinear(1, config.dim, self.tokenizer.target_dim)
        self.head = IdentityHead(2 * config.dim, config)

    def forward(self, poses, lengths=None, frame_mask=None, stage: str = "finetune", *, max_length: int | None = None,
                total_length: int | None = None, check_values: bool | None = None) -> dict:
        """poses `(B, T, J, C)`, lengths `(B,)`, frame_mask `(B, 1, T)` bool (True = masked frame).

        `max_length`, `total_length`, `check_values`: as in BPMT.forward."""
        if stage not in BASELINE_STAGES:
            raise ValueError(f"the baseline has stages {', '.join(BASELINE_STAGES)}, got {stage!r}")
        check_values = not self.training if check_values is None else check_values
        lengths = check_pose_batch(poses, lengths, frame_mask, self.skeleton.num_joints, self.config.in_channels, 1,
                                   check_values)
        batch, frames = poses.shape[:2]
        backend = self.encoder.blocks[0].attn.backend
        stats = host_length_stats(backend, lengths, frames, poses.device, max_length, total_length)
        valid = valid_frames(lengths, batch, frames, poses.device)
        body_layout = attention_layout(backend, lengths, batch, 1, frames, poses.device, stats)
        features = self.encoder(self.tokenizer(poses, lengths, frame_mask), body_layout)  # (B, 1, T, d)
        summary = {"lengths": valid.sum(1)}
        if stage == "part":
            target = self.tokenizer.part_features(torch.where(valid[:, :, None, None], poses, 0.0))
            recon = reconstruction(self.decoder(features), target, frame_mask, valid, self.tokenizer.joint_valid)
            return model_output({"reconstruction": recon}, {}, **summary)
        head = self.head(masked_temporal_pool(features, valid).flatten(1))
        return model_output({"embeddings": head["embeddings"], "logits": head["logits"]},
                            {"embeddings": head["normed"]}, **summary)
