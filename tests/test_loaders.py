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
    alphapose,
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
    assert report.loaded == 8 and report.skipped == [] and report.ignored == []
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
    assert report.ignored == [(str(tmp_path / "7/camid3_videoid1/seq2/notes.md"), "not a frame file "
                               "(human_crop_f<frame>.txt)")]


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
    assert sorted(Path(p).name for p, _ in report.ignored) == ["LICENCE-CC-BY-NC-ND-4.0.txt", "PSYMO_README.txt"]
    assert all(s.recording == "" and s.recording_id == s.sequence_id for s in seqs)
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
    assert report.loaded == 1 and report.skipped == []
    assert report.ignored == [(str(tmp_path / "3" / "README.txt"), "not a .json file"),
                              (str(tmp_path / "LICENCE.txt"), "not a .json file")]


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
    seqs, report = load_npz(tmp_path)
    assert [s.sequence_id for s in seqs] == ["b", "sub/h"]
    assert report.ignored == [(str(tmp_path / "notes.txt"), "not a .npz file")] and report.skipped == []
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


# ------------------------------------------------------------------------------------- unloaded entries
def ignored(report: LoadReport, root: Path) -> dict[str, str]:
    """report.ignored as {path relative to root: reason}."""
    return {Path(path).relative_to(root).as_posix(): reason for path, reason in report.ignored}


def gait3d_tree_with_strays(root: Path) -> None:
    """Three good sequences (two clips of one recording) among every kind of entry the layout does not allow."""
    write_gait3d(root, {"0001/camid1_videoid1/seq0": {1: GOOD, 2: GOOD}, "0001/camid1_videoid1/seq1": {5: GOOD},
                        "0004/camid1_videoid2/seq0": {3: GOOD},
                        "0001/camid1_videoid1/clip3": {1: GOOD},  # sequence folder with a bad name
                        "0001/video7/seq0": {1: GOOD},  # camera folder with a bad name
                        "0001/camid1_videoid1/seq0/extra": {9: GOOD},  # folder inside a sequence
                        "deep/0005/camid1_videoid1/seq0": {1: GOOD, 2: GOOD},  # one level too deep
                        "0003/camid2_videoid1": {1: GOOD, 2: GOOD}})  # frames right in a camera folder
    (root / "README.md").write_text("stray at the root")
    (root / "0001/notes.txt").write_text("stray in a subject folder")
    (root / "0001/camid1_videoid1/list.txt").write_text("stray in a camera folder")
    (root / "0001/camid1_videoid1/seq0/notes.md").write_text("not a frame file")
    (root / "0002").mkdir()  # empty subject folder
    (root / "0004/camid9_videoid9").mkdir()  # empty camera folder
    for hidden in (".DS_Store", "0001/.cache", "0001/camid1_videoid1/seq0/._human_crop_f3.txt"):
        (root / hidden).write_bytes(b"\x00\x01 hidden: passed over silently")
    (root / "0001/camid1_videoid1/.git").mkdir()


GAIT3D_IGNORED = {  # path: words its reason must contain
    "README.md": "stray file", "0001/notes.txt": "stray file", "0001/camid1_videoid1/list.txt": "stray file",
    "0001/camid1_videoid1/seq0/notes.md": "not a frame file",
    "0001/camid1_videoid1/seq0/extra": "folder inside a sequence folder; it holds 1 frame file",
    "0001/camid1_videoid1/clip3": "folder name is not seq<S>; it holds 1 frame file",
    "0001/video7": "folder name is not camid<C>_videoid<V>; it holds 1 frame file",
    "deep/0005": "folder name is not camid<C>_videoid<V>; it holds 2 frame files",
    "0003/camid2_videoid1": "2 frame files at the wrong depth",
    "0002": "empty folder", "0004/camid9_videoid9": "empty folder",
}


@pytest.mark.parametrize("lenient", [False, True])
def test_gait3d_every_unloaded_entry_is_reported(tmp_path, lenient):
    gait3d_tree_with_strays(tmp_path)
    seqs, report = load_dataset(f"gait3d:{tmp_path}", lenient=lenient)  # layout entries never raise
    assert [s.sequence_id for s in seqs] == ["0001/camid1_videoid1/seq0", "0001/camid1_videoid1/seq1",
                                             "0004/camid1_videoid2/seq0"]
    assert seqs[0].frame_times.tolist() == [1, 2] and report.loaded == 3 and report.skipped == []
    reasons = ignored(report, tmp_path)
    assert set(reasons) == set(GAIT3D_IGNORED)  # hidden entries are not listed
    for path, words in GAIT3D_IGNORED.items():
        assert words in reasons[path], (path, reasons[path])
    text = str(report)
    assert text.startswith(f"loaded 3 sequences, skipped 0, ignored {len(GAIT3D_IGNORED)}")
    assert all(f"ignored {tmp_path / path}: " in text for path in GAIT3D_IGNORED)


