"""Dataset splits: partitions, subject disjointness, recordings, determinism, camera and condition rules, split
records, errors."""
import itertools
import json
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpmt_fast.data.sequence import PoseSequence
from bpmt_fast.data.splits import (
    PARTS,
    Split,
    camera_split,
    closed_set_split,
    cross_condition_split,
    RECORD_LISTS,
    compare_split_records,
    gallery_probe,
    split_from_record,
    split_record,
    subject_disjoint_split,
)

POSES = np.zeros((2, 17, 3), dtype=np.float32)


def seq(subject, view="", condition="", sequence_id="", recording=""):
    return PoseSequence(POSES, subject=subject, view=view, condition=condition,
                        sequence_id=sequence_id or f"{subject}/{condition}/{view}", recording=recording)


def grid(subjects, views, conditions, repeats=1):
    return [seq(f"{s:03d}", v, c, f"{s:03d}/{c}-{r}/{v}")
            for s, c, r, v in itertools.product(range(subjects), conditions, range(repeats), views)]


CASIA = grid(10, ["000", "090", "180"], ["nm", "bg", "cl"], repeats=2)  # 180 sequences
PSYMO = grid(12, ["0", "1"], ["nm", "bg", "cl", "ph", "txt", "wsf", "wss"])


def assert_partition(split: Split, sequences):
    """Every index in exactly one of the parts or dropped; sub-lists consistent with their parents."""
    everything = [i for name in PARTS for i in getattr(split, name)] + split.dropped
    assert sorted(everything) == list(range(len(sequences)))
    assert split.val_gallery + split.val_probe == [] or sorted(split.val_gallery + split.val_probe) == split.val
    assert sorted(i for ix in split.probe_by_condition.values() for i in ix) in ([], split.probe)
    for name in PARTS + ("dropped",):
        assert getattr(split, name) == sorted(getattr(split, name))


def subjects_of(indices, sequences):
    return {sequences[i].subject for i in indices}


# ----------------------------------------------------------------------------------------------- closed set


def test_closed_set_every_subject_trains_and_counts_follow_the_rule():
    sequences = grid(4, ["a", "b"], ["nm"], repeats=5)  # 10 sequences per subject
    split = closed_set_split(sequences, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert_partition(split, sequences)
    assert subjects_of(split.train, sequences) == {f"{s:03d}" for s in range(4)}
    for subject in range(4):
        mine = lambda ix: sum(sequences[i].subject == f"{subject:03d}" for i in ix)  # noqa: E731
        assert (mine(split.train), mine(split.val), mine(split.test)) == (7, 1, 2)
    assert split.dropped == []


def test_closed_set_small_subjects():
    # n=1: train only. n=2, fractions .4/.4: test round(.8)=1, val 1 -> too many: val gives up -> 1/0/1.
    # n=3, fractions .4/.4: test 1, val 1, train 1.
    sequences = [seq("one")] + [seq("two", sequence_id=f"t{i}") for i in range(2)] + \
                [seq("three", sequence_id=f"h{i}") for i in range(3)]
    split = closed_set_split(sequences, val_fraction=0.4, test_fraction=0.4, seed=0)
    assert_partition(split, sequences)
    count = lambda ix, s: sum(sequences[i].subject == s for i in ix)  # noqa: E731
    assert [(count(split.train, s), count(split.val, s), count(split.test, s)) for s in ("one", "two", "three")] \
        == [(1, 0, 0), (1, 0, 1), (1, 1, 1)]
    assert "too few" in split.describe()


def test_closed_set_deterministic_by_seed():
    a, b = closed_set_split(CASIA, 0.1, 0.2, seed=7), closed_set_split(CASIA, 0.1, 0.2, seed=7)
    assert a == b
    assert closed_set_split(CASIA, 0.1, 0.2, seed=8).test != a.test


def test_closed_set_errors():
    with pytest.raises(ValueError, match="test_fraction"):
        closed_set_split(CASIA, 0.1, 1.0, seed=0)
    with pytest.raises(ValueError, match="leaves no training"):
        closed_set_split(CASIA, 0.5, 0.5, seed=0)
    with pytest.raises(ValueError, match="no sequences"):
        closed_set_split([], 0.1, 0.2, seed=0)
    with pytest.raises(ValueError, match="enough recordings .*it takes 3"):
        closed_set_split([seq("a"), seq("b")], 0.1, 0.2, seed=0)


def places(split: Split, sequences) -> dict[tuple[str, str], set[str]]:
    """(subject, recording_id) -> the distinct places of its clips, a place being the lists holding a clip."""
    out = {}
    for i, sequence in enumerate(sequences):
        place = "+".join(name for name in RECORD_LISTS if i in getattr(split, name))
        out.setdefault((sequence.subject, sequence.recording_id), set()).add(place)
    return out


def expected_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """The docstring's rule written out: (test, val) recordings of a subject with n recordings."""
    num_test, num_val = int(n * test_fraction + 0.5 + 1e-9), int(n * val_fraction + 0.5 + 1e-9)
    while num_test + num_val > n - 1:
        if num_val:
            num_val -= 1
        else:
            num_test -= 1
    return num_test, num_val


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.one_of(st.none(), st.integers(0, 5))), min_size=1, max_size=50),
       st.sampled_from([(0.1, 0.2), (0.2, 0.3), (0.0, 0.5), (0.3, 0.3)]), st.integers(0, 2**31))
