"""Training config: strict types and ranges, cross-field rules, no silently ignored setting, protocol parameters
reaching the splits, key=value overrides, resolved configs."""
import dataclasses
import re
import types
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpmt_fast.cli import build_parser, main, train_config_from_args
from bpmt_fast.data.sequence import PoseSequence
from bpmt_fast.model.skeleton import FORMATS
from bpmt_fast.train.config import (PROTOCOL_KEYS, SkeletonName, TrainConfig, from_dict, has_validation,
                                    load_config, load_resolved_config, parse_override, parse_overrides,
                                    protocol_keys, to_dict, validate)
from bpmt_fast.train.data import PROTOCOLS, make_split

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def message_names(error: pytest.ExceptionInfo, path: str) -> bool:
    """The error message starts with `config <path>` (or an item of it, `<path>[i]`)."""
    return re.match(rf"config {re.escape(path)}(\[\d+\])?[:. ]", str(error.value)) is not None


def get(values: dict, path: str):
    for part in path.split("."):
        values = values[part]
    return values


def put(values: dict, path: str, value) -> dict:
    """A copy of nested `values` with `path` set to `value`."""
    head, _, rest = path.partition(".")
    out = dict(values)
    out[head] = put(out.get(head) if isinstance(out.get(head), dict) else {}, rest, value) if rest else value
    return out


def leaves(values: dict, path: str = "") -> list[str]:
    out = []
    for key, value in values.items():
        full = f"{path}.{key}" if path else key
        out += leaves(value, full) if isinstance(value, dict) and value else [full]
    return out


# ------------------------------------------------------------------------------------------- presets still load


def test_presets_and_the_test_runs_load():
    from test_distributed import DDP_RUN
    from test_pipeline import TINY

    quick, psymo = load_config(CONFIGS / "quick.yaml"), load_config(CONFIGS / "psymo.yaml")
    assert quick.data.val_subjects == 0.25 and quick.finetune.patience == 25
    assert psymo.data.protocol == "cross-condition" and psymo.data.test_subjects == 5
    for run in (TINY, DDP_RUN):
        load_config(overrides=run)


def test_skeleton_choices_are_the_registry():
    assert typing.get_args(SkeletonName) == tuple(FORMATS)
    assert PROTOCOLS == ("subject-disjoint", "closed-set", "camera", "cross-condition", "partition")


# ------------------------------------------------------------------------------------------- strict values


