"""PYSKL / mmaction2 annotation pickles (`pyskl:FILE.pkl`), on files written here: labels from CASIA-B names and from
the label, splits, 17 / 18 keypoints, with and without keypoint_score, a bare list, several person slots whose
order changes with a bystander, bad annotations in strict and lenient mode, and a code-running pickle refused."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from bpmt_fast.data.loaders import SCHEMES, load_dataset, load_pyskl
from bpmt_fast.data.safe_pickle import UnsafePickleError
from bpmt_fast.data.sequence import DataError


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


def person(frames, joints=17, x0=100.0, step=3.0, seed=0):
    """(T, V, 2) keypoints of someone walking right: a 60 x 200 box moving `step` px per frame."""
    rng = np.random.default_rng(seed)
    xy = np.stack([rng.uniform(0, 60, (frames, joints)), rng.uniform(0, 200, (frames, joints))], axis=-1)
    xy[..., 0] += x0 + step * np.arange(frames)[:, None]
    xy[..., 1] += 100
    return xy.astype(np.float32)


def annotation(frame_dir, label, frames=10, joints=17, seed=0, score=0.8, **extra):
    ann = {"frame_dir": frame_dir, "label": label, "total_frames": frames, "img_shape": (480, 640),
           "keypoint": person(frames, joints, seed=seed)[None],
           "keypoint_score": np.full((1, frames, joints), score, np.float32)}
    ann.update(extra)
    return ann


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_registered():
    assert SCHEMES["pyskl"] is load_pyskl


def test_labels_splits_and_channels(tmp_path):
    anns = [annotation("001-bg-01-090", 0, seed=1), annotation("002-NM-02-180", 1, frames=8, seed=2),
            annotation("clip_A", 5, seed=3)]
    split = {"xsub_train": ["001-bg-01-090", "clip_A"], "xsub_val": ["002-NM-02-180", "clip_A", "gone"]}
    path = write(tmp_path / "casiab.pkl", {"split": split, "annotations": anns, "version": 2})
    sequences, report = load_dataset(f"pyskl:{path}")
    by_id = {s.sequence_id: s for s in sequences}
    assert sorted(by_id) == ["001-bg-01-090", "002-NM-02-180", "clip_A"]
    walk = by_id["001-bg-01-090"]  # the CASIA-B name wins over the label (a class index)
    assert (walk.subject, walk.condition, walk.view, walk.recording) == ("001", "bg", "090", "001-bg-01")
    assert walk.meta == {"label": 0, "split": ["xsub_train"], "num_persons": 1, "img_shape": (480, 640)}
    assert walk.skeleton == "coco17" and walk.poses.shape == (10, 17, 3) and walk.source == str(path)
    np.testing.assert_array_equal(walk.poses[..., :2], anns[0]["keypoint"][0])
    np.testing.assert_allclose(walk.poses[..., 2], 0.8)
    np.testing.assert_array_equal(walk.frame_times, np.arange(10))
    assert by_id["002-NM-02-180"].condition == "nm" and by_id["002-NM-02-180"].meta["split"] == ["xsub_val"]
    clip = by_id["clip_A"]
    assert (clip.subject, clip.condition, clip.view, clip.recording) == ("5", "", "", "clip_A")
    assert clip.meta["split"] == ["xsub_train", "xsub_val"]
    ignored = dict(report.ignored)
    assert "1 frame_dir(s) with no annotation, e.g. 'gone'" in ignored[f"{path}: split 'xsub_val'"]
    assert "not a PYSKL annotation key" in ignored[f"{path}: key 'version'"]
    assert report.loaded == 3 and not report.skipped


def test_bare_list_18_keypoints_and_no_keypoint_score(tmp_path):
    three = annotation("a", 1, joints=18, seed=4)
    scores = three.pop("keypoint_score")
    scores[0, 2, :] = 0.0  # frame 2: nobody detected
    three["keypoint"] = np.concatenate([three["keypoint"], scores[..., None]], axis=-1)  # (x, y, score)
    two = annotation("b", 2, seed=5)
    del two["keypoint_score"]  # (x, y): confidence 1
    path = write(tmp_path / "old.pkl", [three, two])
    sequences, report = load_dataset(f"pyskl:{path}")
    a, b = sorted(sequences, key=lambda s: s.sequence_id)
    assert a.skeleton == "openpose18" and a.poses.shape == (9, 18, 3) and a.meta["split"] == []
    np.testing.assert_array_equal(a.frame_times, [0, 1, 3, 4, 5, 6, 7, 8, 9])
    np.testing.assert_array_equal(a.poses, np.delete(three["keypoint"][0], 2, axis=0))
    assert b.poses.shape == (10, 17, 3) and (b.poses[..., 2] == 1).all()
    assert not report.ignored and not report.skipped


def test_3d_keypoints_without_scores_are_not_read_as_confidences(tmp_path):
    xyz = annotation("3d", 1)
    del xyz["keypoint_score"]
    xyz["keypoint"] = np.concatenate([xyz["keypoint"], np.full((1, 10, 17, 1), 2.7, np.float32)], axis=-1)
    path = write(tmp_path / "xyz.pkl", [xyz])
    with pytest.raises(DataError, match=r"xyz.pkl: 3d: no 'keypoint_score' and the third keypoint channel"):
        load_dataset(f"pyskl:{path}")
    scored = annotation("3d", 1)  # with scores, a third channel is z: (x, y, z, confidence)
    scored["keypoint"] = xyz["keypoint"]
    (seq,), _ = load_dataset(f"pyskl:{write(tmp_path / 'xyzs.pkl', [scored])}")
    assert seq.poses.shape == (10, 17, 4) and (seq.poses[..., 2] == 2.7).all() and np.allclose(seq.poses[..., 3], .8)


def test_the_walker_is_tracked_across_changing_slots(tmp_path):
    frames = 12
    walker = person(frames, seed=6)  # x from 100 to 193
    bystander = person(frames, x0=600, step=0, seed=7)  # standing still, far right, scored higher per frame
    keypoint = np.zeros((2, frames, 17, 2), np.float32)
    score = np.zeros((2, frames, 17), np.float32)
    walker_frames = [t for t in range(frames) if t not in (9, 10)]
    bystander_frames = [3, 4, 5, 6, 7, 9]
    for t in range(frames):
        slots = []  # per frame, sorted by score as extraction scripts do: the bystander first when present
        if t in bystander_frames:
            slots.append((bystander[t], 0.95))
        if t in walker_frames:
            slots.append((walker[t], 0.8))
        for m, (xy, s) in enumerate(slots):
            keypoint[m, t], score[m, t] = xy, s
    ann = {"frame_dir": "walk", "label": 3, "keypoint": keypoint, "keypoint_score": score, "total_frames": frames}
    (seq,), _ = load_dataset(f"pyskl:{write(tmp_path / 'multi.pkl', {'annotations': [ann]})}")
    np.testing.assert_array_equal(seq.frame_times, walker_frames)
    np.testing.assert_array_equal(seq.poses[..., :2], walker[walker_frames])
    np.testing.assert_allclose(seq.poses[..., 2], 0.8)
    assert seq.meta["num_persons"] == 2
    assert (keypoint[0, 3:8] == bystander[3:8]).all()  # slot 0 was the bystander in those frames


def bad_annotations():
    wrong_score = annotation("bad", 1)
    wrong_score["keypoint_score"] = np.ones((1, 10, 16), np.float32)
    nan = annotation("bad", 1)
    nan["keypoint"][0, 4, 2, 0] = np.nan
    no_label = annotation("bad", 1)
    del no_label["label"]
    return [
        (no_label, "missing key 'label'"),
        (annotation("bad", 1, keypoint=np.zeros((10, 17, 2))), r"'keypoint' must be a 4-d numeric array"),
        (annotation("bad", "x"), "'label' must be an integer"),
        (wrong_score, r"'keypoint_score' must be \(M, T, V\)"),
        (nan, r"non-finite values \(NaN/inf\) in 'keypoint'"),
        (annotation("bad", 1, total_frames=11), "'total_frames' is 11 but 'keypoint' has 10 frames"),
        (annotation("bad", 1, joints=19), r"19 keypoints: expected 17 \(coco17\), 18 \(openpose18\), "
         r"25 \(openpose25\), 26 \(halpe26\)"),
        (annotation("bad", 1, score=0.0), "all joints have zero confidence|empty sequence"),
        (annotation("good", 1), "frame_dir already loaded from"),
    ]


@pytest.mark.parametrize("bad, message", bad_annotations())
def test_a_bad_annotation_is_one_unit(tmp_path, bad, message):
    path = write(tmp_path / "data.pkl", {"annotations": [annotation("good", 1), bad, annotation("fine", 2)]})
    where = "good" if bad["frame_dir"] == "good" else "bad"
    with pytest.raises(DataError, match=rf"data.pkl: {where}: ({message})"):
        load_dataset(f"pyskl:{path}")
    sequences, report = load_dataset(f"pyskl:{path}", lenient=True)
    assert sorted(s.sequence_id for s in sequences) == ["fine", "good"]
    assert report.skipped and report.skipped[0][0] == f"{path}: {where}"


def test_annotations_without_frame_dir_are_named_by_position(tmp_path):
    path = write(tmp_path / "data.pkl", {"annotations": [annotation("good", 1), "text", {"label": 1}]})
    with pytest.raises(DataError, match=r"data.pkl: annotation 1: not a dict"):
        load_dataset(f"pyskl:{path}")
    sequences, report = load_dataset(f"pyskl:{path}", lenient=True)
    assert [s.sequence_id for s in sequences] == ["good"]
    assert [reason for _, reason in report.skipped] == ["not a dict", "no 'frame_dir' string"]


@pytest.mark.parametrize("top, message", [
    (42, "expected a PYSKL annotation dict .* or a list of annotations, got int"),
    ({"split": {}}, "a PYSKL annotation dict needs an 'annotations' list; keys: 'split'"),
    ({"annotations": {"a": 1}}, "'annotations' must be a list of dicts, got dict"),
    ({"annotations": [], "split": {"train": "abc"}}, "'split' entry 'train' must map a name to a list"),
    ({"annotations": [], "split": ["train"]}, r"'split' must be a dict"),
])
def test_wrong_top_level_names_the_file(tmp_path, top, message):
    path = write(tmp_path / "top.pkl", top)
    with pytest.raises(DataError, match=rf"top.pkl: {message}"):
        load_dataset(f"pyskl:{path}")


def test_not_a_pickle(tmp_path):
    path = tmp_path / "broken.pkl"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="broken.pkl: not a readable pickle"):
        load_dataset(f"pyskl:{path}")


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = write(tmp_path / "evil.pkl", {"annotations": [annotation("a", 1, label_note=RunsCode(marker))]})
    with pytest.raises(UnsafePickleError, match=r"evil.pkl: refused to load: the pickle asks for .*system"):
        load_dataset(f"pyskl:{path}")
    write(tmp_path / "good.pkl", [annotation("b", 2)])
    sequences, report = load_dataset(f"pyskl:{tmp_path}", lenient=True)
    assert [s.sequence_id for s in sequences] == ["b"]
    assert report.skipped[0][0] == str(path) and "refused to load" in report.skipped[0][1]
    assert not marker.exists()


def test_a_folder_of_pickles_lists_stray_files(tmp_path):
    write(tmp_path / "train.pkl", {"annotations": [annotation("001-nm-01-000", 0)]})
    write(tmp_path / "more" / "test.pkl", [annotation("002-nm-01-000", 1), annotation("001-nm-01-000", 0)])
    (tmp_path / "README.md").write_text("about")
    (tmp_path / "labels.txt").write_text("0 1")
    # files load in path order: more/test.pkl first
    with pytest.raises(DataError, match=r"/train.pkl: 001-nm-01-000: frame_dir already loaded from .*more/test.pkl"):
        load_dataset(f"pyskl:{tmp_path}")
    sequences, report = load_dataset(f"pyskl:{tmp_path}", lenient=True)
    assert sorted(s.sequence_id for s in sequences) == ["001-nm-01-000", "002-nm-01-000"]
    ignored = {os.path.basename(path): reason for path, reason in report.ignored}
    assert ignored == {"README.md": "not a .pkl file", "labels.txt": "not a .pkl file"}
