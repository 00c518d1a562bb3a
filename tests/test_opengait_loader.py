"""OpenGait / FastPoseGait pose `.pkl` datasets (`opengait:FOLDER`), on fixture trees written here: labels from
SUBJECT/TYPE/VIEW, 17- and 18-keypoint files, (T, V, 2) files, several files in a view folder, files at the wrong
depth, bad arrays, and a malicious pickle that is refused without running."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from bpmt_fast.data.loaders import load_dataset
from bpmt_fast.data.safe_pickle import UnsafePickleError
from bpmt_fast.data.sequence import DataError


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=4))


def poses(frames, joints=17, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    array = rng.random((frames, joints, channels)).astype(np.float32) * 100
    if channels == 3:
        array[..., 2] = 0.9
    return array


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "casiab-pose"
    write(root / "001/nm-01/090/090.pkl", poses(30))
    write(root / "001/bg-02/000/000.pkl", poses(25, channels=2, seed=1))
    write(root / "002/nm-01/090/a.pkl", poses(20, seed=2))
    write(root / "002/nm-01/090/b.pkl", poses(21, seed=3))
    write(root / "003/cl-01/180/180.pkl", poses(22, joints=18, seed=4))
    write(root / "stray.pkl", poses(5))
    (root / "README.txt").write_text("about")
    return root


def test_labels_skeletons_and_ids(tree):
    sequences, report = load_dataset(f"opengait:{tree}")
    by_id = {s.sequence_id: s for s in sequences}
    assert sorted(by_id) == ["001/bg-02/000", "001/nm-01/090", "002/nm-01/090/a", "002/nm-01/090/b",
                             "003/cl-01/180"]
    walk = by_id["001/nm-01/090"]
    assert (walk.subject, walk.condition, walk.view, walk.recording) == ("001", "nm", "090", "001/nm-01")
    assert walk.skeleton == "coco17" and walk.poses.shape == (30, 17, 3)
    np.testing.assert_allclose(walk.poses, poses(30))
    assert by_id["003/cl-01/180"].skeleton == "openpose18"
    two_channels = by_id["001/bg-02/000"].poses
    assert two_channels.shape == (25, 17, 3) and (two_channels[..., 2] == 1).all()
    ignored = {os.path.basename(path): reason for path, reason in report.ignored}
    assert "not at SUBJECT/TYPE/VIEW" in ignored["stray.pkl"] and "README.txt" in ignored


def test_malicious_pickle_is_refused_and_nothing_runs(tree, tmp_path):
    marker = tmp_path / "ran"
    write(tree / "004/nm-01/090/090.pkl", {"x": RunsCode(marker)})
    with pytest.raises(UnsafePickleError, match=r"004/nm-01/090/090.pkl: refused to load: .*system"):
        load_dataset(f"opengait:{tree}")
    sequences, report = load_dataset(f"opengait:{tree}", lenient=True)
    assert len(sequences) == 5 and any("refused to load" in reason for _, reason in report.skipped)
    assert not marker.exists()


@pytest.mark.parametrize("bad, message", [
    (np.zeros((10, 17)), r"expected one \(T, V, 2 or 3\) numeric array"),
    ({"poses": np.zeros((10, 17, 3))}, r"expected one .* array .*, got dict"),
    (np.zeros((10, 19, 3)), r"19 keypoints: expected 17 \(coco17\), 18 \(openpose18\), "
     r"25 \(openpose25\), 26 \(halpe26\)"),
])
def test_bad_arrays_name_the_file(tree, bad, message):
    write(tree / "005/nm-01/000/000.pkl", bad)
    with pytest.raises(DataError, match=rf"005/nm-01/000/000.pkl: {message}"):
        load_dataset(f"opengait:{tree}")


def test_not_a_folder(tmp_path):
    write(tmp_path / "one.pkl", poses(3))
    with pytest.raises(DataError, match="a folder ROOT/SUBJECT/TYPE/VIEW"):
        load_dataset(f"opengait:{tmp_path / 'one.pkl'}")


def test_gait3d_layout_reads_the_camera_as_the_view(tmp_path):
    """Gait3D-Pose as OpenGait lays it out, SUBJECT/camidC_videoidV/seqS: the view is the camera (the reid
    protocol removes same-camera gallery items) and there is no walking condition."""
    import pickle

    import numpy as np

    from bpmt_fast.data.loaders import load_dataset
    from bpmt_fast.data.splits import probe_list_key_of

    folder = tmp_path / "0002" / "camid33_videoid2" / "seq0"
    folder.mkdir(parents=True)
    (folder / "seq0.pkl").write_bytes(pickle.dumps(np.ones((5, 17, 3), np.float32)))
    (walk,), _ = load_dataset(f"opengait:{tmp_path}")
    assert (walk.subject, walk.view, walk.condition, walk.recording) == ("0002", "camid33", "", "0002/camid33_videoid2")
    assert probe_list_key_of(walk) == "0002-camid33_videoid2-seq0"  # the entry of Gait3D's PROBE_SET
