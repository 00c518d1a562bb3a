"""Loaders: real samples (Gait3D, PsyMo AlphaPose), hand-made CASIA-B CSV / npz / JSON, corrupt files, fuzzing."""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpmt_fast.data.loaders import (
    SCHEMES,
    DataError,
    LoadReport,
    PoseSequence,
    load_alphapose,
    load_casiab,
    load_dataset,
    load_gait3d,
    load_npz,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GAIT3D = DATA / "gait3d_sample"
PSYMO = DATA / "psymo_alphapose"
needs_gait3d = pytest.mark.skipif(not GAIT3D.is_dir(), reason=f"Gait3D sample data not found at {GAIT3D}")
needs_psymo = pytest.mark.skipif(not PSYMO.is_dir(), reason=f"PsyMo AlphaPose sample data not found at {PSYMO}")
RNG = np.random.default_rng(0)


def check_sequence(seq: PoseSequence) -> None:
    """Invariants every loaded sequence must satisfy."""
    assert isinstance(seq, PoseSequence)
    assert seq.poses.dtype == np.float32 and seq.poses.ndim == 3 and seq.num_frames > 0
    assert np.isfinite(seq.poses).all()
    conf = seq.poses[..., -1]
    assert (conf >= 0).all() and (conf <= 1).all()
    assert (conf > 0).any(axis=1).all(), "a frame with all-zero confidence survived"
    assert seq.frame_times.dtype == np.int64 and len(seq.frame_times) == seq.num_frames
    assert (np.diff(seq.frame_times) > 0).all(), "frame_times must be strictly increasing"


# ---------------------------------------------------------------------------------------------- Gait3D
def gait3d_line(joints: np.ndarray | None = None, offset=(10, 20)) -> str:
    if joints is None:
        joints = np.column_stack([RNG.uniform(0, 200, (17, 2)), RNG.uniform(0.1, 1, 17)])
    return ",".join(str(v) for v in [*offset, *np.asarray(joints, dtype=np.float64).ravel()])


def write_gait3d(root: Path, frames: dict[str, dict[int, str]]) -> None:
    """frames: {"subject/camidC_videoidV/seqS": {frame_number: file content}}."""
    for seq, content in frames.items():
        d = root / seq
        d.mkdir(parents=True, exist_ok=True)
        for f, text in content.items():
            (d / f"human_crop_f{f}.txt").write_text(text)


@pytest.fixture(scope="module")
def gait3d():
    if not GAIT3D.is_dir():
        pytest.skip(f"Gait3D sample data not found at {GAIT3D}")
    start = time.perf_counter()
    seqs, report = load_dataset(f"gait3d:{GAIT3D}")
    print(f"\nGait3D sample: {len(seqs)} sequences loaded in {time.perf_counter() - start:.2f} s")
    return seqs, report


@needs_gait3d
def test_gait3d_sample_counts(gait3d):
    seqs, report = gait3d
    assert len({s.subject for s in seqs}) == 2
    assert len(seqs) == 8
    assert sum(s.num_frames for s in seqs) == 840
    assert report.loaded == 8 and report.skipped == []
    assert len({s.sequence_id for s in seqs}) == 8
    for s in seqs:
        check_sequence(s)
        assert s.poses.shape[1:] == (17, 3) and s.skeleton == "coco17" and s.condition == ""
        assert s.view.startswith("camid") and s.view == f"camid{s.meta['camid']}"
        assert s.meta["crop_offset"].shape == (s.num_frames, 2)


@needs_gait3d
def test_gait3d_sample_known_values(gait3d):
    seqs, _ = gait3d
    seq = {s.sequence_id: s for s in seqs}["0000/camid0_videoid2/seq0"]
    assert (seq.subject, seq.view) == ("0000", "camid0")
    assert seq.frame_times[0] == 11627
    np.testing.assert_allclose(seq.poses[0, 0], [71.586914, 93.45411, 0.9449093], rtol=1e-6)
    np.testing.assert_array_equal(seq.meta["crop_offset"][0], [225, 441])
    for s in seqs:  # frame_times are exactly the numbers in the file names, numerically sorted
        names = os.listdir(Path(s.source))
        assert s.frame_times.tolist() == sorted(int(n[len("human_crop_f"):-4]) for n in names)


def test_gait3d_frames_skip_and_sort(tmp_path):
    joints = {f: np.column_stack([np.full((17, 2), f, float), np.full(17, 0.5)]) for f in (9, 10, 100, 12)}
    write_gait3d(tmp_path, {"7/camid3_videoid1/seq2": {f: gait3d_line(j) for f, j in joints.items()}})
    (tmp_path / "7/camid3_videoid1/seq2/notes.md").write_text("ignored")
    (seq,), report = load_gait3d(tmp_path)
    assert seq.frame_times.tolist() == [9, 10, 12, 100]
    assert seq.poses[:, 0, 0].tolist() == [9, 10, 12, 100]
    assert (seq.subject, seq.view, seq.sequence_id) == ("7", "camid3", "7/camid3_videoid1/seq2")
    assert seq.meta["videoid"] == "1" and seq.meta["seq"] == "2" and report.loaded == 1


# ---------------------------------------------------------------------------------------------- PsyMo
@pytest.fixture(scope="module")
def psymo():
    if not PSYMO.is_dir():
        pytest.skip(f"PsyMo AlphaPose sample data not found at {PSYMO}")
    start = time.perf_counter()
    seqs, report = load_dataset(f"alphapose:{PSYMO}")
    print(f"\nPsyMo: {len(seqs)} sequences, {sum(s.num_frames for s in seqs)} frames "
          f"loaded in {time.perf_counter() - start:.2f} s")
    return seqs, report


def by_frame(path: Path) -> dict[int, list[dict]]:
    out = defaultdict(list)
    for d in json.loads(path.read_text()):
        out[int(d["image_id"].split(".")[0])].append(d)
    return out


@needs_psymo
def test_psymo_counts_and_labels(psymo):
    seqs, report = psymo
    assert len(seqs) == 480 and report.loaded == 480 and report.skipped == []
    assert len({s.subject for s in seqs}) == 10
    assert {s.view for s in seqs} == {"00", "45", "90"}
    assert {s.condition for s in seqs} == {"nm", "bg", "cl", "ph", "txt", "wsf", "wss"}
    assert len({s.sequence_id for s in seqs}) == 480
    for s in seqs:
        check_sequence(s)
        assert s.poses.shape[1:] == (17, 3)
        name = Path(s.source).stem
        assert name == f"{int(s.subject):03d}_{s.view}_{s.meta['direction']}_{s.meta['run']}_{s.condition}"


@needs_psymo
def test_psymo_known_value(psymo):
    seqs, _ = psymo
    path = PSYMO / "0" / "000_00_0_0_bg.json"
    frames = by_frame(path)
    first = min(frames)
    assert len(frames[first]) == 1, "test premise: one person in the first frame"
    expected = np.asarray(frames[first][0]["keypoints"], dtype=np.float32).reshape(17, 3)
    expected[:, 2] = np.clip(expected[:, 2], 0, 1)
    seq = next(s for s in seqs if Path(s.source) == path)
    assert (seq.subject, seq.view, seq.condition) == ("000", "00", "bg")
    assert seq.frame_times[0] == first
    np.testing.assert_array_equal(seq.poses[0], expected)


@needs_psymo
def test_psymo_one_real_detection_per_kept_frame(psymo):
    """Every kept pose is one of that frame's detections (never a mix); single-person frames of
    single-person files are all kept."""
    seqs, _ = psymo
    for s in seqs[::12]:
        frames = by_frame(Path(s.source))
        for t, pose in zip(s.frame_times, s.poses):
            cands = [np.asarray(d["keypoints"], np.float32).reshape(17, 3)[:, :2] for d in frames[int(t)]]
            assert sum(np.array_equal(c, pose[:, :2]) for c in cands) >= 1
        if all(len(v) == 1 for v in frames.values()):
            assert s.num_frames >= len(frames) - 3


@needs_psymo
def test_psymo_bystander_alone_before_walker_is_dropped(psymo):
    # 008_00_0_0_bg: a small, weak bystander is the only detection in frames 0-21; the walker enters at 22.
    seqs, _ = psymo
    path = PSYMO / "8" / "008_00_0_0_bg.json"
    frames = by_frame(path)
    assert all(len(frames[f]) == 1 for f in range(22)) and len(frames[22]) == 2, "test premise"
    seq = next(s for s in seqs if Path(s.source) == path)
    assert seq.frame_times.tolist() == list(range(22, 68))
    heights = seq.poses[:, :, 1].max(axis=1) - seq.poses[:, :, 1].min(axis=1)
    assert np.median(heights) > 250  # the walker's box is ~400 px tall, the bystander's ~230


# ------------------------------------------------------------------------- hand-made AlphaPose JSON
def person(frame: int, x: float, y: float, h: float, score: float, conf: float = 0.8) -> dict:
    kp = np.column_stack([np.linspace(x, x + h / 3, 17), np.linspace(y, y + h, 17), np.full(17, conf)])
    return {"image_id": f"{frame}.jpg", "category_id": 1, "keypoints": kp.ravel().tolist(), "score": score,
            "box": [x, y, h / 3, h], "idx": [0.0]}


def walker_and_bystander() -> tuple[list[dict], list[int], dict[int, float]]:
    """A walker crossing frames 0-29 (missing at 15, weak in 10 and 20) with a static, smaller bystander
    in every frame 0-34 (stronger than the walker in frames 10 and 20, alone in 30-34). The walker's
    box jumps across the image at frame 22 (a tracking break that must be repaired)."""
    dets, walker_x = [], {}
    for f in range(35):
        if f < 30 and f != 15:
            x = 100 + 12 * f + (600 if f >= 22 else 0)
            walker_x[f] = x
            dets.append(person(f, x, 100, 300, 1.0 if f in (10, 20) else 2.8))
        dets.append(person(f, 1500, 50, 150, 3.0 if f in (10, 20) else 1.4, conf=0.5))
    return dets, sorted(walker_x), walker_x


def test_alphapose_keeps_walker_drops_bystander(tmp_path):
    dets, frames, walker_x = walker_and_bystander()
    subj = tmp_path / "3"
    subj.mkdir()
    (subj / "003_90_1_0_txt.json").write_text(json.dumps(dets))
    (subj / "README.txt").write_text("not json: ignored")
    (tmp_path / "LICENCE.txt").write_text("ignored")
    (seq,), report = load_dataset(f"alphapose:{tmp_path}")
    check_sequence(seq)
    assert seq.frame_times.tolist() == frames  # frame 15 (no walker) and 30-34 (bystander alone) dropped
    assert seq.poses[:, 0, 0].tolist() == [walker_x[f] for f in frames]
    assert (seq.subject, seq.view, seq.condition) == ("003", "90", "txt")
    assert seq.meta["direction"] == "1" and seq.meta["run"] == "0" and seq.sequence_id == "3/003_90_1_0_txt"
    assert report.loaded == 1


def test_alphapose_selection_is_deterministic(tmp_path):
    dets, frames, _ = walker_and_bystander()
    results = []
    for k, order in enumerate([dets, dets[::-1], [dets[i] for i in np.random.default_rng(1).permutation(len(dets))]]):
        path = tmp_path / f"{k}.json"
        path.write_text(json.dumps(order))
        (seq,), _ = load_alphapose(path)
        results.append(seq)
    for seq in results:
        assert seq.frame_times.tolist() == frames
        np.testing.assert_array_equal(seq.poses, results[0].poses)


def test_alphapose_without_box_or_score_and_generic_name(tmp_path):
    dets = [person(f, 10 * f, 0, 90, 2.0) for f in range(5)]
    for d in dets:
        del d["box"], d["score"]
    (tmp_path / "clipA").mkdir()
    (tmp_path / "clipA" / "alphapose-results.json").write_text(json.dumps(dets))
    (seq,), _ = load_alphapose(tmp_path)
    assert seq.frame_times.tolist() == list(range(5))
    assert (seq.subject, seq.view, seq.condition) == ("clipA", "", "")


# ---------------------------------------------------------------------------------------------- CASIA-B
def casiab_line(image: str, joints: np.ndarray) -> str:
    return ",".join([image, *(repr(float(v)) for v in joints.ravel())])


def casiab_joints(tag: float) -> np.ndarray:
    j = np.column_stack([np.full((17, 2), tag), np.linspace(0.2, 0.9, 17)])
    return j


CASIAB_ROWS = [  # unsorted on purpose
    ("./001-bg-01-000/000003.jpg", 3.0), ("./002-cl-02-180/000001.jpg", 21.0), ("./001-bg-01-000/000001.jpg", 1.0),
    ("./001-nm-05-090/000012.jpg", 12.0), ("./001-bg-01-000/000002.jpg", 2.0), ("./001-nm-05-090/000010.jpg", 10.0),
]
CASIAB_HEADER = "image_name," + ",".join(f"{j}_{c}" for j in range(17) for c in ("x", "y", "conf"))


def write_casiab(path: Path, header: bool = True, extra: list[str] = (), newline: str = "\n") -> Path:
    lines = ([CASIAB_HEADER] if header else []) + [casiab_line(i, casiab_joints(t)) for i, t in CASIAB_ROWS]
    path.write_bytes((newline.join(lines + list(extra)) + newline).encode())
    return path


@pytest.mark.parametrize("header,newline", [(True, "\n"), (False, "\n"), (True, "\r\n")])
def test_casiab_fixture(tmp_path, header, newline):
    path = write_casiab(tmp_path / "casia-b_pose_coco.csv", header=header, newline=newline)
    seqs, report = load_dataset(f"casiab:{path}")
    assert [s.sequence_id for s in seqs] == ["001-bg-01-000", "001-nm-05-090", "002-cl-02-180"]
    assert report.loaded == 3 and report.skipped == []
    s = seqs[0]
    assert (s.subject, s.condition, s.view, s.meta["run"]) == ("001", "bg", "000", "01")
    assert s.frame_times.tolist() == [1, 2, 3] and s.poses[:, 5, 0].tolist() == [1.0, 2.0, 3.0]
    np.testing.assert_allclose(s.poses[0], casiab_joints(1.0), rtol=1e-6)
    assert seqs[1].frame_times.tolist() == [10, 12] and seqs[1].view == "090"
    assert (seqs[2].subject, seqs[2].condition, seqs[2].view) == ("002", "cl", "180")
    for seq in seqs:
        check_sequence(seq)


# ---------------------------------------------------------------------------------------------- npz
def random_poses(t: int, j: int = 17, c: int = 3) -> np.ndarray:
    p = RNG.uniform(0, 500, (t, j, c)).astype(np.float32)
    p[..., -1] = RNG.uniform(0.05, 1.0, (t, j))
    return p


def test_npz_round_trip(tmp_path):
    poses = random_poses(5)
    ft = np.array([10, 11, 13, 14, 20])
    np.savez(tmp_path / "a.npz", poses=poses, subject="s01", view="090", condition="bg", frame_times=ft)
    (seq,), report = load_dataset(f"npz:{tmp_path / 'a.npz'}")
    np.testing.assert_array_equal(seq.poses, poses)
    assert seq.frame_times.tolist() == ft.tolist()
    assert (seq.subject, seq.view, seq.condition, seq.skeleton, seq.sequence_id) == ("s01", "090", "bg", "coco17", "a")
    assert report.loaded == 1


def test_npz_folder_skeleton_and_defaults(tmp_path):
    (tmp_path / "sub").mkdir()
    halpe = random_poses(4, 26, 4)
    np.savez(tmp_path / "sub" / "h.npz", poses=halpe, skeleton="halpe", subject=np.array(7))
    np.savez_compressed(tmp_path / "b.npz", poses=random_poses(3))
    (tmp_path / "notes.txt").write_text("ignored")
    seqs, _ = load_npz(tmp_path)
    assert [s.sequence_id for s in seqs] == ["b", "sub/h"]
    b, h = seqs
    assert (b.subject, b.view, b.condition, b.frame_times.tolist()) == ("", "", "", [0, 1, 2])
    assert (h.skeleton, h.subject, h.poses.shape) == ("halpe26", "7", (4, 26, 4))
    np.testing.assert_array_equal(h.poses, halpe)


# ---------------------------------------------------------------------------------------------- spec
def test_load_dataset_bad_specs(tmp_path):
    for spec in ["mystery:/x", "no-scheme-here", f"{tmp_path}"]:
        with pytest.raises(DataError) as exc:
            load_dataset(spec)
        assert all(f"{s}:" in str(exc.value) for s in SCHEMES)
    for scheme in SCHEMES:
        with pytest.raises(DataError) as exc:
            load_dataset(f"{scheme}:{tmp_path / 'missing'}")
        assert "missing" in str(exc.value) and all(f"{s}:" in str(exc.value) for s in SCHEMES)
    with pytest.raises(DataError, match="no path"):
        load_dataset("npz:")
    with pytest.raises(DataError, match="no Gait3D sequence"):
        load_dataset(f"gait3d:{tmp_path}")  # an empty folder


# ---------------------------------------------------------------------------------------------- corrupt
GOOD = gait3d_line()
ZERO_CONF = gait3d_line(np.column_stack([np.ones((17, 2)), np.zeros(17)]))
GAIT3D_BAD = {
    "truncated": GOOD[: len(GOOD) // 2],
    "too many values": GOOD + ",1.0",
    "non-numeric": GOOD.replace(",", ",abc,", 1).rsplit(",", 1)[0],
    "empty": "",
    "nan": GOOD.rsplit(",", 2)[0] + ",nan,0.5",
    "inf": "inf," + GOOD.split(",", 1)[1],
    "overflow": "1e300," + GOOD.split(",", 1)[1],
    "two lines": GOOD + "\n" + GOOD,
    "all zero confidence": ZERO_CONF,
}


@pytest.mark.parametrize("case", sorted(GAIT3D_BAD))
def test_gait3d_corrupt_frame(tmp_path, case):
    write_gait3d(tmp_path, {"0001/camid1_videoid1/seq0": {1: GOOD, 2: GAIT3D_BAD[case], 3: GOOD},
                            "0002/camid2_videoid1/seq0": {5: GOOD}})
    bad = tmp_path / "0001/camid1_videoid1/seq0/human_crop_f2.txt"
    with pytest.raises(DataError) as exc:
        load_dataset(f"gait3d:{tmp_path}")
    assert str(bad) in str(exc.value)
    seqs, report = load_dataset(f"gait3d:{tmp_path}", lenient=True)
    assert [s.frame_times.tolist() for s in seqs] == [[1, 3], [5]]
    assert [src for src, _ in report.skipped] == [str(bad)] and report.loaded == 2


def test_gait3d_binary_and_empty_sequence(tmp_path):
    write_gait3d(tmp_path, {"0001/camid1_videoid1/seq0": {1: GOOD}, "0001/camid1_videoid1/seq1": {4: "x"}})
    (tmp_path / "0001/camid1_videoid1/seq0/human_crop_f2.txt").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "0001/camid1_videoid1/seq2").mkdir()  # no frame files at all
    with pytest.raises(DataError, match="human_crop_f2.txt: not UTF-8"):
        load_gait3d(tmp_path)
    seqs, report = load_gait3d(tmp_path, lenient=True)
    assert [s.sequence_id for s in seqs] == ["0001/camid1_videoid1/seq0"]
    reasons = dict(report.skipped)
    assert "not UTF-8" in reasons[str(tmp_path / "0001/camid1_videoid1/seq0/human_crop_f2.txt")]
    assert "no usable frame" in reasons[str(tmp_path / "0001/camid1_videoid1/seq1")]
    assert "no human_crop" in reasons[str(tmp_path / "0001/camid1_videoid1/seq2")]
    assert "skipped 4" in str(report)


def _json_with(mutate) -> str:
    dets = [person(f, 10 * f, 0, 300, 2.5) for f in range(4)]
    out = mutate(dets)
    return out if isinstance(out, str) else json.dumps(out)


def _set(dets, key, value, k=1):
    dets[k][key] = value
    return dets


ALPHAPOSE_BAD = {
    "invalid json": lambda d: json.dumps(d)[:-30],
    "empty file": lambda d: "",
    "not a list": lambda d: {"detections": d},
    "short keypoints": lambda d: _set(d, "keypoints", d[1]["keypoints"][:50]),
    "string keypoint": lambda d: _set(d, "keypoints", ["1.0"] * 51),
    "nan keypoint": lambda d: json.dumps(d).replace("0.8", "NaN", 1),
    "null keypoint": lambda d: _set(d, "keypoints", [None] * 51),
    "bad image_id": lambda d: _set(d, "image_id", "frame.jpg"),
    "bad box": lambda d: _set(d, "box", [1, 2, 3]),
    "bad score": lambda d: _set(d, "score", "high"),
    "no detections": lambda d: [],
    "all zero confidence": lambda d: [dict(x, keypoints=[0.0] * 51) for x in d],
}


@pytest.mark.parametrize("case", sorted(ALPHAPOSE_BAD))
def test_alphapose_corrupt_file(tmp_path, case):
    good, bad = tmp_path / "0" / "000_00_0_0_nm.json", tmp_path / "0" / "000_00_0_0_bg.json"
    good.parent.mkdir()
    good.write_text(_json_with(lambda d: d))
    bad.write_text(_json_with(ALPHAPOSE_BAD[case]))
    with pytest.raises(DataError) as exc:
        load_dataset(f"alphapose:{tmp_path}")
    assert str(bad) in str(exc.value)
    seqs, report = load_dataset(f"alphapose:{tmp_path}", lenient=True)
    assert [s.condition for s in seqs] == ["nm"] and report.loaded == 1
    assert report.skipped and all(src == str(bad) for src, _ in report.skipped)


def test_alphapose_zero_confidence_frame_dropped_in_lenient_mode(tmp_path):
    dets = [person(f, 10 * f, 0, 300, 2.5) for f in range(4)]
    dets[2]["keypoints"] = [0.0] * 51
    path = tmp_path / "x.json"
    path.write_text(json.dumps(dets))
    with pytest.raises(DataError, match="zero confidence in frame.* 2"):
        load_alphapose(path)
    (seq,), report = load_alphapose(path, lenient=True)
    assert seq.frame_times.tolist() == [0, 1, 3] and len(report.skipped) == 1


CSV_BAD = {
    "too few values": lambda line: line.rsplit(",", 3)[0],
    "non-numeric": lambda line: line.replace(",", ",x", 1),
    "nan": lambda line: line.rsplit(",", 1)[0] + ",nan",
    "bad path": lambda line: "frame.jpg," + line.split(",", 1)[1],
    "all zero confidence": lambda line: ",".join(
        v if k == 0 or k % 3 else "0" for k, v in enumerate(line.split(","))),
}


@pytest.mark.parametrize("case", sorted(CSV_BAD))
def test_casiab_corrupt_line(tmp_path, case):
    bad_line = CSV_BAD[case](casiab_line("./003-nm-01-036/000007.jpg", casiab_joints(7.0)))
    path = write_casiab(tmp_path / "poses.csv", extra=[bad_line])
    with pytest.raises(DataError) as exc:
        load_casiab(path)
    assert str(path) in str(exc.value)
    seqs, report = load_casiab(path, lenient=True)
    assert len(seqs) == 3 and report.loaded == 3 and len(report.skipped) >= 1
    assert all(src.startswith(str(path)) for src, _ in report.skipped)


def test_casiab_empty_and_duplicate(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.csv"):
        load_dataset(f"casiab:{empty}")
    seqs, report = load_dataset(f"casiab:{empty}", lenient=True)
    assert seqs == [] and report.skipped[0][0] == str(empty)
    dup = write_casiab(tmp_path / "dup.csv", extra=[casiab_line(*CASIAB_ROWS[0][:1], casiab_joints(9.0))])
    with pytest.raises(DataError, match=r"dup.csv:8: duplicate frame 3"):
        load_casiab(dup)
    seqs, report = load_casiab(dup, lenient=True)
    assert seqs[0].poses[-1, 0, 0] == 3.0 and len(report.skipped) == 1  # the first occurrence is kept


def _write_npz_bad(path: Path, case: str) -> None:
    good = random_poses(3)
    if case == "truncated":
        np.savez(path, poses=good)
        path.write_bytes(path.read_bytes()[:100])
    elif case == "not a zip":
        path.write_bytes(b"hello, world")
    elif case == "no poses":
        np.savez(path, joints=good)
    elif case == "wrong ndim":
        np.savez(path, poses=good[0])
    elif case == "nan":
        good[1, 2, 0] = np.nan
        np.savez(path, poses=good)
    elif case == "object array (pickle)":
        np.savez(path, poses=good, subject=np.array(["x", None], dtype=object))
    elif case == "empty sequence":
        np.savez(path, poses=np.zeros((0, 17, 3), np.float32))
    elif case == "frame_times length":
        np.savez(path, poses=good, frame_times=np.arange(5))
    elif case == "skeleton mismatch":
        np.savez(path, poses=good, skeleton="openpose25")
    elif case == "unknown skeleton":
        np.savez(path, poses=good, skeleton="mystery")
    elif case == "all zero confidence":
        good[..., 2] = 0
        np.savez(path, poses=good)
    else:
        raise AssertionError(case)


NPZ_BAD = ["truncated", "not a zip", "no poses", "wrong ndim", "nan", "object array (pickle)", "empty sequence",
           "frame_times length", "skeleton mismatch", "unknown skeleton", "all zero confidence"]


@pytest.mark.parametrize("case", NPZ_BAD)
def test_npz_corrupt_file(tmp_path, case):
    np.savez(tmp_path / "good.npz", poses=random_poses(3))
    bad = tmp_path / "bad.npz"
    _write_npz_bad(bad, case)
    with pytest.raises(DataError) as exc:
        load_dataset(f"npz:{tmp_path}")
    assert str(bad) in str(exc.value)
    seqs, report = load_dataset(f"npz:{tmp_path}", lenient=True)
    assert [s.sequence_id for s in seqs] == ["good"] and report.loaded == 1
    assert report.skipped and all(src == str(bad) for src, _ in report.skipped)


# ---------------------------------------------------------------------------------------------- fuzzing
def _numberish():
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers().map(str),
                     st.sampled_from(["", " ", "nan", "-inf", "1e999", "0x10", "1_0", "--1", "١٢"]))


LINE = st.one_of(
    st.text(max_size=400),
    st.binary(max_size=400),
    st.lists(_numberish(), min_size=50, max_size=55).map(",".join),
    st.lists(st.floats(0, 1000), min_size=53, max_size=53).map(lambda v: ",".join(map(repr, v))),
)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(line=LINE, lenient=st.booleans())
def test_fuzz_gait3d_frame_line(line, lenient):
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "0001" / "camid1_videoid1" / "seq0"
        d.mkdir(parents=True)
        target = d / "human_crop_f1.txt"
        target.write_bytes(line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass"))
        try:
            seqs, report = load_gait3d(Path(tmp), lenient=lenient)
        except DataError as exc:
            assert not lenient and str(target) in str(exc)
            return
        assert isinstance(report, LoadReport) and len(seqs) + len(report.skipped) >= 1
        for s in seqs:
            check_sequence(s)
            assert s.poses.shape == (1, 17, 3)


@FUZZ
@given(line=LINE, prefix=st.sampled_from(["", "./004-bg-02-054/000009.jpg,", "./004-bg-02-054/x.jpg,"]),
       lenient=st.booleans())
def test_fuzz_casiab_line(line, prefix, lenient):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_casiab(Path(tmp) / "p.csv")
        raw = line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")
        with path.open("ab") as fh:
            fh.write(prefix.encode() + raw + b"\n")
        try:
            seqs, report = load_casiab(path, lenient=lenient)
        except DataError as exc:
            assert not lenient and str(path) in str(exc)
            return
        assert len(seqs) >= 3
        for s in seqs:
            check_sequence(s)
