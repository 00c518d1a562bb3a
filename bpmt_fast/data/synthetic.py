"""Synthetic walking skeletons: the embedded default gait dataset (no download).

A small kinematic walker produces COCO-17 2D poses ``(T, 17, 3)`` = (x, y, confidence), deterministically
from a seed. Each subject has its own body and gait (the *identity*); every sequence of that subject is then
filmed under its own *nuisance* (camera, speed, clothing, detector errors). A recogniser has to read the
identity through the nuisance.

Pipeline for one sequence (each step is one small function below)::

    sample_subject(rng)                      identity: segment lengths, cadence, amplitudes, asymmetry, ...
    sample_sequence_params(rng, view, cond)  nuisance: camera, speed, start phase, bag / coat, frame count
    walk_3d(subject, seq)      -> (T, 17, 3) world joints in metres: x forward, y up, z to the walker's right
    project_to_image(joints, seq) -> (T, 17, 2) pixels, y down (camera around the vertical axis, weak perspective)
    corrupt_keypoints(...)     -> (T, 17, 3) detector-like noise, confidences, missing / occluded joints

Identity (drawn once per subject from ``default_rng([seed, subject_index])``). The stds below are rough adult
population spreads; every one is multiplied by ``identity_spread`` (default 1.5: exaggerated so that two or three
gait cycles identify a walker through the nuisance; 1.0 makes the reference below drop to ~0.23):

* body: height (1.70 m +- 5 %), and relative to it thigh, shin, upper arm, forearm, torso (hip centre to
  shoulder centre) +- 6 %, shoulder width +- 8 %, hip width +- 10 %, head size +- 8 %;
* gait: cadence (0.95 +- 0.08 strides/s), stride length (0.80 +- 0.07 heights), hip flexion amplitude
  (22 +- 4 deg) and offset, knee flexion amplitude (58 +- 7 deg) and base, a second hip harmonic, arm swing
  amplitude (18 +- 7 deg) and offset, elbow flexion, arm abduction, step width, vertical bob (2x cadence) and
  lateral sway (1x cadence), pelvis and shoulder yaw, forward torso lean and head pitch;
* asymmetry: right-leg and right-arm amplitude ratios, a left/right phase error;
* phase offsets: arm swing lag behind the opposite leg, knee flexion peak relative to mid-swing.

Nuisance (drawn per sequence from ``default_rng([seed, subject_index, sequence_index + 1])``), with the knobs of
``SyntheticGaitConfig`` that set their strength:

* ``views`` + ``view_jitter_deg``: camera azimuth around the vertical axis (0 = walking towards the camera,
  90 = side view with the walker's right side to the camera, 180 = walking away); the true azimuth is the
  nominal view plus Gaussian jitter. ``elevation_deg``: camera looking down by a uniform angle in the range.
* ``camera_distance_m``, ``person_height_px``, ``image_size``: weak perspective (per-frame scale from the
  pelvis depth, so a walker approaching the camera grows), a random pixel scale and a random crop offset.
* ``speed_range``: walking speed factor s; cadence ~ s^0.45 and stride ~ s^0.55 change together, joint
  amplitudes grow with s (hip s^0.5, knee s^0.3, arms s^0.8). ``gait_jitter``: extra independent relative
  jitter of cadence, stride and every amplitude for this sequence (day-to-day variation of one person).
* start phase: uniform over the gait cycle; length: uniform in ``[min_frames, max_frames]``.
* condition ``"bg"`` (bag): one random arm's swing multiplied by ``bag_swing_factor``, that arm held a bit
  out and bent, the torso leaning ``bag_lean_deg`` away from the bag.
* condition ``"cl"`` (coat): shoulders look ``coat_bulk`` wider (hips half that), arm swing damped by
  ``coat_swing_factor``, upper-body keypoints (shoulders, elbows, wrists, hips) jittered with an extra
  ``coat_jitter`` (fraction of body height) and occluded (confidence 0) with ``coat_occlusion_prob`` per
  joint and frame. Any other condition name walks like ``"nm"``.
* ``keypoint_noise``: Gaussian keypoint noise, std as a fraction of the body height in pixels (extremities
  1.5x, face 0.5x); ``self_occlusion``: joints on the side turned away from the camera get more noise and
  lower confidence. ``missing_prob``: each joint in each frame is dropped (confidence 0 and coordinates 0)
  with this probability. ``occlusion_prob``: chance per sequence that an occluder hides the legs or one side
  for a contiguous run of frames. ``lr_swap_prob``: chance per frame that the detector swaps left and right
  legs.

Difficulty target and measured numbers (``bpmt_fast.eval.pose_stats.reference_rank1``: hand-made pose
statistics, z-scored, Euclidean 1-NN; gallery = every subject's ``"nm"`` sequences, probes = the rest, scored under
the CASIA-B ``cross-view`` protocol: each probe view against each other gallery view, identical view excluded,
misses counted). On real in-the-wild poses this reference scores about 14-20 % cross-camera on 27 subjects; a
synthetic default far above that would be too easy to tell models apart, while identity must stay learnable.
Measured on the defaults below with ``reference_rank1(generate_synthetic_dataset(config, seed=s))``
(``protocol="gait3d"`` for the figure where the probe's own view may match; seed 0 is pinned by
tests/test_synthetic.py):

* default dataset (40 subjects x 14 sequences = 560 sequences, 40-90 frames, ~37k frames): cross-view rank-1
  0.20 on average over seeds 0-4 (0.19-0.21); for seed 0, bg probes 0.25, cl probes 0.13, and 0.46 when the
  probe's own view may match (``gait3d``);
* ``config.without_nuisance()`` (one side view, no view jitter / elevation / perspective / speed change /
  noise / bag / coat / missing joints; gallery ``"nm"``, same view allowed): rank-1 1.00;
* views only (``without_nuisance(views=config.views)``, cross-view): rank-1 0.68.

No single knob makes the default hard: each one removes points from the views-only 0.68 and together
they compound. The strongest are the coat (wider shoulders, jittered / hidden upper body), camera elevation
and perspective, and keypoint noise (the reference's speed and pose-std features mostly measure noise).

The default dataset generates in ~0.4 s on one CPU core.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .sequence import PoseSequence

__all__ = [
    "SyntheticGaitConfig",
    "SubjectParams",
    "SequenceParams",
    "sample_subject",
    "sample_sequence_params",
    "walk_3d",
    "project_to_image",
    "corrupt_keypoints",
    "synthesize_sequence",
    "generate_synthetic_dataset",
]

# COCO-17 joint indices used by the kinematics (see bpmt_fast.model.skeleton.COCO17_JOINTS).
NOSE, L_EYE, R_EYE, L_EAR, R_EAR = 0, 1, 2, 3, 4
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 5, 6, 7, 8, 9, 10
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 11, 12, 13, 14, 15, 16
NUM_JOINTS = 17
# Lateral side of each joint in world z (+1 = the walker's right, -1 = left, 0 = midline).
JOINT_SIDE = np.array([0, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1], dtype=np.float64)
# Relative keypoint-noise level per joint: face is crisp, wrists and ankles are the noisiest.
JOINT_NOISE = np.array([0.5] * 5 + [1.0, 1.0, 1.2, 1.2, 1.5, 1.5, 1.0, 1.0, 1.2, 1.2, 1.5, 1.5])
UPPER_BODY = np.array([L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST, L_HIP, R_HIP])
LEGS_LEFT_RIGHT = (np.array([L_KNEE, L_ANKLE]), np.array([R_KNEE, R_ANKLE]))


# ------------------------------------------------------------------------------------------------
# Configuration
@dataclass
class SyntheticGaitConfig:
    """Every knob of the generator; defaults give the tuned default dataset (see the module docstring)."""

    # ---- dataset layout ----
    num_subjects: int = 40  # identities "s000", "s001", ...
    sequences_per_subject: int = 14  # sequences per identity (views cycle, conditions by share)
    views: tuple[float, ...] = (0, 30, 60, 90, 120, 150, 180)  # nominal camera azimuths, degrees
    # condition -> share of each subject's sequences; the first is the reference gallery ("nm")
    conditions: dict[str, float] = field(default_factory=lambda: {"nm": 0.5, "bg": 0.25, "cl": 0.25})
    min_frames: int = 40  # sequence length, uniform in [min_frames, max_frames]
    max_frames: int = 90
    fps: float = 25.0  # frames per second (cadence is in strides per second)

    # ---- identity ----
    identity_spread: float = 1.5  # multiplies every between-subject std (1.0 ~ adult population spread)

    # ---- camera (nuisance) ----
    view_jitter_deg: float = 10.0  # std of the true azimuth around the nominal view
    elevation_deg: tuple[float, float] = (0.0, 15.0)  # camera looks down by a uniform angle in this range
    camera_distance_m: tuple[float, float] = (8.0, 20.0)  # distance to the middle of the walk (perspective)
    person_height_px: tuple[float, float] = (120.0, 400.0)  # body height in pixels (crop scale)
    image_size: tuple[float, float] = (1280.0, 720.0)  # (width, height); the walk centre is placed inside

    # ---- gait variation (nuisance) ----
    speed_range: tuple[float, float] = (0.8, 1.25)  # walking-speed factor, uniform
    gait_jitter: float = 0.06  # relative std of per-sequence jitter of cadence, stride and amplitudes

    # ---- keypoint detector (nuisance) ----
    keypoint_noise: float = 0.008  # Gaussian keypoint noise std, fraction of the body height
    self_occlusion: float = 1.0  # strength of extra noise / lower confidence on the far side of the body
    missing_prob: float = 0.03  # per joint and frame: dropped (confidence 0, coordinates 0)
    occlusion_prob: float = 0.25  # per sequence: an occluder hides legs or one side for a run of frames
    lr_swap_prob: float = 0.015  # per frame: left and right legs swapped by the detector

    # ---- conditions (nuisance) ----
    bag_swing_factor: float = 0.2  # "bg": swing of the bag arm is multiplied by this
    bag_lean_deg: float = 4.0  # "bg": sideways torso lean away from the bag
    coat_bulk: float = 0.1  # "cl": relative extra width of shoulders (hips get half)
    coat_swing_factor: float = 0.75  # "cl": arm swing multiplied by this
    coat_jitter: float = 0.012  # "cl": extra upper-body keypoint noise, fraction of the body height
    coat_occlusion_prob: float = 0.1  # "cl": per upper-body joint and frame: occluded

    def __post_init__(self) -> None:
        self.views = tuple(float(v) for v in self.views)
        if not self.views:
            raise ValueError("SyntheticGaitConfig: views must not be empty")
        if not self.conditions or any(s < 0 for s in self.conditions.values()) or sum(self.conditions.values()) <= 0:
            raise ValueError(f"SyntheticGaitConfig: conditions need non-negative shares, got {self.conditions}")
        if not 2 <= self.min_frames <= self.max_frames:
            raise ValueError(f"SyntheticGaitConfig: need 2 <= min_frames <= max_frames, got "
                             f"{self.min_frames}, {self.max_frames}")
        if self.num_subjects < 1 or self.sequences_per_subject < 1:
            raise ValueError("SyntheticGaitConfig: num_subjects and sequences_per_subject must be >= 1")

    def without_nuisance(self, views: tuple[float, ...] = (90.0,)) -> "SyntheticGaitConfig":
        """A copy with every nuisance switched off: fixed camera (``views``), constant speed, no keypoint noise,
        no missing or occluded joints, bag and coat without effect (the condition labels stay)."""
        return dataclasses.replace(
            self, views=tuple(views), view_jitter_deg=0.0, elevation_deg=(0.0, 0.0), camera_distance_m=(1e4, 1e4),
            speed_range=(1.0, 1.0), gait_jitter=0.0, keypoint_noise=0.0, self_occlusion=0.0, missing_prob=0.0,
            occlusion_prob=0.0, lr_swap_prob=0.0, bag_swing_factor=1.0, bag_lean_deg=0.0, coat_bulk=0.0,
            coat_swing_factor=1.0, coat_jitter=0.0, coat_occlusion_prob=0.0,
        )


# ------------------------------------------------------------------------------------------------
# Identity
@dataclass
class SubjectParams:
    """One walker's body and gait; lengths in metres, angles in radians, cadence in strides per second."""

    height: float
    thigh: float
    shin: float
    upper_arm: float
    forearm: float
    torso: float  # hip centre -> shoulder centre
    shoulder_width: float
    hip_width: float
    head_size: float
    cadence: float
    stride: float  # metres per gait cycle
    hip_amp: float  # hip flexion amplitude (thigh swing around its offset)
    hip_offset: float
    hip_harmonic: float  # relative amplitude of the second hip harmonic
    hip_harmonic_phase: float
    knee_amp: float  # peak extra knee flexion in swing
    knee_base: float
    knee_lead: float  # phase of the swing-flexion peak before mid-swing (hip passing neutral)
    arm_amp: float  # shoulder flexion amplitude
    arm_offset: float
    arm_lag: float  # phase lag of an arm behind the opposite leg
    arm_abduction: float
    elbow_base: float
    elbow_amp: float
    step_width: float  # lateral distance between the ankles
    bob: float  # vertical pelvis bob (2x cadence), metres
    sway: float  # lateral pelvis sway (1x cadence), metres
    pelvis_yaw: float
    shoulder_yaw: float
    lean: float  # forward torso lean
    head_pitch: float
    asym_leg: float  # right-leg amplitude = left * (1 + asym_leg)
    asym_arm: float
    asym_phase: float  # right leg phase error (radians)


