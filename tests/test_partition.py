"""The `partition` protocol: published train / test partitions (OpenGait's datasets/<DATASET>/<DATASET>.json) with
the field's gallery / probe rules, checked against restatements of the published rules written out here with plain
loops (OpenGait opengait/evaluation/evaluator.py: CASIA-B gallery nm-01..04, probe sets NM nm-05/06, BG bg-01/02,
CL cl-01/02; OU-MVLP gallery 01, probe 00; Gait3D probes = PROBE_SET entries 'label-type-view', gallery = the
other test sequences), plus notes, errors, the config section and split records."""
import json
import pickle
import random
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from bpmt_fast.data.loaders import load_dataset
from bpmt_fast.data.splits import (PARTS, RECORD_LISTS, compare_split_records, partition_split, probe_list_key_of,
                                   read_partition, sequence_type, split_from_record, split_record)
from bpmt_fast.train.config import load_config, load_resolved_config, protocol_keys, to_dict

# CASIA-B as OpenGait ships it (datasets/CASIA-B/CASIA-B.json): 74 training subjects 001-074, 50 test 075-124
CASIA_B = {"TRAIN_SET": [f"{s:03d}" for s in range(1, 75)], "TEST_SET": [f"{s:03d}" for s in range(75, 125)]}
CASIA_TYPES = [f"nm-0{r}" for r in range(1, 7)] + ["bg-01", "bg-02", "cl-01", "cl-02"]
CASIA_VIEWS = [f"{v:03d}" for v in range(0, 181, 18)]  # 000, 018, ..., 180
GALLERY = ["nm-01", "nm-02", "nm-03", "nm-04"]
PROBES = {"NM": ["nm-05", "nm-06"], "BG": ["bg-01", "bg-02"], "CL": ["cl-01", "cl-02"]}


def walk(subject, type_, view, condition=None, sequence_id=None, **meta):
    """A labelled sequence as the opengait loader makes it (only labels: the splits read nothing else)."""
    return SimpleNamespace(subject=subject, view=view, condition=type_.split("-")[0] if condition is None else condition,
                           sequence_id=sequence_id or f"{subject}/{type_}/{view}", recording=f"{subject}/{type_}",
                           meta={"type": type_, **meta})


def casia_like():
    """Subjects 070-079 (five TRAIN_SET, five TEST_SET) with every type and view, and 125, in neither set."""
    return [walk(f"{s:03d}", t, v) for s in list(range(70, 80)) + [125] for t in CASIA_TYPES for v in CASIA_VIEWS]


def assert_partition(split, sequences):
    """Every index in exactly one part (or dropped), lists sorted, sub-lists consistent with their parents."""
    everything = sorted(i for name in PARTS + ("dropped",) for i in getattr(split, name))
    assert everything == list(range(len(sequences)))
    for name in RECORD_LISTS:
        assert getattr(split, name) == sorted(getattr(split, name)), name
    assert sorted(split.val_gallery + split.val_probe) == split.val
    grouped = sorted(i for members in split.probe_by_condition.values() for i in members)
    assert grouped in ([], split.probe)


# ------------------------------------------------------------------------------------------------ CASIA-B