@pytest.mark.parametrize("overrides, path, text", [
    ({"augment": {"speed": [0.8, 1.2, 5.0]}}, "augment.speed", "expected 2 values, got 3 ([0.8, 1.2, 5.0])"),
    ({"augment": {"speed": [1.3, 1.2]}}, "augment.speed", "low <= high"),
    ({"augment": {"speed": [0.0, 1.2]}}, "augment.speed[0]", "must be > 0"),
    ({"finetune": {"lr": "1e-3"}}, "finetune.lr", "expected a number, got '1e-3' (str)"),
    ({"finetune": {"lr": -1}}, "finetune.lr", "must be > 0"),
    ({"finetune": {"lr": float("inf")}}, "finetune.lr", "finite"),
    ({"stage1": {"epochs": 0}}, "stage1.epochs", "must be >= 1"),
    ({"stage1": {"epochs": True}}, "stage1.epochs", "expected an integer, got True (bool)"),
    ({"stage1": {"epochs": 2.0}}, "stage1.epochs", "expected an integer"),
    ({"stage2": {"warmup_epochs": 11}}, "stage2.warmup_epochs", "more than epochs (10)"),
    ({"stage1": {"mask_ratio": 1.0}}, "stage1.mask_ratio", "in (0, 1)"),
    ({"stage1": {"batch_size": 0}}, "stage1.batch_size", ">= 1"),
    ({"stage2": {"weight_decay": -0.1}}, "stage2.weight_decay", ">= 0"),
    ({"finetune": {"patience": 0}}, "finetune.patience", ">= 1"),
    ({"finetune": {"label_smoothing": 1.0}}, "finetune.label_smoothing", "in [0, 1)"),
    ({"finetune": {"sequences_per_identity": 1}}, "finetune.sequences_per_identity", ">= 2 for the triplet"),
    ({"finetune": {"triplet_weight": 0, "ce_weight": 0}}, "finetune.ce_weight", "nothing to learn"),
    ({"augment": {"mirror": 1.5}}, "augment.mirror", "in [0, 1]"),
    ({"augment": {"crop_min_fraction": 0}}, "augment.crop_min_fraction", "in (0, 1]"),
    ({"model": {"dim": 10, "heads": 4}}, "model.dim", "not divisible by heads (4)"),
    ({"model": {"heads": 0}}, "model.heads", ">= 1"),
    ({"model": {"dropout": 1.0}}, "model.dropout", "in [0, 1)"),
    ({"model": {"in_channels": 2}}, "model.in_channels", "expected one of 3, 4"),
    ({"model": {"attn_backend": "nope"}}, "model.attn_backend", "unknown attention backend"),
    ({"model": {"skeleton": "halpe26"}}, "model.skeleton", "differs from data.skeleton 'coco17'"),
    ({"data": {"skeleton": "coco"}}, "data.skeleton", "expected one of 'coco17'"),
    ({"data": {"protocol": "cameras"}}, "data.protocol", "expected one of 'subject-disjoint'"),
    ({"data": {"source": "gait4d:x"}}, "data.source", "SCHEME:PATH"),
    ({"data": {"source": 3}}, "data.source", "expected a string, got 3 (int)"),
    ({"data": {"test_subjects": 2.5}}, "data.test_subjects", "whole number"),
    ({"data": {"test_subjects": 0}}, "data.test_subjects", "> 0"),
    ({"data": {"protocol": "closed-set", "closed_set": {"val_fraction": 0.5, "test_fraction": 0.5}}},
     "data.closed_set.test_fraction", "leaves no training data"),
    ({"data": {"protocol": "camera", "camera": {"min_cameras": 3, "probe_cameras": 2, "val_cameras": 1}}},
     "data.camera.probe_cameras", "at most min_cameras - 1 = 2"),
    ({"data": {"protocol": "camera", "camera": {"open_set": True, "val_cameras": 1}}}, "data.camera.val_cameras",
     "must be 0 with open_set: true"),
    ({"data": {"protocol": "camera", "camera": {"open_set": 1}}}, "data.camera.open_set", "expected true or false"),
    ({"data": {"protocol": "cross-condition", "cross_condition": {"probe_conditions": ["nm"]}}},
     "data.cross_condition.probe_conditions", "nm also in gallery_conditions"),
    ({"data": {"protocol": "cross-condition", "cross_condition": {"gallery_conditions": []}}},
     "data.cross_condition.gallery_conditions", "must not be empty"),
    ({"data": {"synthetic": {"num_subjectz": 3}}}, "data.synthetic.num_subjectz", "did you mean 'num_subjects'"),
    ({"data": {"synthetic": {"views": [0, "a"]}}}, "data.synthetic.views[1]", "expected a number"),
    ({"data": {"synthetic": {"min_frames": 30, "max_frames": 20}}}, "data.synthetic", "min_frames <= max_frames"),
    ({"evaluation": {"protocols": ["reid", "reid"]}}, "evaluation.protocols", "lists reid more than once"),
    ({"evaluation": {"protocols": ["market"]}}, "evaluation.protocols[0]", "'reid', 'gait3d', 'cross-view'"),
    ({"evaluation": {"ranks": [0, 1]}}, "evaluation.ranks[0]", ">= 1"),
    ({"evaluation": {"metric": "cos"}}, "evaluation.metric", "'euclidean', 'cosine'"),
    ({"model": {"streams": ["joints", "joints"]}}, "model.streams", "lists joints more than once"),
    ({"model": {"streams": ["joints", "speed"]}}, "model.streams[1]", "'joints', 'bones', 'velocity', 'angles'"),
    ({"model": {"streams": []}}, "model.streams", "must not be empty"),
    ({"model": {"inter_part_layers": -1}}, "model.inter_part_layers", ">= 0"),
    ({"data": {"normalisation": "foo"}}, "data.normalisation", "'hips', 'body'"),
    ({"data": {"pretrain_sources": ["bad"]}}, "data.pretrain_sources[0]", "expected 'synthetic' or SCHEME:PATH"),
    ({"data": {"pretrain_sources": ["synthetic", "synthetic"]}}, "data.pretrain_sources", "more than once"),
    ({"augment": {"reverse": 1.5}}, "augment.reverse", "[0, 1]"),
    ({"augment": {"move": -0.1}}, "augment.move", "[0, 1]"),
    ({"stage2": {"contrastive_temperature": 0, "contrastive_weight": 1.0}}, "stage2.contrastive_temperature",
     "> 0"),
    ({"models": []}, "models", "must not be empty"),
    ({"models": ["bpmt", "vit"]}, "models[1]", "expected one of 'bpmt', 'baseline'"),
    ({"stages": [1, "ft"]}, "stages[0]", "(quote it: '1')"),
    ({"stages": "1,ft"}, "stages", "expected a list"),
    ({"device": "gpu"}, "device", "'auto', 'cpu', 'cuda'"),
    ({"seed": -1}, "seed", ">= 0"),
    ({"run_dir": ""}, "run_dir", "must not be empty"),
    ({"stage1": {"epochz": 1}}, "stage1.epochz", "unknown config key 'epochz' (did you mean 'epochs'?)"),
    ({"model": 3}, "model", "expected a mapping, got 3 (int)"),
])
def test_each_rule_names_its_key(overrides, path, text):
    with pytest.raises(ValueError) as error:
        load_config(overrides=overrides)
    assert message_names(error, path), str(error.value)
    assert text in str(error.value)


