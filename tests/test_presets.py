"""The dataset presets: every one loads, names its data and what it reports, and the partition presets train end to
end on a CASIA-B-shaped pose tree under the field's gallery / probe rule."""
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from bpmt_fast.data.synthetic import SyntheticGaitConfig, generate_synthetic_dataset
from bpmt_fast.eval.metrics import PROTOCOLS
from bpmt_fast.train.config import load_config
from bpmt_fast.train.pipeline import run_pipeline

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DATASETS = ("psymo", "casiab", "oumvlp", "gait3d")


def chain_comments(path: Path) -> str:
    """The comment lines of a preset and of the presets it extends."""
    text = path.read_text()
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    base = yaml.safe_load(text).get("base")
    for name in [base] if isinstance(base, str) else base or []:
        comments += "\n" + chain_comments(path.parent / name)
    return comments


def test_every_training_preset_loads():
    presets = [p for p in sorted(CONFIGS.glob("*.yaml")) if "config" not in yaml.safe_load(p.read_text())]
    assert len(presets) >= 14
    for path in presets:
        load_config(path)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("model", ["bpmt", "baseline"])
def test_a_preset_per_model_and_dataset_names_its_data_and_what_it_reports(dataset, model):
    path = CONFIGS / f"{dataset}_{model}.yaml"
    config = load_config(path)
    assert config.models == [model] and config.run_dir == f"runs/{dataset}_{model}"
    comments = chain_comments(path)
    assert re.search(r"^# Data: ", comments, flags=re.M) and re.search(r"^# Reports: ", comments, flags=re.M)
    assert set(config.evaluation.protocols) <= set(PROTOCOLS)


def test_the_shipped_partitions_are_the_published_ones():
    """CASIA-B LT: subjects 001-074 train, 075-124 test. OU-MVLP: odd ids train, even ids and 10307 test
    (OpenGait's datasets/*/*.json list exactly these)."""
    casia = json.loads((CONFIGS / "partitions" / "CASIA-B.json").read_text())
    assert casia["TRAIN_SET"] == ["%03d" % i for i in range(1, 75)]
    assert casia["TEST_SET"] == ["%03d" % i for i in range(75, 125)]
    ou = json.loads((CONFIGS / "partitions" / "OUMVLP.json").read_text())
    assert len(ou["TRAIN_SET"]) == 5153 and len(ou["TEST_SET"]) == 5154
    assert all(int(s) % 2 == 1 for s in ou["TRAIN_SET"]) and ou["TEST_SET"][-1] == "10307"
    assert sorted(int(s) for s in ou["TRAIN_SET"] + ou["TEST_SET"]) == list(range(1, 10308))
    config = load_config(CONFIGS / "casiab.yaml")
    assert config.data.partition.gallery_types == ["nm-01", "nm-02", "nm-03", "nm-04"]
    assert config.data.partition.probe_types == {"NM": ["nm-05", "nm-06"], "BG": ["bg-01", "bg-02"],
                                                 "CL": ["cl-01", "cl-02"]}


def casia_b_tree(root: Path) -> Path:
    """A CASIA-B-shaped OpenGait pose tree (6 subjects x 10 walk types x 3 views, synthetic walkers) and its
    partition file (001-004 train, 005-006 test)."""
    types = [f"nm-0{i}" for i in range(1, 7)] + ["bg-01", "bg-02", "cl-01", "cl-02"]
    views = ["000", "090", "180"]
    walks = generate_synthetic_dataset(SyntheticGaitConfig(num_subjects=6, sequences_per_subject=len(types) * 3,
                                                           views=(0, 90, 180), min_frames=20, max_frames=30))
    per_subject: dict[str, list] = {}
    for walk in walks:
        per_subject.setdefault(walk.subject, []).append(walk)
    for number, subject in enumerate(sorted(per_subject), start=1):
        for k, walk in enumerate(per_subject[subject]):
            folder = root / f"{number:03d}" / types[k // 3] / views[k % 3]
            folder.mkdir(parents=True)
            (folder / f"{views[k % 3]}.pkl").write_bytes(pickle.dumps(walk.poses))
    partition = root.parent / "partition.json"
    partition.write_text(json.dumps({"TRAIN_SET": ["001", "002", "003", "004"], "TEST_SET": ["005", "006"]}))
    return partition


def test_the_casia_b_preset_trains_and_reports_per_probe_set(tmp_path):
    partition = casia_b_tree(tmp_path / "CASIA-B-pose")
    tiny = {"model": {"dim": 16, "heads": 2, "part_layers": 1, "pair_layers": 1, "embedding_dim": 16},
            "data": {"source": f"opengait:{tmp_path / 'CASIA-B-pose'}", "partition": {"file": str(partition)},
                     "max_frames": 16},
            "stage1": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0},
            "stage2": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0},
            "finetune": {"epochs": 1, "warmup_epochs": 0, "identities_per_batch": 4, "sequences_per_identity": 2,
                         "batches_per_epoch": 2},
            "run_dir": str(tmp_path / "run")}
    results = run_pipeline(load_config(CONFIGS / "casiab_bpmt.yaml", tiny))
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["subjects"]["train"] == ["001", "002", "003", "004"]
    test = results["models"]["bpmt"]["test"]
    assert set(test) == {"all", "nm", "bg", "cl"} and set(test["all"]) == {"cross-view"}
    # 2 test subjects: gallery nm-01..04, probes nm-05/06 (NM), bg-01/02 (BG), cl-01/02 (CL), 3 views each
    assert [test[c]["cross-view"]["num_probes"] for c in ("nm", "bg", "cl")] == [12, 12, 12]
