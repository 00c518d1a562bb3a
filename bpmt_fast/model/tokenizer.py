"""Part tokenizer: one token per frame per part, a learned mask token, time positions, padding handling."""
from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from bpmt_fast.attention import layout

from .layers import GroupedLinear, sinusoidal_positions
from .streams import compute_streams, joint_missing_from_frame_mask, stream_channels, validate_streams


class PartTokenizer(nn.Module):
    """Poses `(B, T, J, C)` -> tokens `(B, P, T, d)`.

    Each joint's input streams (`streams`, see bpmt_fast.model.streams: joints, bones, velocity, angles) are
    computed from the poses, then each part's joints are flattened into one frame feature (parts with fewer joints
    than the largest are zero-padded to `max_joints * F`, see `joint_valid`) and embedded with that part's own
    weights. Masked frames get the part's learned mask token (never zero, so a masked frame differs from padding),
    and their joints count as missing in every stream, so no neighbouring frame's velocity or child's bone leaks
    them. Padded frames are zero and excluded later by the attention lengths.

    `parents` `(J,)`: each joint's parent (the root its own), needed by the bones and angles streams.
    """

    def __init__(self, part_joints: list[tuple[int, ...]], num_joints: int, in_channels: int, dim: int,
                 streams=("joints",), parents: torch.Tensor | None = None):
        super().__init__()
        self.num_joints, self.in_channels = num_joints, in_channels
        self.streams = validate_streams(streams)
        if parents is None:
            if {"bones", "angles"} & set(self.streams):
                raise ValueError("the bones and angles streams need the skeleton's parent of each joint (parents=)")
            parents = torch.arange(num_joints)
        self.register_buffer("parents", torch.as_tensor(parents, dtype=torch.long), persistent=False)  # (J,)
        max_joints = max(len(joints) for joints in part_joints)
        index = torch.full((len(part_joints), max_joints), num_joints)  # pad slot -> an all-zero extra joint
        joint_part = torch.zeros(num_joints, dtype=torch.long)
        for p, joints in enumerate(part_joints):
            index[p, : len(joints)] = torch.tensor(joints)
            joint_part[list(joints)] = p
        self.register_buffer("joint_index", index, persistent=False)  # (P, Jmax)
        self.register_buffer("joint_valid", index < num_joints, persistent=False)  # (P, Jmax)
        self.register_buffer("joint_part", joint_part, persistent=False)  # (J,)
        self.target_dim = max_joints * in_channels  # what reconstruction predicts: the part's joints
        self.input_dim = max_joints * stream_channels(self.streams, in_channels)  # what the embedding reads
        self.embed = GroupedLinear(len(part_joints), self.input_dim, dim)
        self.mask_token = nn.Parameter(torch.randn(len(part_joints), dim) * 0.02)  # (P, d)

    @property
    def num_parts(self) -> int:
        return self.joint_index.shape[0]

    def part_features(self, features: torch.Tensor) -> torch.Tensor:
        """Per-joint features `(B, T, J, F)` -> `(B, P, T, Jmax*F)`: each part's joints side by side, zeros in
        unused slots. On poses (F = C) this is the reconstruction target."""
        padded = torch.cat([features, features.new_zeros(*features.shape[:2], 1, features.shape[3])], dim=2)
        gathered = padded[:, :, self.joint_index]  # (B, T, P, Jmax, F)
        return rearrange(gathered, "b t p j f -> b p t (j f)")

    def forward(self, poses, lengths=None, frame_mask=None):
        """poses `(B, T, J, C)`, lengths `(B,)`, frame_mask `(B, P, T)` bool (True = masked) -> `(B, P, T, d)`."""
        missing = None if frame_mask is None else joint_missing_from_frame_mask(frame_mask, self.joint_part)
        streams = compute_streams(layout.zero_padding(poses, lengths), self.streams, self.parents, missing)
        tokens = self.embed(self.part_features(streams))  # (B, P, T, d)
        if frame_mask is not None:
            tokens = torch.where(frame_mask[..., None], self.mask_token[None, :, None, :].to(tokens.dtype), tokens)
        tokens = tokens + sinusoidal_positions(poses.shape[1], tokens.shape[-1], poses.device, tokens.dtype)
        if lengths is not None:  # padding stays exactly zero: it must not look like a frame
            tokens = tokens * layout.padding_mask(lengths, poses.shape[1])[:, None, :, None]
        return tokens