def test_validate_checks_a_config_changed_in_code():
    config = load_config()
    assert validate(config) == config
    bad = dataclasses.replace(config, finetune=dataclasses.replace(config.finetune, lr=-1.0))
    with pytest.raises(ValueError, match=r"^config finetune\.lr: must be > 0"):
        validate(bad)


# ------------------------------------------------------------------------------------------- unused settings

SETTINGS = {"data.test_subjects": 0.3, "data.val_subjects": 0.15, "data.closed_set.val_fraction": 0.1,
            "data.camera.val_cameras": 0, "data.cross_condition.gallery_conditions": ["nm"]}
USES = {"subject-disjoint": {"data.test_subjects", "data.val_subjects"},
        "closed-set": {"data.closed_set.val_fraction"},
        "camera": {"data.camera.val_cameras"},
        "camera open": {"data.camera.val_cameras", "data.test_subjects", "data.val_subjects"},
        "cross-condition": {"data.test_subjects", "data.val_subjects", "data.cross_condition.gallery_conditions"}}


@pytest.mark.parametrize("protocol", list(USES))
@pytest.mark.parametrize("key", list(SETTINGS))
def test_a_protocol_parameter_the_protocol_does_not_use_is_an_error(protocol, key):
    data = {"protocol": protocol.split()[0]}
    if protocol == "camera open":
        data["camera"] = {"open_set": True}
    values = put({"data": data}, key, SETTINGS[key])  # the default value, but set explicitly
    if key in USES[protocol]:
        assert get(to_dict(load_config(overrides=values)), key) == SETTINGS[key]
        return
    with pytest.raises(ValueError) as error:
        load_config(overrides=values)
    assert message_names(error, key)
    assert f"is not used by protocol '{protocol.split()[0]}' (it uses " in str(error.value)


def test_unused_protocol_messages():
    with pytest.raises(ValueError, match=re.escape("config data.camera.val_cameras is not used by protocol "
                                                   "'subject-disjoint' (it uses data.test_subjects, "
                                                   "data.val_subjects)")):
        load_config(overrides={"data": {"camera": {"val_cameras": 1}}})
    with pytest.raises(ValueError, match="open_set: true uses it"):
        load_config(overrides={"data": {"protocol": "camera", "val_subjects": 2}})
    for protocol in PROTOCOLS:  # every protocol reads some of the keys, and only keys of PROTOCOL_KEYS
        data = {"protocol": protocol, **({"partition": {"file": "x.json"}} if protocol == "partition" else {})}
        used = protocol_keys(load_config(overrides={"data": data}).data)
        assert used and set(used) <= set(PROTOCOL_KEYS)