def test_gait3d_recording_shared_by_clips_of_one_video(tmp_path):
    gait3d_tree_with_strays(tmp_path)
    seqs, _ = load_gait3d(tmp_path)
    assert [s.recording for s in seqs] == ["0001/camid1_videoid1"] * 2 + ["0004/camid1_videoid2"]
    assert [s.recording_id for s in seqs] == [s.recording for s in seqs]


@needs_gait3d
def test_gait3d_sample_recordings(gait3d):
    seqs, _ = gait3d
    clips = defaultdict(list)
    for s in seqs:
        assert s.recording == s.sequence_id.rsplit("/", 1)[0] == f"{s.subject}/{Path(s.source).parent.name}"
        clips[s.recording].append(s.meta["seq"])
    assert clips["0000/camid11_videoid2"] == ["0", "1"]  # two clips cut from one recording
    assert len(clips) < len(seqs)


def test_gait3d_wrong_root_says_what_it_found(tmp_path):
    write_gait3d(tmp_path, {"0001/camid1_videoid1/seq0": {1: GOOD}})
    with pytest.raises(DataError, match=r"no Gait3D sequence.*camid1_videoid1/seq0 \(folder name is not "
                                        r"camid<C>_videoid<V>; it holds 1 frame file"):
        load_gait3d(tmp_path / "0001")  # one level too low


def test_alphapose_unloaded_entries_reported(tmp_path):
    (tmp_path / "5" / "empty").mkdir(parents=True)
    (tmp_path / "5" / "005_45_0_1_nm.json").write_text(_json_with(lambda d: d))
    (tmp_path / "5" / "005_45_0_1_nm.json.bak").write_text("old copy")
    (tmp_path / "5" / "poses.csv").write_text("a,b")
    (tmp_path / "5" / "._005_45_0_1_nm.json").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # hidden
    (tmp_path / "5" / "dangling.json").symlink_to(tmp_path / "missing.json")
    (tmp_path / "5" / "loop").symlink_to(tmp_path)
    seqs, report = load_alphapose(tmp_path)  # strict: nothing corrupt, the rest is only reported
    assert [s.sequence_id for s in seqs] == ["5/005_45_0_1_nm"] and report.skipped == []
    assert ignored(report, tmp_path) == {
        "5/005_45_0_1_nm.json.bak": "not a .json file", "5/dangling.json": "not a regular file or folder "
        "(a broken link?)", "5/empty": "empty folder", "5/loop": f"link to a folder already walked ({tmp_path})",
        "5/poses.csv": "not a .json file"}
    assert "ignored 5" in str(report)
    (tmp_path / "5" / "005_45_0_1_nm.json").unlink()
    with pytest.raises(DataError, match=r"no AlphaPose .json files found; ignored: .*\.bak \(not a .json file\)"):
        load_alphapose(tmp_path)


def test_npz_and_casiab_unloaded_entries_reported(tmp_path):
    (tmp_path / "clips" / "sub").mkdir(parents=True)
    np.savez(tmp_path / "clips" / "a.npz", poses=random_poses(3), recording="walk7")
    np.save(tmp_path / "clips" / "sub" / "b.npy", random_poses(3))
    (tmp_path / "clips" / ".hidden.npz").write_bytes(b"not even a zip")  # hidden: never opened
    (seq,), report = load_npz(tmp_path / "clips")
    assert (seq.sequence_id, seq.recording, seq.recording_id) == ("a", "walk7", "walk7")
    assert ignored(report, tmp_path) == {"clips/sub/b.npy": "not a .npz file"}
    (tmp_path / "csv").mkdir()
    write_casiab(tmp_path / "csv" / "poses.csv")
    (tmp_path / "csv" / "poses.csv.gz").write_bytes(b"\x1f\x8b")
    seqs, report = load_casiab(tmp_path / "csv")
    assert len(seqs) == 3 and all(s.recording == "" for s in seqs)
    assert ignored(report, tmp_path) == {"csv/poses.csv.gz": "not a .csv file"}