def _spread(rng: np.random.Generator, mean: float, std: float, k: float, low: float | None = None) -> float:
    """mean + k * std * N(0, 1), clipped below at ``low``."""
    value = mean + k * std * rng.standard_normal()
    return float(value if low is None else max(value, low))


def sample_subject(rng: np.random.Generator, config: SyntheticGaitConfig | None = None) -> SubjectParams:
    """Draw one walker's identity parameters (population means +- spread, see the module docstring)."""
    k = (config or SyntheticGaitConfig()).identity_spread
    deg = np.deg2rad
    h = _spread(rng, 1.70, 0.085, k, 1.3)

    def seg(ratio: float, cv: float) -> float:  # a segment length: its share of the height, +- cv
        return h * ratio * _spread(rng, 1.0, cv, k, 0.6)

    return SubjectParams(
        height=h, thigh=seg(0.245, 0.06), shin=seg(0.25, 0.06), upper_arm=seg(0.186, 0.06),
        forearm=seg(0.16, 0.06), torso=seg(0.30, 0.06), shoulder_width=seg(0.21, 0.08), hip_width=seg(0.11, 0.10),
        head_size=seg(0.065, 0.08),
        cadence=_spread(rng, 0.95, 0.08, k, 0.6), stride=h * _spread(rng, 0.80, 0.07, k, 0.5),
        hip_amp=deg(_spread(rng, 22.0, 4.0, k, 10.0)), hip_offset=deg(_spread(rng, 5.0, 4.0, k)),
        hip_harmonic=_spread(rng, 0.10, 0.05, k), hip_harmonic_phase=float(rng.uniform(0, 2 * np.pi)),
        knee_amp=deg(_spread(rng, 58.0, 7.0, k, 30.0)), knee_base=deg(_spread(rng, 6.0, 3.0, k, 0.0)),
        knee_lead=_spread(rng, 0.0, 0.15, k),
        arm_amp=deg(_spread(rng, 18.0, 7.0, k, 4.0)), arm_offset=deg(_spread(rng, -2.0, 5.0, k)),
        arm_lag=_spread(rng, 0.2, 0.15, k), arm_abduction=deg(_spread(rng, 8.0, 3.0, k, 0.0)),
        elbow_base=deg(_spread(rng, 15.0, 8.0, k, 0.0)), elbow_amp=deg(_spread(rng, 12.0, 6.0, k, 0.0)),
        step_width=_spread(rng, 0.10, 0.03, k, 0.0), bob=_spread(rng, 0.025, 0.008, k, 0.005),
        sway=_spread(rng, 0.025, 0.01, k, 0.0), pelvis_yaw=deg(_spread(rng, 5.0, 2.0, k, 0.0)),
        shoulder_yaw=deg(_spread(rng, 4.0, 2.0, k, 0.0)), lean=deg(_spread(rng, 5.0, 4.0, k)),
        head_pitch=deg(_spread(rng, 5.0, 6.0, k)),
        asym_leg=_spread(rng, 0.0, 0.06, k), asym_arm=_spread(rng, 0.0, 0.15, k),
        asym_phase=_spread(rng, 0.0, 0.08, k),
    )