def test_casia_b_equals_the_published_rule():
    sequences = casia_like()
    split = partition_split(sequences, CASIA_B, GALLERY, PROBES)
    assert_partition(split, sequences)
    train, test = set(CASIA_B["TRAIN_SET"]), set(CASIA_B["TEST_SET"])
    expected = {"train": [], "gallery": [], "probe": [], "dropped": [], "NM": [], "BG": [], "CL": []}
    for i, s in enumerate(sequences):  # the rule, restated
        type_ = s.meta["type"]
        if s.subject in train:
            expected["train"].append(i)
        elif s.subject not in test:
            expected["dropped"].append(i)
        elif type_ in ("nm-01", "nm-02", "nm-03", "nm-04"):
            expected["gallery"].append(i)
        else:
            expected["probe"].append(i)
            if type_ in ("nm-05", "nm-06"):
                expected["NM"].append(i)
            elif type_ in ("bg-01", "bg-02"):
                expected["BG"].append(i)
            else:
                assert type_ in ("cl-01", "cl-02")
                expected["CL"].append(i)
    for name in ("train", "gallery", "probe", "dropped"):
        assert getattr(split, name) == expected[name], name
    assert split.probe_by_condition == {name: expected[name] for name in ("NM", "BG", "CL")}
    assert not split.val and not split.test
    assert split.subjects["train"] == ["070", "071", "072", "073", "074"]
    assert split.subjects["gallery"] == split.subjects["probe"] == ["075", "076", "077", "078", "079"]
    assert len(split.gallery) == 5 * 4 * 11 and len(split.probe_by_condition["NM"]) == 5 * 2 * 11
    assert split.notes == ["69 of the 74 TRAIN_SET subjects are not in the data: 001, 002, 003, 004, 005 and 64 more",
                           "45 of the 50 TEST_SET subjects are not in the data: 080, 081, 082, 083, 084 and 40 more",
                           "1 subject of the data in neither TRAIN_SET nor TEST_SET: 125; their 110 sequences dropped"]
    text = split.describe()
    assert "partition split" in text and "probe/NM: 110 sequences" in text and "note: 1 subject of the data" in text


def test_casia_b_test_sequences_of_other_types_are_dropped_and_said():
    sequences = casia_like() + [walk("077", "nm-07", "090"), walk("077", "xx-01", "090"), walk("072", "xx-01", "000")]
    split = partition_split(sequences, CASIA_B, GALLERY, PROBES)
    assert_partition(split, sequences)
    assert len(sequences) - 3 in split.dropped and len(sequences) - 2 in split.dropped
    assert len(sequences) - 1 in split.train  # a training subject trains on every type
    assert "dropped 2 test sequences of neither a gallery nor a probe type: nm-07 (1), xx-01 (1)" in split.notes


def test_a_probe_set_without_sequences_is_said():
    sequences = [s for s in casia_like() if not s.meta["type"].startswith("cl")]
    split = partition_split(sequences, CASIA_B, GALLERY, PROBES)
    assert set(split.probe_by_condition) == {"NM", "BG"}
    assert "probe set CL: no test sequence of its types ['cl-01', 'cl-02']" in split.notes


def test_validation_subjects_come_from_train_set_by_seed():
    sequences = casia_like()
    split = partition_split(sequences, CASIA_B, GALLERY, PROBES, val_subjects=2, seed=3)
    assert_partition(split, sequences)
    val = set(split.subjects["val"])
    assert len(val) == 2 and val <= {"070", "071", "072", "073", "074"}
    assert set(split.subjects["train"]) == {"070", "071", "072", "073", "074"} - val
    assert split.subjects["val_gallery"] == split.subjects["val_probe"] == sorted(val)
    for i in split.val_gallery:
        assert sequences[i].meta["type"] in GALLERY
    assert {sequences[i].meta["type"] for i in split.val_probe} == {t for ts in PROBES.values() for t in ts}
    assert not split.probe_by_condition.keys() - PROBES.keys()  # validation probes are not in the test groups
    again = partition_split(sequences, CASIA_B, GALLERY, PROBES, val_subjects=2, seed=3)
    assert again.val == split.val
    others = {tuple(partition_split(sequences, CASIA_B, GALLERY, PROBES, val_subjects=2, seed=seed).subjects["val"])
              for seed in range(8)}
    assert len(others) > 1  # the seed draws them
    fraction = partition_split(sequences, CASIA_B, GALLERY, PROBES, val_subjects=0.4)
    assert len(fraction.subjects["val"]) == 2  # 0.4 of the 5 TRAIN_SET subjects present


def test_the_result_does_not_depend_on_input_order():
    sequences = casia_like()
    shuffled = random.Random(1).sample(sequences, len(sequences))
    for protocol_args in ((GALLERY, PROBES),):
        first = split_record(partition_split(sequences, CASIA_B, *protocol_args, val_subjects=2), sequences)
        second = split_record(partition_split(shuffled, CASIA_B, *protocol_args, val_subjects=2), shuffled)
        assert first["lists"] == second["lists"] and first["probe_by_condition"] == second["probe_by_condition"]


