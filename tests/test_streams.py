"""Input streams (joints, bones, velocity, angles): hand-computed cases, a plain-loop reference, masking, dtypes."""
import math

import pytest
import torch

from bpmt_fast.model.skeleton import PART_NAMES, get_format
from bpmt_fast.model.streams import (
    STREAMS,
    compute_streams,
    joint_missing_from_frame_mask,
    parent_index,
    stream_channels,
)

pytestmark = pytest.mark.usefixtures("single_thread")

CHAIN = torch.tensor([0, 0, 1, 2])  # 0 (root) -> 1 -> 2 -> 3
COCO = get_format("coco17")


def _chain_poses() -> torch.Tensor:
    """(1, 4, 4, 3) 2D poses on the chain. Frame 3 is padding; joint 1 is missing at frame 1 (garbage coordinates),
    joint 3 at frame 2; the bone 1 -> 2 has zero length at frame 0."""
    frames = [
        [[0, 0, 1.0], [3, 4, 0.9], [3, 4, 0.5], [6, 8, 0.8]],
        [[1, 0, 0.7], [9, 9, 0.0], [4, 4, 1.0], [4, 6, 0.6]],
        [[2, 1, 1.0], [2, 5, 0.4], [5, 5, 1.0], [7, 7, 0.0]],
        [[0, 0, 0.0], [0, 0, 0.0], [0, 0, 0.0], [0, 0, 0.0]],
    ]
    return torch.tensor([frames], dtype=torch.float32)


# Expected streams of _chain_poses, (T, J, width) per stream, worked out by hand.
CHAIN_EXPECTED = {
    "joints": [
        [[0, 0, 1.0], [3, 4, 0.9], [3, 4, 0.5], [6, 8, 0.8]],
        [[1, 0, 0.7], [0, 0, 0.0], [4, 4, 1.0], [4, 6, 0.6]],  # joint 1 missing: zeros, not (9, 9)
        [[2, 1, 1.0], [2, 5, 0.4], [5, 5, 1.0], [0, 0, 0.0]],
        [[0, 0, 0.0], [0, 0, 0.0], [0, 0, 0.0], [0, 0, 0.0]],
    ],
    "bones": [
        [[0, 0], [3, 4], [0, 0], [3, 4]],  # root 0; 1->2 zero length
        [[0, 0], [0, 0], [0, 0], [0, 2]],  # joint 1 missing: its bone and its child's (2) are 0
        [[0, 0], [0, 4], [3, 0], [0, 0]],  # joint 3 missing
        [[0, 0], [0, 0], [0, 0], [0, 0]],
    ],
    "velocity": [  # [x(t+1) - x(t), x(t+2) - x(t)]
        [[1, 0, 2, 1], [0, 0, -1, 1], [1, 0, 2, 1], [-2, -2, 0, 0]],  # 1 missing at t+1; 3 missing at t+2
        [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]],  # t+2 is padding; 1 missing at t; 3 at t+1
        [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],  # t+1 is padding, t+2 past the end
        [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    ],
    "angles": [
        [[0, 0], [0.6, 0.8], [0, 0], [0.6, 0.8]],  # zero-length bone: 0, not NaN
        [[0, 0], [0, 0], [0, 0], [0, 1]],
        [[0, 0], [0, 1], [1, 0], [0, 0]],
        [[0, 0], [0, 0], [0, 0], [0, 0]],
    ],
}


def _expected(streams, table=CHAIN_EXPECTED):
    return torch.cat([torch.tensor([table[s]], dtype=torch.float32) for s in streams], dim=-1)


# ---- hand-computed -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", STREAMS)
def test_each_stream_matches_hand_computed_chain(stream):
    out = compute_streams(_chain_poses(), [stream], CHAIN)
    assert out.shape == (1, 4, 4, stream_channels([stream], 3))
    torch.testing.assert_close(out, _expected([stream]), rtol=0, atol=1e-6)


def test_streams_concatenate_in_the_order_given():
    order = ("angles", "joints", "velocity", "bones")
    out = compute_streams(_chain_poses(), order, CHAIN)
    assert out.shape[-1] == stream_channels(order, 3) == 2 + 3 + 4 + 2
    torch.testing.assert_close(out, _expected(order), rtol=0, atol=1e-6)