# ------------------------------------------------------------------------------------------------
# Nuisance
@dataclass
class SequenceParams:
    """How one sequence is walked and filmed (everything that is not identity)."""

    view: float  # nominal azimuth, degrees (the label)
    condition: str
    num_frames: int
    azimuth: float  # true camera azimuth, radians
    elevation: float  # camera looking down, radians
    camera_distance: float  # metres to the middle of the walk
    focal: float  # pixels per metre at the camera distance
    height_px: float  # body height in pixels at the camera distance (keypoint noise is relative to it)
    offset: tuple[float, float]  # image position of the middle of the walk, pixels
    speed: float  # walking-speed factor
    gait_scale: np.ndarray  # (6,) relative jitter of cadence, stride, hip, knee, arm, elbow amplitudes
    start_phase: float  # radians
    bag_side: int  # +1 right arm carries the bag, -1 left, 0 no bag
    bag_swing: float  # swing multiplier of the bag arm (1 without a bag)
    side_lean: float  # sideways torso lean, radians, positive to the right
    coat_bulk: float  # relative extra shoulder width (hips get half); 0 without a coat
    arm_swing: float  # swing multiplier of both arms (coat); 1 without a coat
    fps: float


def sample_sequence_params(rng: np.random.Generator, config: SyntheticGaitConfig, subject: SubjectParams,
                           view: float, condition: str) -> SequenceParams:
    """Draw the nuisance of one sequence of ``subject`` filmed from nominal azimuth ``view`` (degrees)."""
    c = config
    num_frames = int(rng.integers(c.min_frames, c.max_frames + 1))
    azimuth = np.deg2rad(view + c.view_jitter_deg * rng.standard_normal())
    elevation = np.deg2rad(rng.uniform(*c.elevation_deg))
    distance = float(rng.uniform(*c.camera_distance_m))
    height_px = float(rng.uniform(*c.person_height_px))
    w, h = c.image_size
    offset = (float(rng.uniform(0.3, 0.7) * w), float(rng.uniform(0.4, 0.6) * h))
    speed = float(rng.uniform(*c.speed_range))
    gait_scale = np.clip(1.0 + c.gait_jitter * rng.standard_normal(6), 0.3, None)
    start_phase = float(rng.uniform(0, 2 * np.pi))
    bag_side = int(rng.choice([-1, 1])) if condition == "bg" else 0
    coat = condition == "cl"
    return SequenceParams(view=float(view), condition=condition, num_frames=num_frames, azimuth=float(azimuth),
                          elevation=float(elevation), camera_distance=distance, focal=height_px / subject.height,
                          height_px=height_px, offset=offset,
                          speed=speed, gait_scale=gait_scale, start_phase=start_phase, bag_side=bag_side,
                          bag_swing=c.bag_swing_factor if bag_side else 1.0,
                          side_lean=-bag_side * float(np.deg2rad(c.bag_lean_deg)),
                          coat_bulk=c.coat_bulk if coat else 0.0, arm_swing=c.coat_swing_factor if coat else 1.0,
                          fps=c.fps)