@pytest.mark.parametrize("overrides, key, reason", [
    ({"data": {"source": "npz:x.npz", "synthetic": {"num_subjects": 5}}}, "data.synthetic.num_subjects",
     "only read with data.source 'synthetic'"),
    ({"data": {"lenient": True}}, "data.lenient", "only applies to file sources"),
    ({"model": {"num_classes": 5}}, "model.num_classes", "set by the pipeline"),
    ({"stage1": {"freeze_parts": False}}, "stage1.freeze_parts", "only applies to stage 2"),
    ({"finetune": {"ce_weight": 0, "label_smoothing": 0.2}}, "finetune.label_smoothing", "ce_weight 0"),
    ({"finetune": {"triplet_weight": 0, "triplet_margin": 0.3}}, "finetune.triplet_margin", "triplet_weight 0"),
    ({"finetune": {"supcon_temperature": 0.2}}, "finetune.supcon_temperature", "supcon_weight 0"),
    ({"stage1": {"contrastive_weight": 0.5}}, "stage1.contrastive_weight", "only applies to stage 2"),
    ({"stage2": {"contrastive_temperature": 0.2}}, "stage2.contrastive_temperature", "contrastive_weight 0"),
    ({"evaluation": {"chunk_frames": 32}}, "evaluation.chunk_frames", "all_frames: true"),
    ({"evaluation": {"max_frames": 500}}, "evaluation.max_frames", "all_frames: true"),
])
def test_other_unused_settings_are_errors(overrides, key, reason):
    with pytest.raises(ValueError) as error:
        load_config(overrides=overrides)
    assert message_names(error, key) and reason in str(error.value)


def test_used_counterparts_load():
    load_config(overrides={"data": {"source": "npz:x.npz", "lenient": True}})
    load_config(overrides={"data": {"synthetic": {"num_subjects": 5}}})
    load_config(overrides={"stage2": {"freeze_parts": False}, "finetune": {"supcon_weight": 1.0,
                                                                           "supcon_temperature": 0.2}})
    # a preset for both models keeps its stage-2 settings when one run trains the baseline only
    load_config(overrides={"models": ["baseline"], "stage2": {"epochs": 3}})


def test_a_setting_inherited_from_a_base_preset_counts_as_set(tmp_path):
    (tmp_path / "base.yaml").write_text("data:\n  protocol: camera\n  camera:\n    val_cameras: 1\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ndata:\n  protocol: subject-disjoint\n")
    with pytest.raises(ValueError, match="config data.camera.val_cameras is not used"):
        load_config(tmp_path / "child.yaml")
    assert load_config(tmp_path / "base.yaml").data.camera.val_cameras == 1
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ValueError, match="comes back to it"):
        load_config(tmp_path / "loop.yaml")


# ------------------------------------------------------------------------------------------- resolved configs

PROTOCOL_RUNS = [
    {},
    {"data": {"protocol": "closed-set", "closed_set": {"test_fraction": 0.3}}},
    {"data": {"protocol": "camera", "camera": {"min_cameras": 4, "val_cameras": 1}}},
    {"data": {"protocol": "camera", "camera": {"open_set": True}, "test_subjects": 3}},
    {"data": {"protocol": "cross-condition", "cross_condition": {"probe_conditions": ["bg"]}}},
    {"augment": {"speed": [0.9, 1.1]}, "data": {"synthetic": {"views": [0, 90], "num_subjects": 6}}},
]


@pytest.mark.parametrize("overrides", PROTOCOL_RUNS)
def test_a_saved_resolved_config_loads_back(tmp_path, overrides):
    config = load_config(overrides=overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))  # what a run saves
    assert load_resolved_config(path) == config
    assert from_dict(TrainConfig, yaml.safe_load(path.read_text())) == config
    with pytest.raises(ValueError, match="is not used by|set by the pipeline"):
        load_config(path)  # every key is "set" in a resolved config: hence load_resolved_config


def test_a_resolved_config_is_still_type_checked(tmp_path):
    values = to_dict(load_config())
    values["finetune"]["lr"] = "fast"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ValueError, match=r"^config finetune\.lr: expected a number"):
        load_resolved_config(path)


# ------------------------------------------------------------------------------------------- overrides and CLI


def test_override_parsing():
    assert parse_override("finetune.lr=1e-3") == {"finetune": {"lr": 0.001}}
    assert parse_override("models=[bpmt]") == {"models": ["bpmt"]}
    assert parse_override("model.attn_backend=") == {"model": {"attn_backend": None}}
    assert parse_override("data.source=npz:a=b.npz") == {"data": {"source": "npz:a=b.npz"}}
    assert parse_overrides(["data.seed=1", "data.max_frames=3", "data.seed=2"]) == \
        {"data": {"seed": 2, "max_frames": 3}}
    for bad in ("lr", "=1", "a..b=1", "a.=1", "1a=2"):
        with pytest.raises(ValueError, match="expected key=value"):
            parse_override(bad)
    with pytest.raises(ValueError, match="not valid YAML"):
        parse_override("models=[bpmt")