# ------------------------------------------------------------------------------------------------ OU-MVLP


def test_ou_mvlp_gallery_01_probe_00():
    partition = {"TRAIN_SET": ["00001", "00003"], "TEST_SET": ["00002", "00004"]}
    views = ["000", "015", "030", "045", "060", "075", "090", "180", "195", "210", "225", "240", "255", "270"]
    sequences = [walk(f"{s:05d}", seq, v, condition=seq) for s in range(1, 5) for seq in ("00", "01") for v in views]
    split = partition_split(sequences, partition, ["01"], {"NM": ["00"]})
    assert_partition(split, sequences)
    for i, s in enumerate(sequences):  # restated: test subjects, sequence 01 gallery, 00 probe
        part = ("train" if s.subject in ("00001", "00003") else "gallery" if s.meta["type"] == "01" else "probe")
        assert i in getattr(split, part)
    assert split.probe_by_condition == {"NM": split.probe} and not split.dropped


# ----------------------------------------------------------------------------------------------------- Gait3D


def gait3d_like():
    """OpenGait's Gait3D layout SUBJECT/camid<C>_videoid<V>/seq<S>: type camid<C>_videoid<V>, view seq<S>."""
    return [walk(f"{s:04d}", f"camid{c}_videoid{v}", f"seq{k}", condition=f"camid{c}_videoid{v}")
            for s in range(12) for c in (s % 3, s % 3 + 1) for v in (1, 2) for k in range(2)]


GAIT3D = {"TRAIN_SET": [f"{s:04d}" for s in range(6)], "TEST_SET": [f"{s:04d}" for s in range(6, 12)],
          # one probe per test subject, entries label-type-view; the last names no sequence of the data
          "PROBE_SET": [f"{s:04d}-camid{s % 3}_videoid2-seq0" for s in range(6, 12)] + ["0011-camid9_videoid1-seq0"]}


def test_gait3d_probe_list_equals_opengait_matching():
    sequences = gait3d_like()
    split = partition_split(sequences, GAIT3D, probe_list_key="PROBE_SET")
    assert_partition(split, sequences)
    probes = set(GAIT3D["PROBE_SET"])
    expected = {"train": [], "gallery": [], "probe": []}
    for i, s in enumerate(sequences):  # evaluate_Gait3D: '-'.join([label, type, view]) in PROBE_SET
        if s.subject in GAIT3D["TRAIN_SET"]:
            expected["train"].append(i)
        elif "-".join([s.subject, s.meta["type"], s.view]) in probes:
            expected["probe"].append(i)
        else:
            expected["gallery"].append(i)
    for name in expected:
        assert getattr(split, name) == expected[name], name
    assert len(split.probe) == 6 and split.subjects["probe"] == GAIT3D["TEST_SET"]
    assert split.probe_by_condition == {} and not split.dropped
    assert "1 of the 7 probe-list entries name no sequence of the data: 0011-camid9_videoid1-seq0" in split.notes
    assert split.params["probe_list_key"] == "PROBE_SET"


def test_gait3d_loader_ids_match_the_probe_list_too():
    """The gait3d loader's labels (view camid<C>, no type) give the same key through the sequence id."""
    sequences = [SimpleNamespace(subject=s.subject, view=s.meta["type"].split("_")[0], condition="",
                                 sequence_id=s.sequence_id, recording=s.recording, meta={})
                 for s in gait3d_like()]
    by_type = partition_split(gait3d_like(), GAIT3D, probe_list_key="PROBE_SET")
    by_id = partition_split(sequences, GAIT3D, probe_list_key="PROBE_SET")
    assert (by_id.train, by_id.gallery, by_id.probe) == (by_type.train, by_type.gallery, by_type.probe)
    assert probe_list_key_of(sequences[0]) == "0000-camid0_videoid1-seq0"


def test_an_explicit_probe_list_and_whole_sequence_ids():
    sequences = gait3d_like()
    ids = ["0006/camid0_videoid2/seq0", "0007-camid1_videoid2-seq1"]  # a whole sequence_id, and a key
    split = partition_split(sequences, GAIT3D, probe_sequences=ids)
    assert [sequences[i].sequence_id for i in split.probe] == ["0006/camid0_videoid2/seq0",
                                                               "0007/camid1_videoid2/seq1"]
    assert "not read from the partition mapping: PROBE_SET" in split.notes