# ------------------------------------------------------------------------------------------------
# Forward kinematics (world frame: x forward, y up, z to the walker's right; metres)
def _sagittal(angle: np.ndarray, length: float, abduction: float, side: int) -> np.ndarray:
    """(T, 3) segment vector hanging down, swung forward by ``angle`` (T,), tilted out to ``side`` by abduction."""
    ca = np.cos(abduction)
    return length * np.stack([np.sin(angle) * ca, -np.cos(angle) * ca,
                              np.full_like(angle, side * np.sin(abduction))], axis=-1)


def _gait_phase(subject: SubjectParams, seq: SequenceParams) -> tuple[np.ndarray, np.ndarray, float]:
    """Time (T,) in s, gait phase (T,) in radians (left heel strike near phase pi/2), and speed in m/s."""
    cadence = subject.cadence * seq.speed ** 0.45 * seq.gait_scale[0]
    stride = subject.stride * seq.speed ** 0.55 * seq.gait_scale[1]
    t = np.arange(seq.num_frames) / seq.fps
    return t, 2 * np.pi * cadence * t + seq.start_phase, stride * cadence


def _pelvis(subject: SubjectParams, t: np.ndarray, phase: np.ndarray, velocity: float) -> np.ndarray:
    """(T, 3) pelvis centre: forward motion, vertical bob at 2x cadence, lateral sway at 1x cadence."""
    leg = subject.thigh + subject.shin
    x = velocity * (t - t.mean())  # the middle of the walk is at the origin
    y = 0.97 * leg + subject.bob * np.cos(2 * phase)
    z = subject.sway * np.sin(phase)
    return np.stack([x, y, z], axis=-1)