def test_yaml_files_read_exponent_floats(tmp_path):
    (tmp_path / "p.yaml").write_text("finetune:\n  lr: 1e-3\n  weight_decay: 5E-2\n")
    config = load_config(tmp_path / "p.yaml")
    assert config.finetune.lr == 1e-3 and config.finetune.weight_decay == 0.05


def args_of(*argv):
    return build_parser().parse_args(["train", *argv])


def test_cli_overrides_build_the_config():
    args = args_of("--config", str(CONFIGS / "quick.yaml"), "--stages", "1,ft", "--run-dir", "runs/x",
                   "finetune.lr=1e-3", "models=[bpmt]", "data.protocol=camera", "data.camera.open_set=true",
                   "data.test_subjects=4", "evaluation.protocols=[gait3d]")
    config = train_config_from_args(args)
    assert args.stages == ["1", "ft"]
    assert config.finetune.lr == 1e-3 and config.models == ["bpmt"] and config.run_dir == "runs/x"
    assert config.data.camera.open_set and config.data.test_subjects == 4
    assert config.evaluation.protocols == ["gait3d"]
    assert config.finetune.patience == 25  # the preset's, untouched
    config = train_config_from_args(args_of("--data", "npz:x.npz", "--attn-backend", "math"))
    assert config.data.source == "npz:x.npz" and config.model.attn_backend == "math"


@pytest.mark.parametrize("argv, text", [
    (("finetune.lrr=1e-3",), "config finetune.lrr: unknown config key"),
    (("data.camera.open_set=true",), "config data.camera.open_set is not used by protocol 'subject-disjoint'"),
    (("augment.speed=[0.8, 1.2, 5.0]",), "config augment.speed: expected 2 values, got 3"),
    (("--run-dir", "a", "run_dir=b"), "config run_dir is given twice: by --run-dir"),
    (("--data", "npz:x", "data={source: y}"), "config data.source is given twice: by --data"),
])
def test_cli_override_errors_name_the_key(argv, text):
    with pytest.raises(ValueError) as error:
        train_config_from_args(args_of(*argv))
    assert str(error.value).startswith(text)


@pytest.mark.parametrize("argv", [("lr",), ("a..b=1",), ("models=[bpmt",), ("--stages", "1,3"), ("--stages", ",")])
def test_malformed_command_lines_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    assert exit_info.value.code == 2 and "bpmt-fast train: error" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- make_split

POSES = np.zeros((2, 17, 3), dtype=np.float32)


def clip(subject, camera, condition="", take=0):
    recording = f"{subject}/{camera}/{condition}"
    return PoseSequence(POSES, subject=subject, view=camera, condition=condition,
                        sequence_id=f"{recording}/{take}", recording=recording)


def camera_data():
    """8 subjects seen by 4 cameras, s8 by 3; two clips (one recording) per camera."""
    return ([clip(f"s{s}", f"c{c}", take=t) for s in range(8) for c in range(4) for t in range(2)]
            + [clip("s8", f"c{c}", take=t) for c in range(3) for t in range(2)])


def cameras_of(sequences, indices, subject):
    return {sequences[i].view for i in indices if sequences[i].subject == subject}


def test_make_split_camera_closed_set_honours_val_cameras():
    sequences = camera_data()
    config = load_config(overrides={"data": {"protocol": "camera", "camera": {"min_cameras": 4, "probe_cameras": 1,
                                                                             "val_cameras": 2}}})
    split = make_split(sequences, config.data)
    assert {sequences[i].subject for i in split.dropped} == {"s8"}  # min_cameras reached camera_split
    for subject in (f"s{s}" for s in range(8)):
        train, val, test = (cameras_of(sequences, part, subject) for part in (split.train, split.val, split.test))
        assert (len(train), len(val), len(test)) == (1, 2, 1)
        assert not (train & val or train & test or val & test)
    without = make_split(sequences, load_config(overrides={"data": {"protocol": "camera"}}).data)
    assert not without.val and without.test and not without.gallery


