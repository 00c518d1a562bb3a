"""Part tokenizer: one token per frame per part, a learned mask token, time positions, padding handling."""
from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from bpmt_fast.attention import layout

from .layers import GroupedLinear, sinusoidal_positions


class PartTokenizer(nn.Module):
    """Poses `(B, T, J, C)` -> tokens `(B, P, T, d)`.

    Each part's joints are flattened into one frame feature (parts with fewer joints than the largest are
    zero-padded to `max_joints * C`, see `joint_valid`) and embedded with that part's own weights. Masked frames
    get the part's learned mask token (never zero, so a masked frame differs from padding); padded frames are
    zero and excluded later by the attention lengths.
    """

    def __init__(self, part_joints: list[tuple[int, ...]], num_joints: int, in_channels: int, dim: int):
        super().__init__()
        self.num_joints, self.in_channels = num_joints, in_channels
        max_joints = max(len(joints) for joints in part_joints)
        index = torch.full((len(part_joints), max_joints), num_joints)  # pad slot -> an all-zero extra joint
        for p, joints in enumerate(part_joints):
            index[p, : len(joints)] = torch.tensor(joints)
        self.register_buffer("joint_index", index, persistent=False)  # (P, Jmax)
        self.register_buffer("joint_valid", index < num_joints, persistent=False)  # (P, Jmax)
        self.feature_dim = max_joints * in_channels
        self.embed = GroupedLinear(len(part_joints), self.feature_dim, dim)
        self.mask_token = nn.Parameter(torch.randn(len(part_joints), dim) * 0.02)  # (P, d)

    @property
    def num_parts(self) -> int:
        return self.joint_index.shape[0]

    def part_features(self, poses: torch.Tensor) -> torch.Tensor:
        """`(B, T, J, C)` -> `(B, P, T, Jmax*C)`: each part's joints side by side, zeros in unused slots."""
        padded = torch.cat([poses, poses.new_zeros(*poses.shape[:2], 1, poses.shape[3])], dim=2)  # (B, T, J+1, C)
        gathered = padded[:, :, self.joint_index]  # (B, T, P, Jmax, C)
        return rearrange(gathered, "b t p j c -> b p t (j c)")

    def forward(self, poses, lengths=None, frame_mask=None):
        """poses `(B, T, J, C)`, lengths `(B,)`, frame_mask `(B, P, T)` bool (True = masked) -> `(B, P, T, d)`."""
        features = self.part_features(layout.zero_padding(poses, lengths))
        tokens = self.embed(features)  # (B, P, T, d)
        if frame_mask is not None:
            tokens = torch.where(frame_mask[..., None], self.mask_token[None, :, None, :].to(tokens.dtype), tokens)
        tokens = tokens + sinusoidal_positions(poses.shape[1], tokens.shape[-1], poses.device, tokens.dtype)
        if lengths is not None:  # padding stays exactly zero: it must not look like a frame
            tokens = tokens * layout.padding_mask(lengths, poses.shape[1])[:, None, :, None]
        return tokens