def _leg(subject: SubjectParams, seq: SequenceParams, hip: np.ndarray, phase: np.ndarray, side: int,
         ) -> tuple[np.ndarray, np.ndarray]:
    """Knee and ankle (T, 3) from hip flexion and knee flexion sinusoids (with harmonics)."""
    s = subject
    amp = 1.0 + s.asym_leg if side > 0 else 1.0
    hip_amp = s.hip_amp * amp * seq.speed ** 0.5 * seq.gait_scale[2]
    knee_amp = s.knee_amp * amp * seq.speed ** 0.3 * seq.gait_scale[3]
    hip_flex = s.hip_offset + hip_amp * (np.sin(phase) + s.hip_harmonic * np.sin(2 * phase + s.hip_harmonic_phase))
    swing = ((1 + np.cos(phase + s.knee_lead)) / 2) ** 3  # big flexion peak in mid swing (phase ~ 0)
    loading = 0.25 * ((1 + np.cos(phase - 0.6 * np.pi)) / 2) ** 6  # small peak after heel strike
    knee_flex = s.knee_base + knee_amp * (swing + loading)
    # Ankles come in towards the line of progression: tilt the leg inwards by the step-width angle.
    inward = np.arctan2(s.hip_width / 2 - s.step_width / 2, s.thigh + s.shin)
    knee = hip + _sagittal(hip_flex, s.thigh, -inward, side)
    ankle = knee + _sagittal(hip_flex - knee_flex, s.shin, -inward, side)
    return knee, ankle