def test_probe_list_validation_subjects_get_one_probe_each():
    sequences = gait3d_like()
    split = partition_split(sequences, GAIT3D, probe_list_key="PROBE_SET", val_subjects=2, seed=5)
    assert_partition(split, sequences)
    assert len(split.subjects["val"]) == 2 and set(split.subjects["val"]) <= set(GAIT3D["TRAIN_SET"])
    assert len(split.val_probe) == 2 and split.subjects["val_probe"] == split.subjects["val"]
    assert len(split.val_gallery) == 2 * 8 - 2
    again = partition_split(sequences, GAIT3D, probe_list_key="PROBE_SET", val_subjects=2, seed=5)
    assert again.val_probe == split.val_probe


# ----------------------------------------------------------------------------------------- types and loader


def test_sequence_type_rule():
    assert sequence_type(walk("001", "nm-01", "000")) == "nm-01"  # opengait loader: meta["type"]
    casiab = SimpleNamespace(subject="001", view="000", condition="bg", sequence_id="001-bg-02-000",
                             meta={"run": "02"})  # casiab loader: the CASIA-B name
    assert sequence_type(casiab) == "bg-02" and probe_list_key_of(casiab) == "001-bg-02-000"
    pyskl = SimpleNamespace(subject="001", view="090", condition="nm", sequence_id="001-nm-05-090",
                            meta={"label": 0, "split": ["test"], "num_persons": 1})
    assert sequence_type(pyskl) == "nm-05"
    oumvlp = SimpleNamespace(subject="00001", view="000", condition="nm", sequence_id="00001/000_01",
                             meta={"sequence": "01", "files": 3})
    assert sequence_type(oumvlp) == "01"
    assert sequence_type(SimpleNamespace(subject="a", view="", condition="cl", sequence_id="x")) == "cl"
    assert sequence_type(SimpleNamespace(subject="a", view="", condition="", sequence_id="x", meta={})) == ""


def test_casiab_loader_labels_divide_by_type():
    """GaitGraph's CASIA-B CSV (ids SUBJECT-TYPE-NN-VIEW) reaches the same split as the OpenGait layout."""
    opengait = casia_like()
    csv = [SimpleNamespace(subject=s.subject, view=s.view, condition=s.condition,
                           sequence_id="-".join([s.subject, s.meta["type"], s.view]), recording="",
                           meta={"run": s.meta["type"].split("-")[1]}) for s in opengait]
    one, two = (partition_split(x, CASIA_B, GALLERY, PROBES) for x in (opengait, csv))
    assert (one.train, one.gallery, one.probe, one.probe_by_condition) == \
           (two.train, two.gallery, two.probe, two.probe_by_condition)


def test_opengait_loader_records_the_type_and_the_split_reads_a_json_file(tmp_path, monkeypatch):
    root = tmp_path / "casiab-pose"
    rng = np.random.default_rng(0)
    for subject in ("073", "074", "075", "076"):
        for type_ in ("nm-01", "nm-05", "bg-01", "cl-02"):
            for view in ("000", "090"):
                path = root / subject / type_ / view / f"{view}.pkl"
                path.parent.mkdir(parents=True)
                path.write_bytes(pickle.dumps(rng.random((6, 17, 3)).astype(np.float32), protocol=4))
    (tmp_path / "CASIA-B.json").write_text(json.dumps(CASIA_B))
    sequences, _ = load_dataset(f"opengait:{root}")
    assert {s.meta["type"] for s in sequences} == {"nm-01", "nm-05", "bg-01", "cl-02"}
    monkeypatch.chdir(tmp_path)  # a relative partition path is read from the working directory
    split = partition_split(sequences, "CASIA-B.json", GALLERY, PROBES)
    assert_partition(split, sequences)
    assert split.subjects["train"] == ["073", "074"] and split.subjects["gallery"] == ["075", "076"]
    assert {sequences[i].meta["type"] for i in split.gallery} == {"nm-01"}
    assert {name: {sequences[i].meta["type"] for i in ix} for name, ix in split.probe_by_condition.items()} == \
           {"NM": {"nm-05"}, "BG": {"bg-01"}, "CL": {"cl-02"}}
    assert split.params["partition"] == "CASIA-B.json"
    assert read_partition("CASIA-B.json") == CASIA_B