@pytest.mark.parametrize("locked", ["0002/camid1_videoid1", "0002/camid1_videoid1/seq0"])
def test_gait3d_unreadable_folder_is_a_bad_unit(tmp_path, monkeypatch, locked):
    write_gait3d(tmp_path, {"0001/camid1_videoid1/seq0": {1: GOOD}, "0002/camid1_videoid1/seq0": {2: GOOD}})
    scandir = os.scandir

    def scandir_or_deny(path):
        if Path(path) == tmp_path / locked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_or_deny)
    with pytest.raises(DataError, match=f"{locked}: cannot read folder \\(Permission denied\\)"):
        load_gait3d(tmp_path)
    seqs, report = load_gait3d(tmp_path, lenient=True)
    assert [s.subject for s in seqs] == ["0001"] and report.ignored == []
    assert report.skipped == [(str(tmp_path / locked), "cannot read folder (Permission denied)")]


def test_load_report_lists_both_kinds_and_counts_the_rest():
    report = LoadReport(loaded=4)
    for k in range(25):
        report.skip(f"bad{k}.json", "invalid JSON")
    report.ignore("README.md", "not a .json file")
    lines = str(report).splitlines()
    assert lines[0] == "loaded 4 sequences, skipped 25, ignored 1"
    assert lines[1:3] == ["  skipped bad0.json: invalid JSON", "  skipped bad1.json: invalid JSON"]
    assert lines[21:] == ["  ... and 5 more skipped", "  ignored README.md: not a .json file"]


# ------------------------------------------------------------------------------------- tracklet linking
def reference_tracklets(dets: list) -> list[list]:
    """Step 1 of alphapose's person selection written the obvious way (every detection against every live
    tracklet, quadratic): the fast linker must give exactly these tracklets."""
    by_frame_dets = defaultdict(list)
    for d in dets:
        by_frame_dets[d.frame].append(d)
    tracks, live = [], []
    for frame in sorted(by_frame_dets):
        cur = sorted(by_frame_dets[frame], key=lambda d: (-d.score, d.order))
        live = [j for j in live if frame - tracks[j][-1].frame <= alphapose.MAX_GAP]
        pairs = sorted((-alphapose._iou(d.box, tracks[j][-1].box), i, j) for i, d in enumerate(cur) for j in live)
        used_d, used_t = set(), set()
        for neg_iou, i, j in pairs:
            if -neg_iou >= alphapose.LINK_IOU and i not in used_d and j not in used_t:
                used_d.add(i)
                used_t.add(j)
                tracks[j].append(cur[i])
        for i, d in enumerate(cur):
            if i not in used_d:
                live.append(len(tracks))
                tracks.append([d])
    return tracks


def reference_walker(tracks: list[list]) -> list:
    """Steps 2-4 of alphapose's person selection written the obvious way (every candidate against every kept
    tracklet)."""
    total = [sum(d.score for d in t) for t in tracks]
    mean = [total[k] / len(t) for k, t in enumerate(tracks)]
    height = [float(np.median([d.box[3] for d in t])) for t in tracks]
    order = sorted(range(len(tracks)), key=lambda k: (-total[k], tracks[k][0].frame, k))
    kept = order[:1]
    for k in order[1:]:
        spans_meet = any(tracks[k][0].frame <= tracks[c][-1].frame and tracks[k][-1].frame >= tracks[c][0].frame
                         for c in kept)
        if not spans_meet and mean[k] >= alphapose.SCORE_RATIO * mean[kept[0]] \
                and height[k] >= alphapose.HEIGHT_RATIO * height[kept[0]]:
            kept.append(k)
    return sorted((d for k in kept for d in tracks[k]), key=lambda d: d.frame)