def test_end_of_tensor_velocity_equals_end_of_sequence_velocity():
    """Without the padded frame the first three frames are unchanged: the tensor's end zeroes like padding."""
    out = compute_streams(_chain_poses()[:, :3], STREAMS, CHAIN)
    torch.testing.assert_close(out, _expected(STREAMS)[:, :3], rtol=0, atol=1e-6)


def test_short_sequences():
    one = compute_streams(_chain_poses()[:, :1], ["velocity"], CHAIN)
    assert one.shape == (1, 1, 4, 4) and not one.any()
    two = compute_streams(_chain_poses()[:, :2], ["velocity"], CHAIN)
    expected = torch.tensor(CHAIN_EXPECTED["velocity"][:2], dtype=torch.float32)
    expected[0, :, 2:] = 0  # t + 2 is past the end now
    expected[1] = 0  # so is t + 1 for the last frame
    torch.testing.assert_close(two[0], expected, rtol=0, atol=0)
    assert compute_streams(_chain_poses()[:, :0], STREAMS, CHAIN).shape == (1, 0, 4, 3 + 2 + 4 + 2)


def test_missing_mask_hand_computed():
    """Joint 2 passed as missing at frame 1: its joint values, its child's bone and angle, and the velocity terms
    from frame 0 to frame 1 and from frame 1 on are zero; everything else is as without the mask."""
    missing = torch.zeros(1, 4, 4, dtype=torch.bool)
    missing[0, 1, 2] = True
    out = compute_streams(_chain_poses(), STREAMS, CHAIN, missing=missing)
    table = {k: [[list(v) for v in f] for f in frames] for k, frames in CHAIN_EXPECTED.items()}
    table["joints"][1][2] = [0, 0, 0]
    table["bones"][1][3] = [0, 0]  # parent 2 masked
    table["angles"][1][3] = [0, 0]
    table["velocity"][0][2] = [0, 0, 2, 1]  # x(1) - x(0) involves the masked frame; x(2) - x(0) does not
    table["velocity"][1][2] = [0, 0, 0, 0]
    torch.testing.assert_close(out, _expected(STREAMS, table), rtol=0, atol=1e-6)


def test_angle_threshold_and_zero_length_bones():
    """A bone shorter than 1e-6 has angle 0 (but keeps its bone value); a longer one a unit vector; no NaN."""
    poses = torch.tensor([[[[0, 0, 1.0], [5e-7, 0, 1.0], [5e-7, 3e-6, 1.0], [5e-7, 3e-6, 1.0]]]])
    out = compute_streams(poses, ["bones", "angles"], CHAIN)
    torch.testing.assert_close(out[0, 0, :, :2], torch.tensor([[0, 0], [5e-7, 0], [0, 3e-6], [0, 0.0]]))
    torch.testing.assert_close(out[0, 0, :, 2:], torch.tensor([[0, 0], [0, 0], [0, 1], [0, 0.0]]), rtol=0, atol=1e-6)


def test_zero_length_bones_have_finite_gradients():
    poses = torch.tensor([[[[1, 1, 1.0], [1, 1, 1.0], [1, 1, 0.0], [1, 1, 1.0]]] * 3], requires_grad=True)
    out = compute_streams(poses, STREAMS, CHAIN)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(poses.grad).all()