# ----------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("partition, message", [
    (["001"], r"partition must be a JSON file path or a mapping, got list"),
    ({"TRAIN_SET": ["001"]}, r"has no 'TEST_SET' list of subject ids .*its keys: TRAIN_SET"),
    ({"TRAIN_SET": "001", "TEST_SET": ["075"]}, r"'TRAIN_SET' must be a list of subject ids, got str"),
    ({"TRAIN_SET": ["070", 71], "TEST_SET": ["075"]}, r"TRAIN_SET\[1\] is 71, not a non-empty string"),
    ({"TRAIN_SET": ["070", "075", "076"], "TEST_SET": ["075", "076"]},
     r"2 subjects in both TRAIN_SET and TEST_SET: 075, 076"),
    ({"TRAIN_SET": ["001", "002"], "TEST_SET": ["075"]},
     r"no training sequence: none of the 2 TRAIN_SET subjects of the partition mapping is in the data"),
    ({"TRAIN_SET": ["070"], "TEST_SET": ["200"]}, r"no gallery: .*none, no TEST_SET subject is in the data"),
])
def test_partition_errors_name_the_problem(partition, message):
    with pytest.raises(ValueError, match=rf"^partition_split: .*{message}"):
        partition_split(casia_like(), partition, GALLERY, PROBES)