def test_make_split_camera_open_set_holds_out_subjects():
    sequences = camera_data()
    config = load_config(overrides={"data": {"protocol": "camera", "camera": {"open_set": True},
                                             "test_subjects": 3, "val_subjects": 2}})
    split = make_split(sequences, config.data)
    subjects = {name: {sequences[i].subject for i in getattr(split, name)}
                for name in ("train", "gallery", "probe", "val_gallery", "val_probe")}
    assert len(subjects["gallery"]) == 3 and subjects["probe"] == subjects["gallery"]
    assert len(subjects["val_gallery"]) == 2 and subjects["val_probe"] == subjects["val_gallery"]
    assert not subjects["train"] & (subjects["gallery"] | subjects["val_gallery"])
    assert not split.test
    for subject in subjects["gallery"]:  # the probe cameras are unseen in the subject's gallery
        assert not cameras_of(sequences, split.gallery, subject) & cameras_of(sequences, split.probe, subject)


def test_make_split_passes_closed_set_fractions_and_conditions():
    sequences = [clip(f"s{s}", "c0", condition=f"r{r}") for s in range(4) for r in range(10)]
    config = load_config(overrides={"data": {"protocol": "closed-set",
                                             "closed_set": {"val_fraction": 0.2, "test_fraction": 0.5}}})
    split = make_split(sequences, config.data)
    assert (len(split.train), len(split.val), len(split.test)) == (12, 8, 20)

    sequences = [clip(f"s{s}", "c0", condition=c, take=t) for s in range(6) for c in ("nm", "bg", "xx")
                 for t in range(2)]
    config = load_config(overrides={"data": {"protocol": "cross-condition", "test_subjects": 2, "val_subjects": 1,
                                             "cross_condition": {"gallery_conditions": ["bg"],
                                                                 "probe_conditions": ["nm"]}}})
    split = make_split(sequences, config.data)
    assert {sequences[i].condition for i in split.gallery} == {"bg"} and set(split.probe_by_condition) == {"nm"}
    assert len({sequences[i].subject for i in split.gallery}) == 2


# ------------------------------------------------------------------------------------------- fuzzing

unit = st.floats(0, 1, exclude_max=True)
positive = st.floats(1e-4, 10)
count = st.integers(1, 64)


def maybe(draw, values: dict, path: str, strategy) -> None:
    if draw(st.booleans()):
        values.update(put(values, path, draw(strategy)))


def epochs_and_warmup(draw, values, section):
    if draw(st.booleans()):
        epochs = draw(st.integers(1, 50))
        values.update(put(values, f"{section}.epochs", epochs))
        values.update(put(values, f"{section}.warmup_epochs", draw(st.integers(0, epochs))))


def draw_model(draw, values):
    if draw(st.booleans()):
        heads = draw(st.integers(1, 8))
        values.update(put(values, "model.heads", heads))
        values.update(put(values, "model.dim", heads * draw(st.integers(1, 8))))
    if draw(st.booleans()):
        skeleton = draw(st.sampled_from(list(FORMATS)))
        values.update(put(put(values, "model.skeleton", skeleton), "data.skeleton", skeleton))
    for key in ("part_layers", "pair_layers", "embedding_dim"):
        maybe(draw, values, f"model.{key}", count)
    maybe(draw, values, "model.mlp_ratio", positive)
    maybe(draw, values, "model.dropout", unit)
    maybe(draw, values, "model.in_channels", st.sampled_from([3, 4]))
    maybe(draw, values, "model.attn_backend", st.sampled_from([None, "auto", "math", "sdpa", "flow"]))