def test_3d_poses_hand_computed():
    """C = 4 (x, y, z, confidence) on a 3-joint chain, two frames."""
    poses = torch.tensor([[
        [[0, 0, 0, 1.0], [1, 2, 2, 0.5], [1, 2, 2, 1.0]],
        [[0, 0, 1, 1.0], [1, 2, 5, 0.5], [4, 6, 2, 0.0]],
    ]])  # fmt: skip
    out = compute_streams(poses, STREAMS, torch.tensor([0, 0, 1]))
    assert out.shape == (1, 2, 3, 4 + 3 + 6 + 3) == (1, 2, 3, stream_channels(STREAMS, 4))
    expected = torch.tensor([[
        [  # joints | bones | velocity (x1 - x0, x2 - x0) | angles
            [0, 0, 0, 1.0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
            [1, 2, 2, 0.5, 1, 2, 2, 0, 0, 3, 0, 0, 0, 1 / 3, 2 / 3, 2 / 3],
            [1, 2, 2, 1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # zero-length bone; missing at t+1
        ],
        [
            [0, 0, 1, 1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [1, 2, 5, 0.5, 1, 2, 4, 0, 0, 0, 0, 0, 0, 1 / math.sqrt(21), 2 / math.sqrt(21), 4 / math.sqrt(21)],
            [0, 0, 0, 0.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ],
    ]])  # fmt: skip
    torch.testing.assert_close(out, expected)


def test_parent_index_of_coco17():
    expected = torch.tensor([0, 0, 0, 1, 2, 0, 0, 5, 6, 7, 8, 5, 6, 11, 12, 13, 14])
    assert parent_index(COCO).dtype == torch.long
    assert torch.equal(parent_index(COCO), expected)


@pytest.mark.parametrize("name", ["coco17", "openpose18", "openpose25", "halpe26"])
def test_parent_index_follows_bones(name):
    fmt = get_format(name)
    parents = parent_index(fmt).tolist()
    assert sorted((p, c) for c, p in enumerate(parents) if p != c) == sorted(fmt.bones)
    assert sum(p == c for c, p in enumerate(parents)) == 1


def test_stream_channels():
    assert stream_channels(["joints"], 3) == 3 and stream_channels(["joints"], 4) == 4
    assert stream_channels(["bones"], 3) == 2 and stream_channels(["angles"], 4) == 3
    assert stream_channels(["velocity"], 3) == 4 and stream_channels(["velocity"], 4) == 6
    assert stream_channels(STREAMS, 3) == 11 and stream_channels(STREAMS, 4) == 16


# ---- plain-loop reference ------------------------------------------------------------------------------------


def _reference(poses, streams, parents, missing):
    """Per batch, frame and joint, with Python floats: the rules written out one value at a time."""
    b_n, t_n, j_n, c = poses.shape
    d = c - 1
    p = poses.double().tolist()
    miss = missing.tolist()

    def present(b, t, j):
        return 0 <= t < t_n and p[b][t][j][-1] > 0 and not miss[b][t][j]

    out = []
    for b in range(b_n):
        frames = []
        for t in range(t_n):
            joints = []
            for j in range(j_n):
                x = p[b][t][j][:d]
                par = int(parents[j])
                if par != j and present(b, t, j) and present(b, t, par):
                    bone = [x[i] - p[b][t][par][i] for i in range(d)]
                else:
                    bone = [0.0] * d
                length = math.sqrt(sum(v * v for v in bone))
                feats = {
                    "joints": list(p[b][t][j]) if present(b, t, j) else [0.0] * c,
                    "bones": bone,
                    "angles": [v / length for v in bone] if length >= 1e-6 else [0.0] * d,
                    "velocity": [],
                }
                for k in (1, 2):
                    if present(b, t, j) and t + k < t_n and present(b, t + k, j):
                        feats["velocity"] += [p[b][t + k][j][i] - x[i] for i in range(d)]
                    else:
                        feats["velocity"] += [0.0] * d
                joints.append([v for s in streams for v in feats[s]])
            frames.append(joints)
        out.append(frames)
    return torch.tensor(out, dtype=torch.float64)


def _random_case(seed, channels, parents, batch=3, frames=7):
    g = torch.Generator().manual_seed(seed)
    j = len(parents)
    coords = torch.randn(batch, frames, j, channels - 1, generator=g, dtype=torch.float64)
    same = torch.rand(batch, frames, j, generator=g) < 0.1  # some zero-length bones
    coords = torch.where(same[..., None], coords[:, :, parents], coords)
    conf = torch.rand(batch, frames, j, generator=g, dtype=torch.float64) + 0.05
    conf = torch.where(torch.rand(batch, frames, j, generator=g) < 0.25, 0.0, conf)
    poses = torch.cat([coords, conf[..., None]], dim=-1)
    lengths = torch.randint(1, frames + 1, (batch,), generator=g)
    poses = poses * (torch.arange(frames)[None, :] < lengths[:, None])[:, :, None, None]  # zero padding
    missing = torch.rand(batch, frames, j, generator=g) < 0.15
    return poses, missing


RANDOM_TREE = torch.tensor([3, 0, 0, 3, 1])  # root 3, odd size, parents after and before their children


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("parents", [parent_index(COCO), RANDOM_TREE], ids=["coco17", "tree5"])
def test_matches_plain_loop_reference(channels, seed, parents):
    poses, missing = _random_case(seed, channels, parents)
    order = list(STREAMS)
    order = order[seed:] + order[:seed]
    for miss in (missing, torch.zeros_like(missing)):
        expected = _reference(poses, order, parents, miss)
        got = compute_streams(poses.float(), order, parents, missing=miss)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
        got64 = compute_streams(poses, order, parents, missing=miss)
        torch.testing.assert_close(got64, expected, rtol=1e-12, atol=1e-12)


# ---- masked frames -------------------------------------------------------------------------------------------


def test_joint_missing_from_frame_mask():
    frame_mask = torch.zeros(2, len(PART_NAMES), 5, dtype=torch.bool)
    frame_mask[0, PART_NAMES.index("left_arm"), 2] = True
    frame_mask[1, PART_NAMES.index("torso"), 4] = True
    out = joint_missing_from_frame_mask(frame_mask, COCO.joint_part)
    assert out.shape == (2, 5, 17) and out.dtype == torch.bool
    expected = torch.zeros(2, 5, 17, dtype=torch.bool)
    expected[0, 2, [7, 9]] = True  # left elbow, left wrist
    expected[1, 4, [0, 1, 2, 3, 4, 5, 6, 11, 12]] = True
    assert torch.equal(out, expected)
    assert torch.equal(joint_missing_from_frame_mask(frame_mask, torch.tensor(COCO.joint_part)), expected)


def test_joint_missing_from_frame_mask_random():
    frame_mask = torch.rand(3, 5, 6) < 0.3
    part = COCO.joint_part
    out = joint_missing_from_frame_mask(frame_mask, part)
    for b in range(3):
        for t in range(6):
            for j in range(17):
                assert out[b, t, j] == frame_mask[b, part[j], t]
    with pytest.raises(ValueError, match="joint_part"):
        joint_missing_from_frame_mask(frame_mask, [0, 5])


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("seed", range(3))
def test_masked_frames_do_not_leak(channels, seed):
    """Masking parts' frames only zeroes values that involve a masked joint, and nothing depends on a masked
    joint's coordinates or confidence."""
    parents = parent_index(COCO)
    poses, _ = _random_case(seed, channels, parents, batch=2, frames=9)
    poses = poses.float()
    g = torch.Generator().manual_seed(100 + seed)
    frame_mask = torch.rand(2, len(PART_NAMES), 9, generator=g) < 0.3
    missing = joint_missing_from_frame_mask(frame_mask, COCO.joint_part)
    assert missing.any()
    plain = compute_streams(poses, STREAMS, parents)
    masked = compute_streams(poses, STREAMS, parents, missing=missing)
    # every value either stays or becomes zero ...
    assert ((masked == plain) | (masked == 0)).all()
    # ... and a frame with no masked joint in it or in the next two frames is unchanged
    any_masked = missing.any(dim=2)  # (B, T)
    for b in range(2):
        for t in range(9):
            if not any_masked[b, t : t + 3].any():
                assert torch.equal(masked[b, t], plain[b, t]), (b, t)
    # perturbing the masked joints (coordinates and confidence) changes nothing at all
    noise = torch.randn(poses.shape, generator=g) * 10
    perturbed = torch.where(missing[..., None], poses + noise, poses)
    assert not torch.equal(perturbed, poses)
    assert torch.equal(compute_streams(perturbed, STREAMS, parents, missing=missing), masked)


def test_masked_frame_zeroes_neighbours_velocity():
    """The velocity of the two frames before a masked frame loses exactly the term reaching into it."""
    poses = torch.tensor([[[[float(t), 2.0 * t, 1.0]] for t in range(5)]])  # one joint moving (1, 2) per frame
    missing = torch.zeros(1, 5, 1, dtype=torch.bool)
    missing[0, 3, 0] = True
    vel = compute_streams(poses, ["velocity"], torch.tensor([0]), missing=missing)[0, :, 0]
    expected = torch.tensor([
        [1, 2, 2, 4.0],  # 0: reaches 1 and 2
        [1, 2, 0, 0],    # 1: x(3) - x(1) involves the masked frame
        [0, 0, 2, 4],    # 2: x(3) - x(2) masked; x(4) - x(2) fine
        [0, 0, 0, 0],    # 3: masked
        [0, 0, 0, 0],    # 4: the end
    ])  # fmt: skip
    torch.testing.assert_close(vel, expected, rtol=0, atol=0)


# ---- robustness, dtypes, devices, validation -----------------------------------------------------------------


def test_absent_joints_with_nan_coordinates_do_not_leak():
    poses = _chain_poses()
    poses[0, 1, 1, :2] = float("nan")  # confidence 0
    poses[0, 2, 3, :2] = float("inf")
    poses[0, 0, 0, 2] = float("nan")  # NaN confidence counts as absent
    poses.requires_grad_(True)
    out = compute_streams(poses, STREAMS, CHAIN)
    assert torch.isfinite(out).all()
    expected = _expected(STREAMS)
    torch.testing.assert_close(out[:, 1:], expected[:, 1:], rtol=0, atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(poses.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels", [3, 4])
def test_half_precision_is_finite_and_keeps_dtype(dtype, channels):
    parents = parent_index(COCO)
    poses, missing = _random_case(0, channels, parents)
    poses[0, :, 5, :-1] = poses[0, :, 0, :-1]  # zero-length bones
    poses[0, :, 7, :-1] = poses[0, :, 5, :-1] + 1e-7  # below the angle threshold
    out = compute_streams(poses.to(dtype), STREAMS, parents, missing=missing)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    ref = compute_streams(poses.to(dtype).float(), STREAMS, parents, missing=missing)
    torch.testing.assert_close(out.float(), ref.to(dtype).float(), rtol=0, atol=0)


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
)
def test_device(device):
    parents = parent_index(COCO)
    poses, missing = _random_case(1, 3, parents)
    poses = poses.float()
    expected = compute_streams(poses, STREAMS, parents, missing=missing)
    got = compute_streams(poses.to(device), STREAMS, parents.to(device), missing=missing.to(device))
    assert got.device.type == device
    torch.testing.assert_close(got.cpu(), expected)
    frame_mask = (torch.rand(3, 5, 7) < 0.3).to(device)
    jm = joint_missing_from_frame_mask(frame_mask, COCO.joint_part)
    assert jm.device.type == device
    assert torch.equal(jm.cpu(), joint_missing_from_frame_mask(frame_mask.cpu(), COCO.joint_part))


@pytest.mark.parametrize(
    "streams, bad",
    [(["joints", "speed"], "'speed'"), (["Bones"], "'Bones'"), (["bones", "joints", "bones"], "'bones'"),
     ([], "at least one"), ("joints", "'joints'")],
)
def test_bad_stream_names_raise(streams, bad):
    for call in (lambda: stream_channels(streams, 3), lambda: compute_streams(_chain_poses(), streams, CHAIN)):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert bad in message
        assert "joints, bones, velocity, angles" in message


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="parents"):
        compute_streams(_chain_poses(), STREAMS, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="missing"):
        compute_streams(_chain_poses(), STREAMS, CHAIN, missing=torch.zeros(1, 4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="poses"):
        compute_streams(_chain_poses()[0], STREAMS, CHAIN)


def test_traces_as_one_graph_without_host_syncs():
    """fullgraph tracing fails on any `.item()`, boolean indexing or branch on values: the no-host-sync promise."""
    torch._dynamo.reset()
    parents = parent_index(COCO)
    poses, missing = _random_case(2, 3, parents)
    poses = poses.float()
    streams_fn = torch.compile(compute_streams, fullgraph=True, backend="eager")
    torch.testing.assert_close(
        streams_fn(poses, STREAMS, parents, missing), compute_streams(poses, STREAMS, parents, missing), rtol=0, atol=0
    )
    mask_fn = torch.compile(joint_missing_from_frame_mask, fullgraph=True, backend="eager")
    frame_mask = torch.rand(3, 5, 7) < 0.3
    joint_part = torch.tensor(COCO.joint_part)
    assert torch.equal(mask_fn(frame_mask, joint_part), joint_missing_from_frame_mask(frame_mask, joint_part))