def test_file_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"partition file missing.json not found \(a relative path is read from "
                                         r"the working directory"):
        partition_split(casia_like(), "missing.json", GALLERY, PROBES)
    (tmp_path / "bad.json").write_text('{"TRAIN_SET": [')
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON: .* \(line 1, column"):
        partition_split(casia_like(), "bad.json", GALLERY, PROBES)
    with pytest.raises(ValueError, match="no partition file given"):
        partition_split(casia_like(), "", GALLERY, PROBES)
    (tmp_path / "list.json").write_text('["001", "075"]')
    with pytest.raises(ValueError, match=r"list.json is a JSON list, not an OpenGait partition \(an object "):
        partition_split(casia_like(), "list.json", GALLERY, PROBES)
    (tmp_path / "casia.json").write_text(json.dumps(CASIA_B))
    with pytest.raises(ValueError, match=r"casia.json has no 'PROBE_SET' list of sequence names"):
        partition_split(casia_like(), "casia.json", probe_list_key="PROBE_SET")


def test_gallery_probe_rule_errors():
    sequences = casia_like()
    with pytest.raises(ValueError, match="give gallery_types and probe_types"):
        partition_split(sequences, CASIA_B)
    with pytest.raises(ValueError, match="give gallery_types and probe_types"):
        partition_split(sequences, CASIA_B, GALLERY)
    with pytest.raises(ValueError, match="not both"):
        partition_split(sequences, GAIT3D, GALLERY, PROBES, probe_list_key="PROBE_SET")
    with pytest.raises(ValueError, match="not both"):
        partition_split(sequences, GAIT3D, probe_list_key="PROBE_SET", probe_sequences=["x"])
    with pytest.raises(ValueError, match="type 'nm-04' is in gallery_types and in probe set 'NM'"):
        partition_split(sequences, CASIA_B, GALLERY, {"NM": ["nm-04", "nm-05"]})
    with pytest.raises(ValueError, match="type 'bg-01' is in probe set 'BG' and in probe set 'CL'"):
        partition_split(sequences, CASIA_B, GALLERY, {"BG": ["bg-01"], "CL": ["bg-01"]})
    with pytest.raises(ValueError, match="probe set 'CL' has no type"):
        partition_split(sequences, CASIA_B, GALLERY, {"CL": []})
    with pytest.raises(ValueError, match=r"no probe: no sequence of a TEST_SET subject has a probe type \['bg-09'\] "
                                         r"\(types of the test subjects' sequences: bg-01, bg-02"):
        partition_split(sequences, CASIA_B, GALLERY, {"BG": ["bg-09"]})
    with pytest.raises(ValueError, match=r"no gallery: .* gallery type \['NM-01'\]"):
        partition_split(sequences, CASIA_B, ["NM-01"], PROBES)
    with pytest.raises(ValueError, match="no training subject left"):
        partition_split(sequences, CASIA_B, GALLERY, PROBES, val_subjects=5)
    with pytest.raises(ValueError, match="names a subject list"):
        partition_split(sequences, CASIA_B, probe_list_key="TEST_SET")


def test_probe_list_errors():
    sequences = gait3d_like()
    with pytest.raises(ValueError, match=r"names sequences of 1 subject outside TEST_SET: 0001"):
        partition_split(sequences, {**GAIT3D, "PROBE_SET": ["0001-camid1_videoid1-seq0"]}, probe_list_key="PROBE_SET")
    with pytest.raises(ValueError, match=r"no probe: none of the 1 probe-list entries \(0006/camid0/seq0\) names a "
                                         r"sequence of a TEST_SET subject \(whose keys, .* look like "
                                         r"0006-camid0_videoid1-seq0, 0006-camid0_videoid1-seq1 and 46 more\)"):
        partition_split(sequences, {**GAIT3D, "PROBE_SET": ["0006/camid0/seq0"]}, probe_list_key="PROBE_SET")
    every = [probe_list_key_of(s) for s in sequences if s.subject in GAIT3D["TEST_SET"]]
    with pytest.raises(ValueError, match="no gallery: every test sequence is on the probe list"):
        partition_split(sequences, GAIT3D, probe_sequences=every)
    with pytest.raises(ValueError, match="one string"):
        partition_split(sequences, GAIT3D, probe_sequences="0006-camid0_videoid2-seq0")


# ----------------------------------------------------------------------------------------------- split records


def test_split_records_round_trip_and_compare():
    sequences = casia_like()
    split = partition_split(sequences, CASIA_B, GALLERY, PROBES, val_subjects=1)
    record = json.loads(json.dumps(split_record(split, sequences)))  # as saved and read back
    assert record["protocol"] == "partition"
    assert record["params"]["probe_types"] == PROBES and record["params"]["gallery_types"] == GALLERY
    assert record["probe_by_condition"]["BG"] == sorted(sequences[i].sequence_id for i in split.probe_by_condition["BG"])
    shuffled = random.Random(0).sample(sequences, len(sequences))  # another loader order
    rebuilt = split_from_record(record, shuffled)
    assert split_record(rebuilt, shuffled)["lists"] == record["lists"]
    assert rebuilt.probe_by_condition.keys() == split.probe_by_condition.keys()
    assert compare_split_records(record, split_record(partition_split(sequences, CASIA_B, GALLERY, PROBES,
                                                                      val_subjects=1), sequences)) == []
    # the file changes: one subject moves from TEST_SET to TRAIN_SET
    moved = {"TRAIN_SET": CASIA_B["TRAIN_SET"] + ["075"], "TEST_SET": CASIA_B["TEST_SET"][1:]}
    lines = compare_split_records(record, split_record(partition_split(sequences, moved, GALLERY, PROBES,
                                                                       val_subjects=1), sequences))
    assert lines[0].startswith("params changed: partition_sha256 ")
    assert "subject 075 moved from gallery+probe to train" in lines


def test_split_record_round_trip_for_the_probe_list():
    sequences = gait3d_like()
    split = partition_split(sequences, GAIT3D, probe_list_key="PROBE_SET", val_subjects=1)
    record = json.loads(json.dumps(split_record(split, sequences)))
    shuffled = random.Random(2).sample(sequences, len(sequences))
    rebuilt = split_from_record(record, shuffled)
    assert split_record(rebuilt, shuffled)["lists"] == record["lists"]
    assert rebuilt.notes == split.notes and rebuilt.protocol == "partition"
    fewer = {**GAIT3D, "PROBE_SET": GAIT3D["PROBE_SET"][1:]}
    lines = compare_split_records(record, split_record(partition_split(sequences, fewer, probe_list_key="PROBE_SET",
                                                                       val_subjects=1), sequences))
    assert lines[0].startswith("params changed: partition_sha256")
    assert "1 sequence changed lists: 0006/camid0_videoid2/seq0 (probe -> gallery)" in lines


# ------------------------------------------------------------------------------------------------------- config

CASIA_B_PRESET = """
data:
  source: opengait:/data/CASIA-B-pose
  skeleton: coco17
  protocol: partition
  val_subjects: 0
  partition:
    file: datasets/CASIA-B/CASIA-B.json
    gallery_types: [nm-01, nm-02, nm-03, nm-04]
    probe_types:
      NM: [nm-05, nm-06]
      BG: [bg-01, bg-02]
      CL: [cl-01, cl-02]
evaluation:
  protocols: [cross-view]
"""
OUMVLP_PRESET = """
data:
  source: opengait:/data/OUMVLP-pose
  skeleton: openpose18
  protocol: partition
  val_subjects: 0
  partition:
    file: datasets/OUMVLP/OUMVLP.json
    gallery_types: ["01"]
    probe_types:
      NM: ["00"]
model:
  skeleton: openpose18
evaluation:
  protocols: [cross-view]
"""
GAIT3D_PRESET = """
data:
  source: gait3d:/data/Gait3D/2D_Poses
  protocol: partition
  val_subjects: 0
  partition:
    file: datasets/Gait3D/Gait3D.json
    probe_list_key: PROBE_SET
evaluation:
  protocols: [gait3d]
"""


def split_from_config(sequences, data):
    """What make_split's partition branch does with the config's fields."""
    part = data.partition
    return partition_split(sequences, part.file, gallery_types=tuple(part.gallery_types),
                           probe_types={name: tuple(types) for name, types in part.probe_types.items()},
                           probe_list_key=part.probe_list_key, val_subjects=int(data.val_subjects)
                           if data.val_subjects >= 1 else float(data.val_subjects), seed=data.seed)


@pytest.mark.parametrize("preset", [CASIA_B_PRESET, OUMVLP_PRESET, GAIT3D_PRESET])
def test_the_presets_load_and_round_trip(tmp_path, preset):
    path = tmp_path / "preset.yaml"
    path.write_text(preset)
    config = load_config(path)
    assert config.data.protocol == "partition" and protocol_keys(config.data) == ("data.val_subjects",
                                                                                   "data.partition")
    resolved = tmp_path / "config.yaml"
    resolved.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))  # what a run saves
    assert load_resolved_config(resolved) == config