def crowd(frames: int, people: int, width: float, seed: int = 0, grid: float = 0.0, jumps: float = 0.02) -> list:
    """Random walkers (boxes w = h / 3) that now and then vanish or jump; `grid` > 0 snaps boxes to a grid, box
    heights to three sizes and scores to halves, so that equal IoUs and equal scores (the tie-breaks) are common."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, width, people), rng.uniform(0, 600, people)
    h, score = rng.uniform(150, 350, people), rng.uniform(0.5, 3.0, people)
    if grid:
        h = rng.choice([180.0, 240.0, 300.0], people)
    kp = np.zeros((17, 3), np.float32)
    dets = []
    for f in range(frames):
        x += rng.normal(0, 8, people)
        y += rng.normal(0, 4, people)
        jump = rng.random(people) < jumps
        x[jump] = rng.uniform(0, width, jump.sum())
        for p in np.flatnonzero(rng.random(people) >= 0.05):
            box = np.array([x[p], y[p], h[p] / 3, h[p]])
            s = score[p]
            if grid:
                box, s = np.round(box / grid) * grid, round(s * 2) / 2
            dets.append(alphapose.Detection(f + f // 7, kp, float(s), tuple(box.tolist()), len(dets)))
    order = np.random.default_rng(seed + 1).permutation(len(dets))  # files need not be sorted
    return [dets[k] for k in order]


def orders(tracks: list[list]) -> list[list[int]]:
    return [[d.order for d in t] for t in tracks]


@pytest.mark.parametrize("grid", [0.0, 20.0])
def test_tracklets_match_reference_linker(grid):
    for seed in range(3):
        dets = crowd(40, 15, 900, seed=seed, grid=grid, jumps=0.15)  # many breaks: the walker joins 2-3 tracklets
        expected = reference_tracklets(dets)
        assert orders(alphapose._tracklets(dets)) == orders(expected)
        assert [d.order for d in alphapose.select_walker(dets)] == [d.order for d in reference_walker(expected)]


def walker(frames, x0: float, step: float, y: float, h: float, score: float, start: int = 0) -> list:
    kp = np.zeros((17, 3), np.float32)
    return [alphapose.Detection(f, kp, score, (x0 + step * f, y, h / 3, h), start + k) for k, f in enumerate(frames)]


def test_tracklets_crossing_people_keep_identities():
    # A (tall) walks right, B (shorter) walks left; they cross at frame 12, where each one's box also links
    # to the other's previous box: the better overlap (the same person's) must win on both sides.
    a = walker(range(25), 0, 20, 0, 300, 2.0)
    b = walker(range(25), 480, -20, 40, 240, 1.0, start=100)
    assert a[12].box[0] == b[12].box[0], "test premise: they cross at frame 12"
    assert min(alphapose._iou(a[12].box, b[11].box), alphapose._iou(b[12].box, a[11].box)) > alphapose.LINK_IOU
    tracks = orders(alphapose._tracklets(a + b))
    assert tracks == [[d.order for d in a], [d.order for d in b]]


def test_tracklets_gap_and_reentry():
    frames = [f for f in range(30) if not 10 <= f < 13]  # a 3-frame gap (<= MAX_GAP) is bridged
    assert len(alphapose._tracklets(walker(frames, 0, 5, 0, 300, 2.0))) == 1
    frames = [f for f in range(30) if not 10 <= f < 20]  # a 10-frame gap is a new tracklet ...
    dets = walker(frames, 0, 5, 0, 300, 2.0)
    tracks = alphapose._tracklets(dets)
    assert [[d.frame for d in t] for t in tracks] == [list(range(10)), list(range(20, 30))]
    assert alphapose.select_walker(dets) == dets  # ... that the walker rule joins back (same size and score)


def test_tracklets_one_detection_per_tracklet():
    # two detections overlap the one live tracklet: the better overlap links, the other starts a tracklet
    first = walker([0], 0, 0, 0, 300, 2.0)
    near, far = walker([1], 5, 0, 0, 300, 1.0, start=1), walker([1], 40, 0, 0, 300, 3.0, start=2)
    tracks = orders(alphapose._tracklets(first + near + far))
    assert tracks == [[0, 1], [2]]


def iou_evaluations(dets: list, monkeypatch) -> int:
    calls = [0]
    iou = alphapose._iou

    def counting(a, b):
        calls[0] += 1
        return iou(a, b)

    monkeypatch.setattr(alphapose, "_iou", counting)
    alphapose._tracklets(dets)
    monkeypatch.setattr(alphapose, "_iou", iou)
    return calls[0]


def test_tracklet_linking_is_linear_in_a_crowd_file(tmp_path, monkeypatch):
    """300 frames of 60 walkers through the whole loader: the IoU work grows like the detections (x 4 from 15
    to 60 people at the same crowd density), where comparing all pairs grows like their square (x 16)."""
    counts = {}
    for people in (15, 60):
        dets = crowd(300, people, width=120.0 * people, seed=people)
        path = tmp_path / f"crowd{people}.json"
        path.write_text(json.dumps([{"image_id": f"{d.frame}.jpg", "keypoints": [1.0] * 51, "score": d.score,
                                     "box": list(d.box)} for d in dets]))
        parsed = alphapose.parse_detections(json.loads(path.read_text()))
        counts[people] = iou_evaluations(parsed, monkeypatch), len(parsed)
        seq = alphapose.load_alphapose_file(path)
        assert seq.num_frames > 0 and seq.meta["num_detections"] == len(dets)
    (small, n_small), (large, n_large) = counts[15], counts[60]
    assert large / n_large < 3, "a detection meets only the few tracklets its box overlaps"
    assert large / small < 1.5 * n_large / n_small, counts  # linear: about 4; all pairs: about 16


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