def draw_training(draw, values):
    for section in ("stage1", "stage2"):
        epochs_and_warmup(draw, values, section)
        maybe(draw, values, f"{section}.batch_size", count)
        maybe(draw, values, f"{section}.lr", positive)
        maybe(draw, values, f"{section}.weight_decay", unit)
        maybe(draw, values, f"{section}.mask_ratio", st.floats(0.01, 0.99))
    maybe(draw, values, "stage2.freeze_parts", st.booleans())
    epochs_and_warmup(draw, values, "finetune")
    for key in ("identities_per_batch", "sequences_per_identity"):
        maybe(draw, values, f"finetune.{key}", st.integers(2, 16))
    maybe(draw, values, "finetune.batches_per_epoch", st.integers(0, 20))
    maybe(draw, values, "finetune.patience", count)
    maybe(draw, values, "finetune.grad_clip", st.floats(0, 5))
    maybe(draw, values, "finetune.label_smoothing", unit)
    maybe(draw, values, "finetune.triplet_margin", st.floats(0, 1))
    if draw(st.booleans()):  # the temperature only with a supervised contrastive loss
        values.update(put(values, "finetune.supcon_weight", draw(positive)))
        maybe(draw, values, "finetune.supcon_temperature", positive)
    for key in ("mirror", "part_mask"):
        maybe(draw, values, f"augment.{key}", st.floats(0, 1))
    maybe(draw, values, "augment.crop_min_fraction", st.floats(0.01, 1))
    maybe(draw, values, "augment.joint_noise", st.floats(0, 0.5))
    maybe(draw, values, "augment.speed", st.lists(st.floats(0.1, 3), min_size=2, max_size=2).map(sorted))


def subject_spec(low: int):
    return st.one_of(st.floats(0.01, 0.99), st.integers(max(low, 1), 20))


def draw_data(draw, values):
    protocol = draw(st.sampled_from(PROTOCOLS))
    values.update(put(values, "data.protocol", protocol))
    if protocol == "closed-set":
        maybe(draw, values, "data.closed_set.val_fraction", st.floats(0, 0.49))
        maybe(draw, values, "data.closed_set.test_fraction", st.floats(0, 0.49))
    open_set = protocol == "camera" and draw(st.booleans())
    if protocol == "camera":
        minimum = draw(st.integers(2, 6))
        probe = draw(st.integers(1, minimum - 1))
        values.update(put(values, "data.camera", {"min_cameras": minimum, "probe_cameras": probe,
                                                  "open_set": open_set}))
        if not open_set:
            maybe(draw, values, "data.camera.val_cameras", st.integers(0, minimum - 1 - probe))
    if protocol in ("subject-disjoint", "cross-condition") or open_set:
        maybe(draw, values, "data.test_subjects", subject_spec(1))
        maybe(draw, values, "data.val_subjects", st.one_of(st.floats(0, 0.99), st.integers(0, 20)))
    if protocol == "partition":  # the file is required; it is read when the split is made, not here
        values.update(put(values, "data.partition.file", draw(st.sampled_from(["CASIA-B.json", "/data/Gait3D.json"]))))
        maybe(draw, values, "data.val_subjects", st.one_of(st.floats(0, 0.99), st.integers(0, 20)))
    if protocol == "cross-condition" and draw(st.booleans()):
        conditions = draw(st.lists(st.sampled_from(["nm", "bg", "cl", "ph", "txt"]), min_size=2, unique=True))
        cut = draw(st.integers(1, len(conditions) - 1))
        values.update(put(values, "data.cross_condition", {"gallery_conditions": conditions[:cut],
                                                           "probe_conditions": conditions[cut:]}))
    if draw(st.booleans()):
        maybe(draw, values, "data.synthetic.num_subjects", count)
        maybe(draw, values, "data.synthetic.views", st.lists(st.integers(0, 180), min_size=1, max_size=4))
    else:
        values.update(put(values, "data.source", draw(st.sampled_from(["npz:a.npz", "gait3d:/data/g3d"]))))
        maybe(draw, values, "data.lenient", st.booleans())
    maybe(draw, values, "data.max_frames", count)
    maybe(draw, values, "data.seed", st.integers(0, 2 ** 32))