def test_config_reaches_the_split(tmp_path, monkeypatch):
    (tmp_path / "datasets/CASIA-B").mkdir(parents=True)
    (tmp_path / "datasets/CASIA-B/CASIA-B.json").write_text(json.dumps(CASIA_B))
    (tmp_path / "datasets/Gait3D").mkdir(parents=True)
    (tmp_path / "datasets/Gait3D/Gait3D.json").write_text(json.dumps(GAIT3D))
    monkeypatch.chdir(tmp_path)
    casia = load_config(overrides=yaml.safe_load(CASIA_B_PRESET))
    assert casia.data.partition.probe_types == PROBES and casia.data.partition.probe_list_key is None
    sequences = casia_like()
    assert split_record(split_from_config(sequences, casia.data), sequences)["lists"] == \
           split_record(partition_split(sequences, CASIA_B, GALLERY, PROBES), sequences)["lists"]
    gait3d = load_config(overrides=yaml.safe_load(GAIT3D_PRESET))
    sequences = gait3d_like()
    assert split_from_config(sequences, gait3d.data).probe == \
           partition_split(sequences, GAIT3D, probe_list_key="PROBE_SET").probe
    with_val = load_config(overrides={"data": {"protocol": "partition", "val_subjects": 2,
                                               "partition": {"file": "datasets/Gait3D/Gait3D.json",
                                                             "probe_list_key": "PROBE_SET"}},
                                      "finetune": {"patience": 3}})
    assert len(split_from_config(sequences, with_val.data).subjects["val"]) == 2
    with pytest.raises(ValueError, match=r"^config data\.partition\.file: required by protocol 'partition'"):
        load_config(overrides={"data": {"protocol": "partition"}})  # refused when the config loads, not at the split