def test_closed_set_never_splits_a_recording(clips, fractions, seed):
    # Each clip: (subject, video number or None = a clip without a recording, i.e. its own).
    sequences = [seq(f"s{s}", sequence_id=f"clip{k}", recording="" if r is None else f"s{s}/video{r}")
                 for k, (s, r) in enumerate(clips)]
    val_fraction, test_fraction = fractions
    recordings = Counter(subject for subject, _ in places(Split("none"), sequences))
    expected = {subject: expected_counts(n, val_fraction, test_fraction) for subject, n in recordings.items()}
    if not any(num_test for num_test, _ in expected.values()):
        with pytest.raises(ValueError, match="enough recordings"):
            closed_set_split(sequences, val_fraction, test_fraction, seed=seed)
        return
    split = closed_set_split(sequences, val_fraction, test_fraction, seed=seed)
    assert_partition(split, sequences)
    assert all(len(where) == 1 for where in places(split, sequences).values())
    for subject, (num_test, num_val) in expected.items():
        mine = lambda ix: len({sequences[i].recording_id for i in ix if sequences[i].subject == subject})  # noqa: E731
        assert (mine(split.test), mine(split.val), mine(split.train)) == \
            (num_test, num_val, recordings[subject] - num_test - num_val)


def test_closed_set_divides_recordings_not_clips():
    # Subject 0001: 10 videos of 3 clips -> 2 test, 1 val, 7 train videos. Subject 0002: one video of 5 clips.
    sequences = [seq("0001", "camid0", "", f"0001/camid0_videoid{v}/seq{c}", f"0001/camid0_videoid{v}")
                 for v in range(10) for c in range(3)]
    sequences += [seq("0002", "camid0", "", f"0002/camid0_videoid0/seq{c}", "0002/camid0_videoid0") for c in range(5)]
    split = closed_set_split(sequences, 0.1, 0.2, seed=0)
    assert_partition(split, sequences)
    assert (len(split.test), len(split.val), len(split.train)) == (6, 3, 21 + 5)
    assert subjects_of(split.test + split.val, sequences) == {"0001"}
    assert "35 sequences in 11 recordings" in split.describe()
    assert "1 subjects have too few recordings" in split.describe()