def _arm(subject: SubjectParams, seq: SequenceParams, shoulder: np.ndarray, phase: np.ndarray, side: int,
         ) -> tuple[np.ndarray, np.ndarray]:
    """Elbow and wrist (T, 3): the arm swings with the opposite leg; bag and coat damp the swing."""
    s = subject
    damp = seq.arm_swing * (seq.bag_swing if seq.bag_side == side else 1.0)  # coat, bag
    amp = s.arm_amp * (1.0 + s.asym_arm if side > 0 else 1.0) * seq.speed ** 0.8 * seq.gait_scale[4] * damp
    elbow_amp = s.elbow_amp * seq.gait_scale[5] * damp
    abduction, elbow_base = s.arm_abduction, s.elbow_base
    if seq.bag_side == side:  # this hand carries the bag: arm held a bit out and bent
        abduction += np.deg2rad(10.0) * (1 - seq.bag_swing)
        elbow_base += np.deg2rad(10.0) * (1 - seq.bag_swing)
    arm_phase = phase + s.arm_lag + (np.pi if side < 0 else 0.0)  # left arm moves with the right leg
    flex = s.arm_offset + amp * np.sin(arm_phase)
    elbow_flex = elbow_base + elbow_amp * (0.5 + 0.5 * np.sin(arm_phase))
    elbow = shoulder + _sagittal(flex, s.upper_arm, abduction, side)
    wrist = elbow + _sagittal(flex + elbow_flex, s.forearm, abduction, side)
    return elbow, wrist


def _head(subject: SubjectParams, neck: np.ndarray, lean: float) -> np.ndarray:
    """(T, 5, 3) nose, eyes, ears on top of the torso, pitched forward by lean + head pitch."""
    pitch = lean + subject.head_pitch
    up = np.array([np.sin(pitch), np.cos(pitch), 0.0])
    fwd = np.array([np.cos(pitch), -np.sin(pitch), 0.0])
    right = np.array([0.0, 0.0, 1.0])
    # Face points in head units (forward, up, right), relative to the head centre.
    local = np.array([[0.9, 0.1, 0.0], [0.75, 0.4, -0.35], [0.75, 0.4, 0.35], [0.05, 0.3, -0.8], [0.05, 0.3, 0.8]])
    offsets = subject.head_size * (local[:, :1] * fwd + local[:, 1:2] * up + local[:, 2:] * right)  # (5, 3)
    centre = neck + 1.6 * subject.head_size * up  # (T, 3)
    return centre[:, None, :] + offsets[None]


def walk_3d(subject: SubjectParams, seq: SequenceParams) -> np.ndarray:
    """(T, 17, 3) COCO-17 joints in world metres (x forward, y up, z to the walker's right)."""
    s = subject
    t, phase, velocity = _gait_phase(s, seq)
    pelvis = _pelvis(s, t, phase, velocity)  # (T, 3)
    bulk = seq.coat_bulk
    joints = np.empty((seq.num_frames, NUM_JOINTS, 3))

    # Hips: pelvis +- half hip width, the pelvis yawing so the forward leg's hip is ahead.
    yaw = s.pelvis_yaw * np.sin(phase)  # (T,)
    half_hip = s.hip_width * (1 + bulk / 2) / 2
    hip_off = half_hip * np.stack([np.sin(yaw), np.zeros_like(yaw), np.cos(yaw)], axis=-1)  # towards the right
    joints[:, L_HIP], joints[:, R_HIP] = pelvis - hip_off, pelvis + hip_off

    # Legs: the right leg half a cycle behind the left (plus the subject's phase error).
    joints[:, L_KNEE], joints[:, L_ANKLE] = _leg(s, seq, joints[:, L_HIP], phase, -1)
    joints[:, R_KNEE], joints[:, R_ANKLE] = _leg(s, seq, joints[:, R_HIP], phase + np.pi + s.asym_phase, +1)

    # Torso: leaning forward (and sideways away from a bag); shoulders counter-rotate against the pelvis.
    side_lean = seq.side_lean
    torso_dir = np.array([np.sin(s.lean), np.cos(s.lean) * np.cos(side_lean), np.sin(side_lean)])
    neck = pelvis + s.torso * torso_dir  # (T, 3) shoulder centre
    syaw = -s.shoulder_yaw * np.sin(phase)
    half_sh = s.shoulder_width * (1 + bulk) / 2
    sh_off = half_sh * np.stack([np.sin(syaw), np.zeros_like(syaw), np.cos(syaw)], axis=-1)
    joints[:, L_SHOULDER], joints[:, R_SHOULDER] = neck - sh_off, neck + sh_off

    # Arms swing opposite to the legs.
    joints[:, L_ELBOW], joints[:, L_WRIST] = _arm(s, seq, joints[:, L_SHOULDER], phase, -1)
    joints[:, R_ELBOW], joints[:, R_WRIST] = _arm(s, seq, joints[:, R_SHOULDER], phase, +1)

    joints[:, NOSE:R_EAR + 1] = _head(s, neck, s.lean)
    return joints