def test_make_split_uses_the_partition(tmp_path, monkeypatch):
    from bpmt_fast.train.data import make_split

    (tmp_path / "CASIA-B.json").write_text(json.dumps(CASIA_B))
    monkeypatch.chdir(tmp_path)
    values = yaml.safe_load(CASIA_B_PRESET)
    values["data"]["partition"]["file"] = "CASIA-B.json"
    values["data"]["val_subjects"] = 1
    data = load_config(overrides=values).data
    sequences = casia_like()
    split = make_split(sequences, data)
    assert split_record(split, sequences) == split_record(split_from_config(sequences, data), sequences)


@pytest.mark.parametrize("overrides, key, reason", [
    ({"data": {"protocol": "partition", "partition": {"file": "x.json"}, "test_subjects": 3}}, "data.test_subjects",
     "the test subjects are data.partition.file's TEST_SET"),
    ({"data": {"partition": {"file": "x.json"}}}, "data.partition.file", "is not used by protocol 'subject-disjoint'"),
    ({"data": {"protocol": "cross-condition", "partition": {"probe_types": {"NM": ["nm-05"]}}}},
     "data.partition.probe_types.NM", "is not used by protocol 'cross-condition'"),
    ({"data": {"protocol": "partition", "partition": {"file": "x.json"}, "closed_set": {"val_fraction": 0.2}}},
     "data.closed_set.val_fraction", "is not used by protocol 'partition' (it uses data.val_subjects, data.partition.*)"),
    ({"data": {"protocol": "partition", "partition": {"file": "x.json", "probe_list_key": "PROBE_SET",
                                                      "gallery_types": ["nm-01"]}}},
     "data.partition.gallery_types", "not read with data.partition.probe_list_key set"),
    ({"data": {"protocol": "partition", "partition": {"file": "x.json", "probe_list_key": "PROBE_SET",
                                                      "probe_types": {"NM": ["nm-05"]}}}},
     "data.partition.probe_types.NM", "the probes are the file's 'PROBE_SET' list"),
])
def test_unused_partition_settings_are_refused(overrides, key, reason):
    with pytest.raises(ValueError) as error:
        load_config(overrides=overrides)
    assert str(error.value).startswith(f"config {key} ") and reason in str(error.value)


@pytest.mark.parametrize("partition, key, text", [
    ({"gallery_types": ["nm-01", "nm-01"]}, "gallery_types", "lists nm-01 more than once"),
    ({"probe_types": {"NM": ["nm-05", "nm-05"]}}, "probe_types.NM", "lists nm-05 more than once"),
    ({"probe_types": {"NM": []}}, "probe_types.NM", "must not be empty"),
    ({"probe_types": {"NM": "nm-05"}}, "probe_types.NM", "expected a list of types (strings)"),
    ({"probe_types": {"NM": [5]}}, "probe_types.NM", "expected a list of types (strings)"),
    ({"gallery_types": ["nm-01"], "probe_types": {"NM": ["nm-01"]}}, "probe_types.NM", "nm-01 also in gallery_types"),
    ({"probe_types": {"BG": ["bg-01"], "CL": ["bg-01"]}}, "probe_types.CL", "bg-01 also in probe_types.BG"),
    ({"probe_types": ["nm-05"]}, "probe_types", "expected a mapping"),
    ({"gallery_types": "nm-01"}, "gallery_types", "expected a list"),
    ({"probe_list_key": " "}, "probe_list_key", "must not be empty"),
    ({"probe_list_key": 3}, "probe_list_key", "expected a string"),
    ({"file": None}, "file", "expected a string"),
])
def test_partition_section_rules_name_the_key(partition, key, text):
    with pytest.raises(ValueError) as error:
        load_config(overrides={"data": {"protocol": "partition", "partition": partition}})
    assert str(error.value).startswith(f"config data.partition.{key}: ") and text in str(error.value)