def test_closed_set_without_recordings_splits_by_clip():
    # No recording and not even a sequence_id: each clip is its own recording, the rule applies to clips as before.
    sequences = grid(4, ["a", "b"], ["nm"], repeats=5)
    for sequence in sequences:
        sequence.sequence_id = ""
    split = closed_set_split(sequences, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert_partition(split, sequences)
    for subject in range(4):
        mine = lambda ix: sum(sequences[i].subject == f"{subject:03d}" for i in ix)  # noqa: E731
        assert (mine(split.train), mine(split.val), mine(split.test)) == (7, 1, 2)
    assert split.notes == []


def test_closed_set_does_not_depend_on_input_order():
    sequences = gait3d_like()
    shuffled = random.Random(0).sample(sequences, len(sequences))
    by_id = lambda split, seqs: {name: sorted(seqs[i].sequence_id for i in ix)  # noqa: E731
                                 for name, ix in split.parts().items()}
    assert by_id(closed_set_split(sequences, 0.2, 0.3, seed=1), sequences) == \
        by_id(closed_set_split(shuffled, 0.2, 0.3, seed=1), shuffled)


# ------------------------------------------------------------------------------------------ subject-disjoint


def test_subject_disjoint_gallery_is_nm_and_subjects_disjoint():
    split = subject_disjoint_split(CASIA, test_subjects=3, val_subjects=0.2, seed=1)
    assert_partition(split, CASIA)
    train, val = subjects_of(split.train, CASIA), subjects_of(split.val, CASIA)
    test = subjects_of(split.gallery + split.probe, CASIA)
    assert (len(train), len(val), len(test)) == (5, 2, 3)
    assert not (train & val or train & test or val & test)
    assert {CASIA[i].condition for i in split.gallery + split.val_gallery} == {"nm"}
    assert {CASIA[i].condition for i in split.probe + split.val_probe} == {"bg", "cl"}
    assert subjects_of(split.val_gallery, CASIA) == subjects_of(split.val_probe, CASIA) == val
    assert split.test == [] and split.dropped == []
    assert split.subjects["gallery"] == sorted(test)


def test_subject_disjoint_without_conditions_uses_one_sequence_per_view():
    sequences = grid(6, ["c1", "c2", "c3"], [""], repeats=3)
    split = subject_disjoint_split(sequences, test_subjects=2, seed=0)
    assert_partition(split, sequences)
    for subject in subjects_of(split.gallery, sequences):
        views = [sequences[i].view for i in split.gallery if sequences[i].subject == subject]
        assert sorted(views) == ["c1", "c2", "c3"]  # exactly one per view ...
        chosen = [sequences[i].sequence_id for i in split.gallery if sequences[i].subject == subject]
        assert all(sid.split("/")[1] == "-0" for sid in chosen)  # ... the smallest sequence_id
    assert len(split.probe) == 2 * 3 * 2


def test_subject_disjoint_rules_and_determinism():
    assert subject_disjoint_split(CASIA, 0.3, seed=5) == subject_disjoint_split(CASIA, 0.3, seed=5)
    assert subject_disjoint_split(CASIA, 0.3, seed=5).gallery != subject_disjoint_split(CASIA, 0.3, seed=6).gallery
    no_nm = [s for s in CASIA if not (s.subject == "000" and s.condition == "nm")]
    with pytest.raises(ValueError, match="'000' has no 'nm'"):
        subject_disjoint_split(no_nm, test_subjects=9, seed=0, gallery_rule="condition")
    auto = subject_disjoint_split(no_nm, test_subjects=9, seed=0)  # falls back to one per view for 000
    assert any("'000'" in note for note in auto.notes)
    per_view = subject_disjoint_split(CASIA, test_subjects=2, seed=0, gallery_rule="one_per_view")
    assert len(per_view.gallery) == 2 * 3
    custom = subject_disjoint_split(CASIA, test_subjects=2, seed=0,
                                    gallery_rule=lambda seqs: [s.condition == "cl" for s in seqs])
    assert {CASIA[i].condition for i in custom.gallery} == {"cl"}


def test_subject_disjoint_gallery_and_probe_may_share_a_recording():
    # Documented behaviour: the gallery rule works per clip (as Gait3D's official protocol does), so a test
    # subject's gallery clip and its sibling clips (probes) share a recording; train and test never do.
    sequences = gait3d_like()
    split = subject_disjoint_split(sequences, test_subjects=3, seed=0, gallery_rule="one_per_view")
    where = places(split, sequences)
    assert {"gallery", "probe"} in where.values()
    assert all(len(parts) == 1 for (subject, _), parts in where.items() if "train" in parts)


def test_subject_disjoint_errors():
    with pytest.raises(ValueError, match="test_subjects=11 but there are 10"):
        subject_disjoint_split(CASIA, test_subjects=11)
    with pytest.raises(ValueError, match="leaves no training subject"):
        subject_disjoint_split(CASIA, test_subjects=6, val_subjects=4)
    with pytest.raises(ValueError, match="selects no test subject"):
        subject_disjoint_split(CASIA, test_subjects=0)
    with pytest.raises(ValueError, match="must be an int"):
        subject_disjoint_split(CASIA, test_subjects=True)
    with pytest.raises(ValueError, match="not a fraction"):
        subject_disjoint_split(CASIA, test_subjects=1.5)
    with pytest.raises(ValueError, match="unknown gallery_rule"):
        subject_disjoint_split(CASIA, test_subjects=2, gallery_rule="first")
    with pytest.raises(ValueError, match="flags"):
        subject_disjoint_split(CASIA, test_subjects=2, gallery_rule=lambda seqs: [True])


# ---------------------------------------------------------------------------------------------------- cameras


def gait3d_like():
    """Subjects 0-5 seen by 4 cameras, 6-7 by 3, 8-9 by 2 (dropped at min_cameras=3); per camera one recording
    (video) of 2 clips."""
    cams = {s: 4 if s < 6 else 3 if s < 8 else 2 for s in range(10)}
    return [seq(f"{s:04d}", f"camid{c}", "", f"{s:04d}/camid{c}_videoid2/seq{r}", f"{s:04d}/camid{c}_videoid2")
            for s in range(10) for c in range(cams[s]) for r in range(2)]


def test_camera_split_closed_set_holds_out_cameras():
    sequences = gait3d_like()
    split = camera_split(sequences, min_cameras=3, seed=0)
    assert_partition(split, sequences)
    assert subjects_of(split.dropped, sequences) == {"0008", "0009"}
    assert subjects_of(split.train, sequences) == subjects_of(split.test, sequences) == {f"{s:04d}" for s in range(8)}
    for subject in subjects_of(split.train, sequences):
        train_cams = {sequences[i].view for i in split.train if sequences[i].subject == subject}
        test_cams = {sequences[i].view for i in split.test if sequences[i].subject == subject}
        assert len(test_cams) == 1 and not train_cams & test_cams  # one held-out camera, unseen in training
        assert len(train_cams | test_cams) >= 3
    assert "dropped 2 subjects" in split.describe()
    with_val = camera_split(sequences, min_cameras=3, probe_cameras=1, val_cameras=1, seed=0)
    assert_partition(with_val, sequences)
    assert subjects_of(with_val.val, sequences) == subjects_of(with_val.train, sequences)


def test_camera_split_open_set_gallery_and_probe_cameras():
    sequences = gait3d_like()
    split = camera_split(sequences, min_cameras=3, probe_cameras=2, test_subjects=3, val_subjects=1, seed=4)
    assert_partition(split, sequences)
    train, test = subjects_of(split.train, sequences), subjects_of(split.gallery, sequences)
    assert len(test) == 3 and len(subjects_of(split.val, sequences)) == 1 and len(train) == 4
    assert not train & test and subjects_of(split.probe, sequences) == test
    for subject in test:
        gallery_cams = {sequences[i].view for i in split.gallery if sequences[i].subject == subject}
        probe_cams = {sequences[i].view for i in split.probe if sequences[i].subject == subject}
        assert len(probe_cams) == 2 and gallery_cams and not gallery_cams & probe_cams
    assert camera_split(sequences, test_subjects=3, seed=4) == camera_split(sequences, test_subjects=3, seed=4)


def test_camera_split_keeps_each_recording_on_one_side():
    sequences = gait3d_like()  # one recording (video) of 2 clips per subject and camera
    for seed in range(4):
        for kwargs in ({}, {"val_cameras": 1}, {"test_subjects": 3, "val_subjects": 2, "probe_cameras": 2}):
            split = camera_split(sequences, min_cameras=3, seed=seed, **kwargs)
            assert all(len(parts) == 1 for parts in places(split, sequences).values()), (seed, kwargs)


def test_camera_split_errors():
    sequences = gait3d_like()
    with pytest.raises(ValueError, match="no subject is seen by >= 5 cameras"):
        camera_split(sequences, min_cameras=5)
    with pytest.raises(ValueError, match="probe_cameras"):
        camera_split(sequences, min_cameras=3, probe_cameras=3)
    with pytest.raises(ValueError, match="no camera id"):
        camera_split(sequences + [seq("x")])
    with pytest.raises(ValueError, match="val_cameras"):
        camera_split(sequences, val_cameras=1, test_subjects=2)


# ---------------------------------------------------------------------------------------------- conditions


def test_cross_condition_psymo_protocol():
    sequences = PSYMO + [seq("000", "0", "odd")]  # a condition in neither list: dropped on test subjects
    split = cross_condition_split(sequences, test_subjects=0.5, seed=2)
    assert_partition(split, sequences)
    train, test = subjects_of(split.train, sequences), subjects_of(split.gallery, sequences)
    assert len(test) == 6 and not train & test
    assert {sequences[i].condition for i in split.gallery} == {"nm"}
    assert list(split.probe_by_condition) == ["bg", "cl", "ph", "txt", "wsf", "wss"]
    for condition, indices in split.probe_by_condition.items():
        assert {sequences[i].condition for i in indices} == {condition}
        assert subjects_of(indices, sequences) == test and len(indices) == 6 * 2
    assert split.dropped == ([len(PSYMO)] if "000" in test else [])
    assert cross_condition_split(sequences, seed=2) == split


def test_cross_condition_candidates_and_errors():
    # Subject 'nm_only' cannot be tested (no probe condition): it always trains.
    sequences = PSYMO + [seq("nm_only", "0", "nm")]
    for seed in range(5):
        split = cross_condition_split(sequences, test_subjects=12, seed=seed, val_subjects=0)
        assert subjects_of(split.train, sequences) == {"nm_only"}
    with pytest.raises(ValueError, match="both gallery and probe"):
        cross_condition_split(PSYMO, gallery_conditions=("nm",), probe_conditions=("nm", "bg"))
    with pytest.raises(ValueError, match="no subject has both"):
        cross_condition_split(PSYMO, gallery_conditions=("xx",))
    with pytest.raises(ValueError, match="no training subject"):
        cross_condition_split(PSYMO, test_subjects=12)


def test_describe_lists_counts():
    text = subject_disjoint_split(CASIA, test_subjects=2, val_subjects=1, seed=0).describe()
    assert "subject_disjoint split" in text
    assert "train: 126 sequences, 7 subjects" in text
    assert "gallery: 12 sequences, 2 subjects" in text and "probe: 24 sequences, 2 subjects" in text


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.sampled_from(["a", "b", "c"]), st.sampled_from(["", "nm", "bg"])),
                min_size=3, max_size=40),
       st.integers(0, 2**31))
