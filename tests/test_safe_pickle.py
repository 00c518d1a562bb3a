"""Pose pickles load without running code: the restricted unpickler against plain data in every pickle protocol
(NumPy arrays of the dtypes pose files use, nested containers, scalars) and against pickles that would run code
or build other objects under `pickle.load`."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from bpmt_fast.data.safe_pickle import UnsafePickleError, load_pickle, loads_pickle
from bpmt_fast.data.sequence import DataError


def pose_annotation():
    """A PYSKL-style annotation file and an OpenGait-style pose array, as the toolkits write them."""
    rng = np.random.default_rng(0)
    return {
        "split": {"xsub_train": ["a", "b"], "xsub_val": ["c"]},
        "annotations": [{"frame_dir": "a", "label": 3, "img_shape": (1080, 1920), "total_frames": 5,
                         "keypoint": rng.standard_normal((2, 5, 17, 2)).astype(np.float32),
                         "keypoint_score": rng.random((2, 5, 17)).astype(np.float16)}],
        "opengait": rng.standard_normal((7, 17, 3)),  # float64 (T, V, C)
        "scalars": [np.float32(1.5), np.int64(7), 2.5, None, True, b"raw", {1, 2}, frozenset({3}), 1 + 2j],
    }


def assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys() and all(assert_same(a[k], b[k]) is None for k in a)
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b) and all(assert_same(x, y) is None for x, y in zip(a, b))
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    else:
        assert a == b and type(a) is type(b)


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_plain_pose_data_loads_in_every_protocol(protocol, tmp_path):
    data = pose_annotation()
    path = tmp_path / "poses.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    assert_same(data, load_pickle(path))


class RunsCode:
    """What a malicious pickle does: pickle.load calls os.system (here: a harmless file-creating command)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class OpensFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("payload, name", [(RunsCode, "system"), (OpensFile, r"io\.open")])
def test_code_running_pickles_are_refused_and_nothing_runs(payload, name, tmp_path):
    marker = tmp_path / "ran"
    evil = pickle.dumps({"keypoint": np.zeros((1, 17, 2)), "x": payload(marker)})
    acted = pickle.loads(evil)  # plain pickle really acts (the marker file appears): the refusal below matters
    if hasattr(acted["x"], "close"):
        acted["x"].close()
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "evil.pkl"
    path.write_bytes(evil)
    with pytest.raises(UnsafePickleError, match=rf"{path}: refused to load: the pickle asks for .*{name}"):
        load_pickle(path)
    assert not marker.exists()


def test_other_classes_are_refused(tmp_path):
    from collections import OrderedDict
    path = tmp_path / "ordered.pkl"
    path.write_bytes(pickle.dumps(OrderedDict(a=1)))
    with pytest.raises(UnsafePickleError, match="collections.OrderedDict"):
        load_pickle(path)


def test_corrupt_and_missing_files_are_data_errors(tmp_path):
    truncated = pickle.dumps(pose_annotation())[:100]
    with pytest.raises(DataError, match="broken.pkl: not a readable pickle"):
        loads_pickle(truncated, "broken.pkl")
    with pytest.raises(DataError, match="cannot read"):
        load_pickle(tmp_path / "missing.pkl")
