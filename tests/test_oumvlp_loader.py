"""OU-MVLP-Pose JSON (`oumvlp:FOLDER`), on fixture trees written here in the release's layout
(SUBJECT/VIEW_SEQ/FRAME_keypoints.json, OpenPose JSON): labels, 18 and 17 keypoints, empty frames, several people
with the walker not first and a bystander in some frames, bad frame files in strict and lenient mode, stray entries."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bpmt_fast.data.loaders import SCHEMES, load_dataset, load_oumvlp
from bpmt_fast.data.loaders.oumvlp import frame_of
from bpmt_fast.data.sequence import DataError


def person(frames, joints=18, x0=400.0, step=4.0, seed=0, score=0.7):
    """(T, V, 3) x, y, confidence of someone walking right: a 80 x 300 box moving `step` px per frame."""
    rng = np.random.default_rng(seed)
    out = np.empty((frames, joints, 3))
    out[..., 0] = rng.uniform(0, 80, (frames, joints)) + x0 + step * np.arange(frames)[:, None]
    out[..., 1] = rng.uniform(0, 300, (frames, joints)) + 200
    out[..., 2] = score
    return np.round(out, 3)


def write_frame(folder, frame, people, name="{:04d}_keypoints.json"):
    folder.mkdir(parents=True, exist_ok=True)
    data = {"version": 1.2, "people": [{"person_id": [-1], "pose_keypoints_2d": p.ravel().tolist(),
                                         "face_keypoints_2d": []} for p in people]}
    path = folder / name.format(frame)
    path.write_text(json.dumps(data))
    return path


def write_walk(folder, frames, joints=18, seed=0, empty=()):
    poses = person(len(frames), joints, seed=seed)
    for k, frame in enumerate(frames):
        write_frame(folder, frame, [] if frame in empty else [poses[k]])
    return poses


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "OUMVLP-Pose" / "openpose"
    write_walk(root / "00001" / "000_00", range(21, 31), empty=(25,))
    write_walk(root / "00001" / "090_01", range(5, 13), seed=1)
    write_walk(root / "00002" / "180-00", range(1, 9), joints=17, seed=2)
    (root.parent / "ID_list.csv").write_text("train,test\n1,2\n")
    (root / "00001" / "notes.txt").write_text("x")
    write_frame(root / "00001" / "000_00" / "extra", 1, [person(1)[0]])
    write_frame(root / "00001" / "side", 1, [person(1)[0]])
    write_frame(root / "00001" / "000_00", 0, [], name="meta.json")
    return root


def test_registered():
    assert SCHEMES["oumvlp"] is load_oumvlp


def test_labels_skeletons_and_frames(tree):
    sequences, report = load_dataset(f"oumvlp:{tree}")
    by_id = {s.sequence_id: s for s in sequences}
    assert sorted(by_id) == ["00001/000_00", "00001/090_01", "00002/180-00"]
    walk = by_id["00001/000_00"]
    assert (walk.subject, walk.view, walk.condition, walk.recording) == ("00001", "000", "nm", "00001/00")
    assert walk.skeleton == "openpose18" and walk.poses.shape == (9, 18, 3)
    np.testing.assert_array_equal(walk.frame_times, [21, 22, 23, 24, 26, 27, 28, 29, 30])  # 25: nobody detected
    np.testing.assert_allclose(walk.poses, np.delete(person(10), 4, axis=0), rtol=1e-6)
    assert walk.meta == {"sequence": "00", "files": 10, "empty_frames": 1}
    assert by_id["00001/090_01"].recording == "00001/01" and by_id["00001/090_01"].view == "090"
    coco = by_id["00002/180-00"]
    assert coco.skeleton == "coco17" and coco.poses.shape == (8, 17, 3) and coco.recording == "00002/00"
    ignored = {os.path.relpath(path, tree): reason for path, reason in report.ignored}
    assert ignored == {
        "00001/notes.txt": "not a .json file",
        "00001/000_00/extra/0001_keypoints.json": "not at SUBJECT/VIEW_SEQ/*.json",
        "00001/side/0001_keypoints.json": "folder 'side' is not VIEW_SEQ (a 3-digit view and a 2-digit sequence: "
                                          "000_00)",
        "00001/000_00/meta.json": "no frame number in the file name",
    }
    assert report.loaded == 3 and not report.skipped


def test_frame_numbers_from_names():
    assert frame_of("0021_keypoints.json") == 21
    assert frame_of("0021_keypoint.json") == 21
    assert frame_of("00001-000_00-0021.json") == 21
    assert frame_of("frame7.json") == 7
    assert frame_of("meta.json") is None


def test_the_walker_is_tracked_when_not_first(tmp_path):
    root = tmp_path / "alphapose"
    frames = list(range(1, 13))
    walker = person(12, seed=3, score=0.7)
    bystander = person(12, x0=1100, step=0, seed=4, score=0.9)
    walker_at = [f for f in frames if f not in (8, 9)]
    for k, frame in enumerate(frames):
        people = []
        if frame in (3, 4, 5, 6, 8):
            people.append(bystander[k])  # the bystander comes first when present
        if frame in walker_at:
            people.append(walker[k])
        write_frame(root / "00042" / "045_00", frame, people)
    (seq,), _ = load_dataset(f"oumvlp:{root}")
    np.testing.assert_array_equal(seq.frame_times, walker_at)
    np.testing.assert_allclose(seq.poses, walker[[f - 1 for f in walker_at]], rtol=1e-6)
    assert seq.meta["empty_frames"] == 1  # frame 9: nobody


@pytest.mark.parametrize("content, message", [
    ("{not json", "invalid JSON"),
    ('[1, 2]', r"expected OpenPose JSON .*got list"),
    ('{"people": {}}', "an object without a 'people' list"),
    ('{"people": [{"pose_keypoints_2d": [1, 2]}]}', "person 0: pose_keypoints_2d must be 3 x V numbers"),
    ('{"people": [{"pose_keypoints_2d": ' + json.dumps([1.0] * 57) + '}]}', "person 0: 19 keypoints: expected"),
    ('{"people": [{"pose_keypoints_2d": ' + json.dumps(["1"] * 54) + '}]}', "must be 3 x V numbers"),
    ('{"people": [{"pose_keypoints_2d": [NaN' + ", 1" * 53 + ']}]}', "person 0: non-finite"),
    ('{"people": [{"pose_keypoints_2d": ' + json.dumps([1.0] * 51) + '}]}',
     "17 keypoints per person, earlier frames of 00001/000_00 have 18"),
    ('{"people": [{"pose_keypoints_2d": ' + json.dumps([1.0] * 54) + '}, {"pose_keypoints_2d": '
     + json.dumps([1.0] * 51) + '}]}', "person 1 has 17 keypoints, person 0 has 18"),
    ('{"people": [{"face_keypoints_2d": []}]}', "person 0 has no 'pose_keypoints_2d' list"),
])
def test_a_bad_frame_file_is_one_unit(tree, content, message):
    bad = tree / "00001" / "000_00" / "0031_keypoints.json"
    bad.write_text(content)
    with pytest.raises(DataError, match=rf"0031_keypoints.json: .*{message}"):
        load_dataset(f"oumvlp:{tree}")
    sequences, report = load_dataset(f"oumvlp:{tree}", lenient=True)
    walk = next(s for s in sequences if s.sequence_id == "00001/000_00")
    assert walk.frame_times[-1] == 30 and len(sequences) == 3
    assert [path for path, _ in report.skipped] == [str(bad)]


def test_a_frame_number_used_twice(tree):
    write_frame(tree / "00001" / "000_00", 22, [person(1)[0]], name="00001-000_00-{:04d}.json")
    with pytest.raises(DataError, match=r"0022_keypoints.json: frame 22 is also 00001-000_00-0022.json"):
        load_dataset(f"oumvlp:{tree}")


def test_a_sequence_with_nobody_in_it(tree):
    write_walk(tree / "00003" / "000_00", range(1, 4), empty=(1, 2, 3))
    with pytest.raises(DataError, match=r"00003/000_00: empty sequence"):
        load_dataset(f"oumvlp:{tree}")
    sequences, report = load_dataset(f"oumvlp:{tree}", lenient=True)
    assert len(sequences) == 3 and report.skipped[0][0].endswith("00003/000_00")


def test_root_must_be_one_pose_set(tree):
    with pytest.raises(DataError, match=r"no .json files at SUBJECT/VIEW_SEQ/\*.json \(deeper files found: point "
                                        r"at one pose set"):
        load_dataset(f"oumvlp:{tree.parent}")
    with pytest.raises(DataError, match="an OU-MVLP-Pose dataset is a folder"):
        load_dataset(f"oumvlp:{tree.parent / 'ID_list.csv'}")