def test_random_datasets_are_partitioned(labels, seed):
    sequences = [seq(f"s{s}", v, c, f"{k}") for k, (s, v, c) in enumerate(labels)]
    per_subject = Counter(s for s, _, _ in labels)
    if max(per_subject.values()) >= 2:  # someone can spare a test sequence
        split = closed_set_split(sequences, 0.2, 0.3, seed=seed)
        assert_partition(split, sequences)
        assert subjects_of(split.train, sequences) == set(f"s{s}" for s in per_subject)
    else:
        with pytest.raises(ValueError, match="enough recordings"):
            closed_set_split(sequences, 0.2, 0.3, seed=seed)
    if len(per_subject) >= 2:
        split = subject_disjoint_split(sequences, test_subjects=1, seed=seed)
        assert_partition(split, sequences)
        assert not subjects_of(split.train, sequences) & subjects_of(split.gallery + split.probe, sequences)
        assert split.gallery  # the 'auto' rule always finds a gallery sequence


def test_gallery_probe_uses_the_gallery_condition_per_subject():
    indices = [i for i, s in enumerate(CASIA) if s.subject in {"000", "003"}]
    gallery, probe = gallery_probe(CASIA, indices)
    assert sorted(gallery + probe) == sorted(indices)
    assert {CASIA[i].condition for i in gallery} == {"nm"} and "nm" not in {CASIA[i].condition for i in probe}