# ------------------------------------------------------------------------------------------------
# Camera
def _camera_axes(azimuth: float, elevation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera right, up and viewing direction in world coordinates. Azimuth 0: the camera stands ahead of the
    walker looking back at them; 90: it stands at the walker's right; elevation tilts it to look down."""
    right = np.array([np.sin(azimuth), 0.0, -np.cos(azimuth)])
    forward = np.array([-np.cos(azimuth), 0.0, -np.sin(azimuth)])
    vertical = np.array([0.0, 1.0, 0.0])
    ce, se = np.cos(elevation), np.sin(elevation)
    return right, ce * vertical + se * forward, ce * forward - se * vertical


def project_to_image(joints: np.ndarray, seq: SequenceParams) -> np.ndarray:
    """(T, J, 3) world metres -> (T, J, 2) pixels (x right, y down): rotate into the camera, then weak
    perspective (one scale per frame, from the pelvis depth), then the crop scale and offset."""
    right, up, forward = _camera_axes(seq.azimuth, seq.elevation)
    u = joints @ right  # (T, J)
    v = -(joints @ up)
    centre = joints[:, (L_HIP, R_HIP)].mean(axis=1)  # (T, 3)
    depth = seq.camera_distance + centre @ forward  # (T,) metres from the camera
    scale = seq.focal * seq.camera_distance / np.maximum(depth, 0.5)  # (T,) pixels per metre
    mid_v = -(centre.mean(axis=0) @ up)  # keep the middle of the walk at the offset
    x = scale[:, None] * u + seq.offset[0]
    y = scale[:, None] * (v - mid_v) + seq.offset[1]
    return np.stack([x, y], axis=-1)


# ------------------------------------------------------------------------------------------------
# Keypoint detector
def _far_side(seq: SequenceParams) -> np.ndarray:
    """(J,) in [0, 1]: how much each joint is on the side of the body turned away from the camera."""
    camera_side = np.sin(seq.azimuth)  # +1: the camera sees the right side
    return np.clip(-JOINT_SIDE * camera_side, 0.0, 1.0)


def _occluder_mask(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """(T, J) bool: joints hidden by an occluder (legs, or one whole side) for a contiguous run of frames."""
    mask = np.zeros((num_frames, NUM_JOINTS), dtype=bool)
    length = int(rng.integers(max(1, num_frames // 5), max(2, num_frames // 2) + 1))
    start = int(rng.integers(0, num_frames - length + 1))
    region = rng.integers(3)
    if region == 0:
        hidden = np.array([L_KNEE, R_KNEE, L_ANKLE, R_ANKLE])
    else:
        hidden = np.flatnonzero(JOINT_SIDE == (1 if region == 1 else -1))
    mask[start:start + length, hidden] = True
    return mask


def corrupt_keypoints(pixels: np.ndarray, seq: SequenceParams, config: SyntheticGaitConfig,
                      rng: np.random.Generator) -> np.ndarray:
    """(T, J, 2) clean pixels -> (T, J, 3) detector output: noise, confidences, missing / occluded joints,
    left/right leg swaps. Missing joints have confidence 0 and coordinates 0."""
    c = config
    t = pixels.shape[0]
    height_px = seq.height_px
    far = _far_side(seq)  # (J,)
    std = c.keypoint_noise * height_px * JOINT_NOISE * (1 + c.self_occlusion * far)  # (J,)
    noise = rng.standard_normal(pixels.shape) * std[None, :, None]  # (T, J, 2)
    conf = np.clip(0.92 - 0.35 * c.self_occlusion * far + 0.06 * rng.standard_normal((t, NUM_JOINTS)), 0.05, 1.0)
    hidden = rng.random((t, NUM_JOINTS)) < c.missing_prob * (1 + c.self_occlusion * far)
    if seq.condition == "cl":
        noise[:, UPPER_BODY] += rng.standard_normal((t, len(UPPER_BODY), 2)) * c.coat_jitter * height_px
        conf[:, UPPER_BODY] *= max(0.5, 1 - 10 * c.coat_jitter)  # a detector is less sure under a coat
        hidden[:, UPPER_BODY] |= rng.random((t, len(UPPER_BODY))) < c.coat_occlusion_prob
    if rng.random() < c.occlusion_prob:
        hidden |= _occluder_mask(rng, t)
    out = np.concatenate([pixels + noise, conf[..., None]], axis=-1)
    swap = rng.random(t) < c.lr_swap_prob
    if swap.any():
        left, right = LEGS_LEFT_RIGHT
        out[np.ix_(swap, np.r_[left, right])] = out[np.ix_(swap, np.r_[right, left])]
    out[hidden] = 0.0
    return out


# ------------------------------------------------------------------------------------------------
# Sequences and the dataset
def synthesize_sequence(subject: SubjectParams, seq: SequenceParams, config: SyntheticGaitConfig,
                        rng: np.random.Generator) -> np.ndarray:
    """(T, 17, 3) float32 poses (x, y, confidence) of one sequence."""
    joints = walk_3d(subject, seq)  # (T, 17, 3) metres
    pixels = project_to_image(joints, seq)  # (T, 17, 2)
    return corrupt_keypoints(pixels, seq, config, rng).astype(np.float32)


def _condition_plan(config: SyntheticGaitConfig) -> list[str]:
    """Conditions of one subject's sequences: counts by share (largest remainder), in config order."""
    n, names = config.sequences_per_subject, list(config.conditions)
    shares = np.array([config.conditions[k] for k in names], dtype=np.float64)
    exact = n * shares / shares.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return [name for name, k in zip(names, counts) for _ in range(k)]


def _view_plan(rng: np.random.Generator, config: SyntheticGaitConfig) -> list[float]:
    """Views of one subject's sequences: repeated passes over all views, each pass in a random order."""
    n, views = config.sequences_per_subject, config.views
    passes = -(-n // len(views))
    return [views[i] for _ in range(passes) for i in rng.permutation(len(views))][:n]


def generate_synthetic_dataset(config: SyntheticGaitConfig | None = None, seed: int = 0) -> list[PoseSequence]:
    """The synthetic gait dataset: ``num_subjects x sequences_per_subject`` COCO-17 sequences.

    Subjects are ``"s000"``, ...; views are the nominal azimuths as three digits (``"030"``); conditions follow
    ``config.conditions``. Each subject's first pass over the views uses the first condition (``"nm"`` by
    default), so every subject has a gallery sequence at every view when shares allow. Deterministic in
    ``(config, seed)``; each subject and sequence has its own random stream, so changing the number of subjects
    does not change the others.
    """
    config = config or SyntheticGaitConfig()
    out: list[PoseSequence] = []
    for i in range(config.num_subjects):
        subject_rng = np.random.default_rng([seed, i])
        subject = sample_subject(subject_rng, config)
        views, conditions = _view_plan(subject_rng, config), _condition_plan(config)
        for k, (view, condition) in enumerate(zip(views, conditions)):
            rng = np.random.default_rng([seed, i, k + 1])
            seq = sample_sequence_params(rng, config, subject, view, condition)
            poses = synthesize_sequence(subject, seq, config, rng)
            name, view_label = f"s{i:03d}", f"{int(round(view)) % 360:03d}"
            out.append(PoseSequence(
                poses=poses, subject=name, view=view_label, condition=condition,
                frame_times=np.arange(seq.num_frames), skeleton="coco17",
                sequence_id=f"{name}/{condition}-{k:02d}/{view_label}", source="synthetic",
                meta={"seed": seed, "azimuth_deg": float(np.rad2deg(seq.azimuth)),
                      "elevation_deg": float(np.rad2deg(seq.elevation)), "speed": seq.speed,
                      "bag_side": {1: "right", -1: "left", 0: ""}[seq.bag_side]},
            ))
    return out
