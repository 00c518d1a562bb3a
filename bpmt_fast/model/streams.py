"""Input streams of the model: joints, bones, velocity and bone angles, computed in torch from poses.

The tokenizer calls :func:`compute_streams` on the (normalised, augmented) poses ``(B, T, J, C)`` and embeds the
per-joint features ``(B, T, J, F)`` it returns. Pose channels are the ``D = C - 1`` coordinates (x, y for
``C = 3``; x, y, z for ``C = 4``) followed by the confidence; confidence 0 marks a missing joint and padded frames
(after a sequence's length) are all zeros, so they are missing joints too.

A joint is *present* at a frame when its confidence is > 0 and ``missing`` (if given) is False there; every other
joint is *absent*. Absent joints contribute nothing: their coordinates, whatever they hold (even NaN or inf), never
reach an output value. The streams, each a per-joint feature of the given width:

* ``joints``   (C): the joint's coordinates and confidence if it is present, else all zeros.
* ``bones``    (D): ``x[j] - x[parent[j]]`` if the joint and its parent are both present, else 0; a root (a joint
                    that is its own parent) has bone 0.
* ``velocity`` (2 D): ``[x(t+1) - x(t), x(t+2) - x(t)]`` of the joint. The first D values are 0 unless ``t + 1 < T``
                    and the joint is present at both t and t+1; the last D are 0 unless ``t + 2 < T`` and the joint
                    is present at both t and t+2. Padded frames are absent, so the last frames of a sequence get 0
                    exactly as the last frames of the tensor do.
* ``angles``   (D): the bone's direction ``bone / |bone|`` (a unit vector) if ``|bone| >= 1e-6`` (``ANGLE_EPS``),
                    else 0 -- in particular 0 wherever the bone is 0 (absent joint or parent, root, zero length).

Streams are concatenated along the last axis in the order asked for. Everything is vectorised, needs no host
synchronisation (no ``.item()``, no boolean indexing, no branch on values), runs on any device, and is computed in
at least float32 (half inputs are upcast) and returned in the input's dtype. Finite inputs give finite outputs, and
the gradient is finite too (zero-length bones included).

``missing`` exists for masked-reconstruction pretraining: the joints of masked frames are passed as missing, so no
stream leaks them (the velocity of the frame before a masked frame, or the bone of a child of a masked joint, would
otherwise reveal the masked coordinates). :func:`joint_missing_from_frame_mask` turns the model's per-part frame mask
into that per-joint mask.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .skeleton import SkeletonFormat

__all__ = [
    "STREAMS",
    "ANGLE_EPS",
    "validate_streams",
    "parent_index",
    "stream_channels",
    "compute_streams",
    "joint_missing_from_frame_mask",
]

STREAMS: tuple[str, ...] = ("joints", "bones", "velocity", "angles")
ANGLE_EPS = 1e-6  # bones shorter than this have no direction: their angle stream is 0


def validate_streams(streams: Sequence[str]) -> tuple[str, ...]:
    """``streams`` as a tuple, after checking it is non-empty, has no duplicates and only names in ``STREAMS``."""
    valid = ", ".join(STREAMS)
    if isinstance(streams, str):
        raise ValueError(f"streams must be a sequence of names, not the string {streams!r}; valid names: {valid}")
    streams = tuple(streams)
    if not streams:
        raise ValueError(f"streams must name at least one stream; valid names: {valid}")
    for name in streams:
        if name not in STREAMS:
            raise ValueError(f"unknown stream {name!r}; valid names: {valid}")
    for name in streams:
        if streams.count(name) > 1:
            raise ValueError(f"stream {name!r} is listed {streams.count(name)} times; valid names: {valid}")
    return streams


def parent_index(skeleton: SkeletonFormat) -> torch.Tensor:
    """``(J,)`` long: the parent of each joint from ``skeleton.bones`` (parent, child); the root is its own parent."""
    parents = list(range(skeleton.num_joints))
    for parent, child in skeleton.bones:
        parents[child] = parent
    return torch.tensor(parents, dtype=torch.long)


def stream_channels(streams: Sequence[str], channels: int) -> int:
    """Per-joint feature width of ``streams`` for poses with ``channels`` channels (``D = channels - 1`` coords):
    joints C, bones D, velocity 2 D, angles D."""
    streams = validate_streams(streams)
    if channels < 2:
        raise ValueError(f"poses need at least one coordinate and a confidence channel, got {channels} channels")
    d = channels - 1
    width = {"joints": channels, "bones": d, "velocity": 2 * d, "angles": d}
    return sum(width[name] for name in streams)


def _later(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` shifted k frames back along dim 1: entry t holds frame t + k, zeros (False) where t + k >= T."""
    t = x.shape[1]
    tail = x.new_zeros((x.shape[0], min(k, t), *x.shape[2:]))
    return torch.cat([x[:, k:], tail], dim=1)