def test_config_subject_counts_and_fractions():
    from bpmt_fast.train.config import DataConfig
    from bpmt_fast.train.data import make_split

    count = make_split(PSYMO, DataConfig(protocol="cross-condition", test_subjects=5.0, val_subjects=0))
    fraction = make_split(PSYMO, DataConfig(protocol="cross-condition", test_subjects=0.25, val_subjects=0))
    assert len(count.subjects["gallery"]) == 5 and len(fraction.subjects["gallery"]) == 3
    with pytest.raises(ValueError, match="whole number"):
        make_split(PSYMO, DataConfig(protocol="cross-condition", test_subjects=2.5))


# --------------------------------------------------------------------------------------------- split records


def one_split_per_protocol() -> dict[str, tuple[list, Split]]:
    """name -> (sequences, a split of them), covering every protocol and mode."""
    gait3d, psymo = gait3d_like(), PSYMO + [seq("000", "0", "odd")]
    return {
        "closed_set": (gait3d, closed_set_split(gait3d, 0.2, 0.3, seed=1)),
        "subject_disjoint": (CASIA, subject_disjoint_split(CASIA, test_subjects=3, val_subjects=2, seed=1)),
        "subject_disjoint_callable": (CASIA, subject_disjoint_split(
            CASIA, 2, seed=0, gallery_rule=lambda seqs: [s.condition == "cl" for s in seqs])),
        "camera_closed": (gait3d, camera_split(gait3d, val_cameras=1, seed=2)),
        "camera_open": (gait3d, camera_split(gait3d, test_subjects=3, val_subjects=1, seed=2)),
        "cross_condition": (psymo, cross_condition_split(psymo, val_subjects=2, seed=3)),
    }