@st.composite
def valid_configs(draw) -> dict:
    """A random partial config that breaks no rule."""
    values: dict = {}
    draw_model(draw, values)
    draw_training(draw, values)
    draw_data(draw, values)
    maybe(draw, values, "evaluation.protocols", st.lists(st.sampled_from(["reid", "gait3d", "cross-view"]),
                                                         min_size=1, unique=True))
    maybe(draw, values, "evaluation.ranks", st.lists(st.integers(1, 50), min_size=1, unique=True))
    maybe(draw, values, "evaluation.metric", st.sampled_from(["euclidean", "cosine"]))
    maybe(draw, values, "models", st.lists(st.sampled_from(["bpmt", "baseline"]), min_size=1, unique=True))
    maybe(draw, values, "stages", st.lists(st.sampled_from(["1", "2", "ft"]), min_size=1, unique=True))
    maybe(draw, values, "device", st.sampled_from(["auto", "cpu", "cuda"]))
    maybe(draw, values, "seed", st.integers(0, 1000))
    maybe(draw, values, "checkpoint_every", st.integers(0, 5))
    maybe(draw, values, "run_dir", st.from_regex(r"[a-z][a-z0-9/_-]{0,20}", fullmatch=True))
    if not has_validation(load_config(overrides={k: values[k] for k in ("model", "data") if k in values}).data):
        values.get("finetune", {}).pop("patience", None)  # early stopping is off: setting its patience is an error
        if values.get("finetune") == {}:
            del values["finetune"]
    return values


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(valid_configs())
def test_valid_partial_configs_load_and_keep_their_values(values):
    config = load_config(overrides=values)
    resolved = to_dict(config)
    for path in leaves(values):
        assert get(resolved, path) == get(values, path), path
    assert from_dict(TrainConfig, resolved) == config


def bad_values(hint, metadata) -> list:
    """Values of the wrong type, or out of the field's range, for a field of type `hint`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return [1, ["x"]]  # str | None
    if origin is typing.Literal:
        return ["no-such-choice", True, 3.5] if isinstance(args[0], str) else ["3", 3.5, True]
    if origin is list:
        return ["not a list", 7, [{"a": 1}]]
    if origin is tuple:
        return [[1.0], [1.0, 1.0, 1.0], "1.0, 2.0", ["a", 1.0]]
    if hint is dict:
        return [3, [1, 2]]
    bad = {bool: [1, "yes", None], int: [1.5, True, "3", None], float: [True, "0.5", [0.5], None],
           str: [1, ["a"], None]}[hint]
    interval = metadata.get("range")
    if interval:
        low, high = (float(x) for x in re.findall(r"[-\w.]+", interval))
        step = 1 if hint is int else 0.5
        bad.append(low if interval.startswith("(") else low - step)
        if high != float("inf"):
            bad.append(high if interval.endswith(")") else high + step)
    return bad


def schema_leaves(cls, path=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        full = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            yield from schema_leaves(hints[f.name], full)
        else:
            yield full, hints[f.name], f.metadata


CORRUPTIONS = [(path, value) for path, hint, metadata in schema_leaves(TrainConfig)
               for value in bad_values(hint, metadata)]
SECTIONS = ["", "model", "data", "data.camera", "data.closed_set", "augment", "stage1", "finetune", "evaluation"]


def test_the_fuzzed_corruptions_cover_every_field():
    assert {path for path, _ in CORRUPTIONS} == {path for path, _, _ in schema_leaves(TrainConfig)}


@FUZZ
@given(valid_configs(), st.sampled_from(CORRUPTIONS))
def test_a_wrong_type_or_out_of_range_value_is_an_error_naming_its_key(values, corruption):
    path, value = corruption
    with pytest.raises(ValueError) as error:
        load_config(overrides=put(values, path, value))
    assert message_names(error, path), (path, value, str(error.value))


@FUZZ
@given(valid_configs(), st.sampled_from(SECTIONS), st.from_regex(r"[a-z]{1,8}_x", fullmatch=True))
def test_an_unknown_key_anywhere_is_an_error_naming_it(values, section, name):
    path = f"{section}.{name}" if section else name
    with pytest.raises(ValueError) as error:
        load_config(overrides=put(values, path, 1))
    assert message_names(error, path) and "unknown config key" in str(error.value)


@pytest.mark.parametrize("without, with_validation", [
    ({"val_subjects": 0}, {"val_subjects": 2}),
    ({"protocol": "camera"}, {"protocol": "camera", "camera": {"val_cameras": 1}}),
    ({"protocol": "closed-set", "closed_set": {"val_fraction": 0.0}}, {"protocol": "closed-set"}),
])
def test_patience_without_a_validation_side_is_an_error(without, with_validation):
    with pytest.raises(ValueError, match="config finetune.patience is not used: the split has no validation"):
        load_config(overrides={"data": without, "finetune": {"patience": 3}})
    load_config(overrides={"data": without})  # the default patience is fine: early stopping is simply off
    assert load_config(overrides={"data": with_validation, "finetune": {"patience": 3}}).finetune.patience == 3