def compute_streams(
    poses: torch.Tensor,
    streams: Sequence[str],
    parents: torch.Tensor,
    missing: torch.Tensor | None = None,
) -> torch.Tensor:
    """poses ``(B, T, J, C)`` -> ``(B, T, J, stream_channels(streams, C))``, the streams concatenated in order.

    ``parents`` is ``(J,)`` long (see :func:`parent_index`); ``missing`` an optional ``(B, T, J)`` bool of joints to
    treat as absent besides those with confidence 0. The rules of each stream are in the module docstring.
    """
    streams = validate_streams(streams)
    if poses.ndim != 4:
        raise ValueError(f"poses must be (B, T, J, C), got shape {tuple(poses.shape)}")
    if not poses.is_floating_point():
        raise TypeError(f"poses must be a floating-point tensor, got {poses.dtype}")
    b, t, j, c = poses.shape
    stream_channels(streams, c)  # checks the channel count
    if parents.shape != (j,) or parents.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"parents must be a ({j},) integer tensor, got {parents.dtype} {tuple(parents.shape)}")
    if missing is not None and (missing.shape != (b, t, j) or missing.dtype != torch.bool):
        raise ValueError(f"missing must be a ({b}, {t}, {j}) bool tensor, got {missing.dtype} {tuple(missing.shape)}")

    work = poses.to(torch.promote_types(poses.dtype, torch.float32))
    coords, conf = work[..., :-1], work[..., -1]
    present = conf > 0  # NaN confidence is absent too
    if missing is not None:
        present = present & ~missing.to(present.device)
    zero = work.new_zeros(())

    out: dict[str, torch.Tensor] = {}
    if "joints" in streams:
        out["joints"] = torch.where(present[..., None], work, zero)
    if "bones" in streams or "angles" in streams:
        parents = parents.to(device=poses.device, dtype=torch.long)
        not_root = parents != torch.arange(j, device=poses.device)
        bone_ok = present & present[:, :, parents] & not_root
        # where() selects, so an absent joint's coordinates (even NaN) never reach the value or its gradient
        bones = torch.where(bone_ok[..., None], coords - coords[:, :, parents], zero)
        out["bones"] = bones
        if "angles" in streams:
            sq = (bones * bones).sum(-1, keepdim=True)
            long_enough = sq >= ANGLE_EPS**2
            unit = bones * torch.rsqrt(sq.clamp_min(ANGLE_EPS**2))  # clamped: finite value and gradient at 0
            out["angles"] = torch.where(long_enough, unit, zero)
    if "velocity" in streams:
        terms = []
        for k in (1, 2):
            ok = present & _later(present, k)
            terms.append(torch.where(ok[..., None], _later(coords, k) - coords, zero))
        out["velocity"] = torch.cat(terms, dim=-1)
    return torch.cat([out[name] for name in streams], dim=-1).to(poses.dtype)


def joint_missing_from_frame_mask(frame_mask: torch.Tensor, joint_part: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """frame_mask ``(B, P, T)`` bool (True = that part's frame is masked) -> ``(B, T, J)`` bool, True at the joints
    of masked parts: ``out[b, t, j] = frame_mask[b, joint_part[j], t]``. ``joint_part`` is ``(J,)``, the part index
    of each joint (``SkeletonFormat.joint_part``)."""
    if frame_mask.ndim != 3:
        raise ValueError(f"frame_mask must be (B, P, T), got shape {tuple(frame_mask.shape)}")
    # A tensor's values are not checked: that would need a host sync (and break torch.compile graphs).
    bad_values = not isinstance(joint_part, torch.Tensor) and any(not 0 <= p < frame_mask.shape[1] for p in joint_part)
    part = torch.as_tensor(joint_part, dtype=torch.long, device=frame_mask.device)
    if part.ndim != 1 or bad_values:
        raise ValueError(f"joint_part must be (J,) part indices in [0, {frame_mask.shape[1]}), got {joint_part}")
    return frame_mask.bool()[:, part, :].transpose(1, 2)