@pytest.mark.parametrize("name", list(one_split_per_protocol()))
def test_split_record_round_trip(name):
    sequences, split = one_split_per_protocol()[name]
    record = json.loads(json.dumps(split_record(split, sequences)))  # as saved and read back
    rebuilt = split_from_record(record, sequences)
    for part in RECORD_LISTS:
        assert getattr(rebuilt, part) == getattr(split, part), part
    assert rebuilt.probe_by_condition == split.probe_by_condition
    assert (rebuilt.protocol, rebuilt.subjects, rebuilt.notes) == (split.protocol, split.subjects, split.notes)
    assert compare_split_records(record, split_record(rebuilt, sequences)) == []
    shuffled = random.Random(0).sample(sequences, len(sequences))  # another loader order: same ids in every list
    assert split_record(split_from_record(record, shuffled), shuffled)["lists"] == record["lists"]


def test_split_record_names_sequences_and_subjects():
    split = subject_disjoint_split(CASIA, test_subjects=2, val_subjects=1, seed=0)
    record = split_record(split, CASIA)
    assert (record["version"], record["protocol"], record["params"]["seed"]) == (1, "subject_disjoint", 0)
    assert record["num_sequences"] == 180 and record["sequences"] == sorted(s.sequence_id for s in CASIA)
    assert record["lists"]["val_probe"] == sorted(CASIA[i].sequence_id for i in split.val_probe)
    assert record["subjects"]["gallery"] == split.subjects["gallery"] and record["subjects"]["test"] == []
    cross = split_record(cross_condition_split(PSYMO, seed=0), PSYMO)
    assert json.loads(json.dumps(cross))["params"]["gallery_conditions"] == ["nm"]  # tuples saved as lists
    assert cross["probe_by_condition"]["bg"] == sorted(PSYMO[i].sequence_id for i in
                                                       cross_condition_split(PSYMO, seed=0).probe_by_condition["bg"])


def test_compare_names_an_added_subject_and_resuming_leaves_it_out():
    saved = split_record(subject_disjoint_split(CASIA, 3, seed=0), CASIA)
    grown = CASIA + grid(11, ["000"], ["nm", "bg"])[-2:]  # subject 010 arrives with two sequences
    lines = compare_split_records(saved, split_record(subject_disjoint_split(grown, 3, seed=0), grown))
    assert "2 sequences in the data are not in the saved split: 010/bg-0/000, 010/nm-0/000 " \
           "(added files or a new subject folder?)" in lines
    assert "1 subject in the data is not in the saved split: 010" in lines
    resumed = split_from_record(saved, grown)  # the saved split, exactly; the newcomers are left out
    assert resumed.dropped == [180, 181]
    assert {**split_record(resumed, grown)["lists"], "dropped": []} == saved["lists"]
    assert "2 sequences not in the saved split left out: 010/bg-0/000, 010/nm-0/000" in resumed.describe()


def test_compare_and_resume_name_a_removed_file():
    sequences = gait3d_like()
    saved = split_record(camera_split(sequences, seed=0), sequences)
    fewer = sequences[1:]
    lines = compare_split_records(saved, split_record(camera_split(fewer, seed=0), fewer))
    assert "1 sequence of the saved split is missing from the data: 0000/camid0_videoid2/seq0 " \
           "(files removed or renamed?)" in lines
    with pytest.raises(ValueError, match="1 sequence of the saved split missing from the data: 0000/camid0_vid"):
        split_from_record(saved, fewer)


def test_compare_reports_seed_protocol_and_moves():
    saved = split_record(subject_disjoint_split(CASIA, 3, seed=0), CASIA)
    assert compare_split_records(saved, json.loads(json.dumps(saved))) == []
    lines = compare_split_records(saved, split_record(subject_disjoint_split(CASIA, 3, seed=1), CASIA))
    assert lines[0] == "params changed: seed 0 -> 1"
    moves = [line for line in lines if line.startswith("subject ")]
    assert moves and all(line.endswith(("from train to gallery+probe", "from gallery+probe to train"))
                         for line in moves)
    assert "sequences changed lists: " in lines[-1] and lines[-1].endswith("more")
    other = compare_split_records(saved, split_record(closed_set_split(CASIA, seed=0), CASIA))
    assert other[0] == "protocol changed: subject_disjoint -> closed_set"
    assert "params changed: test_subjects 3 -> (absent)" in other
    assert "params changed: val_fraction (absent) -> 0.1" in other
    assert sum(line.startswith("subject ") for line in other) == 5  # all 10 subjects moved: 5 named, then a count
    assert "... and 5 more subjects moved" in other


def test_split_records_need_unique_ids_and_a_matching_list():
    twins = [seq("a", sequence_id="x"), seq("a", sequence_id="x"), seq("b", sequence_id="y"),
             seq("b", sequence_id="y"), seq("c", sequence_id="z")]
    everything = Split("manual", train=list(range(5)))
    with pytest.raises(ValueError, match="2 sequence ids used more than once: x, y"):
        split_record(everything, twins)
    with pytest.raises(ValueError, match="used more than once: x, y"):
        split_from_record(split_record(closed_set_split(CASIA, seed=0), CASIA), twins)
    unnamed = [seq("a", sequence_id="x"), seq("b", sequence_id="y")]
    unnamed[1].sequence_id = ""
    with pytest.raises(ValueError, match=r"1 sequence without a sequence_id \(indices 1\)"):
        split_record(Split("manual", train=[0, 1]), unnamed)
    with pytest.raises(ValueError, match="another list"):
        split_record(closed_set_split(CASIA, seed=0), CASIA[:-1])
    with pytest.raises(ValueError, match="not a split record: missing .*lists"):
        split_from_record({"protocol": "camera"}, CASIA)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.sampled_from(["nm-01", "nm-02", "bg-01", "xx-01"]),
                          st.sampled_from(["000", "090"])), min_size=1, max_size=40, unique=True),
       st.integers(0, 2), st.integers(0, 2**31))
def test_random_datasets_partition_protocol(labels, val_subjects, seed):
    from bpmt_fast.data.splits import partition_split

    sequences = [PoseSequence(POSES, subject=f"s{s}", view=v, condition=t[:2], sequence_id=f"s{s}/{t}/{v}",
                              meta={"type": t}) for s, t, v in labels]
    partition = {"TRAIN_SET": ["s0", "s1", "s2", "s3"], "TEST_SET": ["s4", "s5", "s6"]}  # s7: in neither
    train = {f"s{s}" for s, _, _ in labels} & set(partition["TRAIN_SET"])
    test = [(f"s{s}", t) for s, t, _ in labels if f"s{s}" in partition["TEST_SET"]]
    if not train or val_subjects >= len(train) or not any(t == "nm-01" for _, t in test) \
            or not any(t in ("nm-02", "bg-01") for _, t in test):
        with pytest.raises(ValueError, match="no training|no gallery|no probe|candidate subjects"):
            partition_split(sequences, partition, ["nm-01"], {"NM": ["nm-02"], "BG": ["bg-01"]},
                            val_subjects=val_subjects, seed=seed)
        return
    split = partition_split(sequences, partition, ["nm-01"], {"NM": ["nm-02"], "BG": ["bg-01"]},
                            val_subjects=val_subjects, seed=seed)
    assert_partition(split, sequences)
    held_out = {sequences[i].subject for i in range(len(sequences))  # validation subjects: never in train
                if sequences[i].subject in train and i not in split.train}
    assert len(held_out) == val_subjects and subjects_of(split.train, sequences) == train - held_out
    assert subjects_of(split.val, sequences) <= held_out
    assert subjects_of(split.gallery + split.probe, sequences) <= set(partition["TEST_SET"])
    assert {sequences[i].meta["type"] for i in split.gallery} == {"nm-01"}
    assert all(sequences[i].subject == "s7" or sequences[i].meta["type"] == "xx-01" for i in split.dropped)
