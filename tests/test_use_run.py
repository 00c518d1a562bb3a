"""Using a trained run: `bpmt_fast.load_run`, `run.embed`, `bpmt-fast embed` / `identify`, on one tiny trained run.

The promises: the weights used are the kept best ones, a walk is embedded exactly as the run's evaluation embedded
it (so `identify` on the run's own test gallery and probes reproduces results.json), labels travel with the
features, files from another model are refused, and checkpoints open with plain safetensors / torch.load."""
import csv
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import bpmt_fast
from bpmt_fast.api import Embeddings, load_run
from bpmt_fast.cli import main
from bpmt_fast.data.convert import convert_poses
from bpmt_fast.train import checkpoint
from bpmt_fast.train.config import load_config, merge
from bpmt_fast.train.pipeline import run_pipeline
from bpmt_fast.train.stages import build_model
from test_pipeline import TINY as PIPELINE_TINY

pytestmark = pytest.mark.usefixtures("single_thread")

# the pipeline tests' tiny run, with what the run records and embed must repeat: every frame in 16-frame chunks
# (walks of up to 40 frames), and the flip average
TINY = merge(PIPELINE_TINY, {"data": {"synthetic": {"max_frames": 40}, "max_frames": 16}, "stage1": {"epochs": 1},
                             "finetune": {"epochs": 4},
                             "evaluation": {"all_frames": True, "chunk_frames": 16, "flip": True}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("use") / "run"
    results = run_pipeline(load_config(overrides={**TINY, "run_dir": str(run_dir)}))
    return run_dir, results


def figures(result: dict) -> list:
    return [(protocol, r["rank1"], r["mAP"], r["num_probes"]) for protocol, r in sorted(result["all"].items())]


def test_load_run_takes_the_kept_best_weights_in_eval_mode(trained):
    run_dir, results = trained
    run = bpmt_fast.load_run(run_dir)
    assert run.model_name == "bpmt" and not run.model.training
    best = checkpoint.latest_checkpoint(run_dir / "checkpoints", "bpmt-best")
    assert run.weights == best
    assert run.epoch == results["curves"]["bpmt"]["finetune"]["best_epoch"]
    saved = load_file(best / "model.safetensors")
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert load_run(run_dir, "baseline").model_name == "baseline"


def test_identify_on_the_runs_own_test_split_reproduces_results_json(trained, tmp_path, capsys):
    run_dir, results = trained
    for model in ("bpmt", "baseline"):
        out = tmp_path / f"{model}.json"
        assert main(["identify", str(run_dir), "--model", model, "--gallery", "run:gallery", "--probe", "run:probe",
                     "--out", str(out)]) == 0
        written = json.loads(out.read_text())
        assert figures(written["metrics"]) == figures(results["models"][model]["test"])
    assert "reid: rank-1" in capsys.readouterr().out


def test_embedding_repeats_the_recorded_preprocessing(trained):
    """Flip and all-frames chunking as the run recorded them; turning the flip off changes the features."""
    run_dir, _ = trained
    run = load_run(run_dir)
    walks = [s.poses for s in run.sequences("run:probe")[:3]]
    assert max(len(w) for w in walks) > 16  # longer than a chunk: the chunking is exercised
    recorded = run.embed(walks)
    assert np.array_equal(recorded, run.embed(walks, flip=True))
    assert not np.allclose(recorded, run.embed(walks, flip=False))
    mirrored = [w[:, list(run.skeleton.left_right)] * np.array([-1, 1, 1], dtype=np.float32) for w in walks]
    assert np.allclose(run.embed(mirrored), recorded, atol=1e-4)  # a walk and its mirror image: one embedding


def test_padded_arrays_lists_and_sequences_give_the_same_features(trained):
    run_dir, _ = trained
    run = load_run(run_dir)
    sequences = run.sequences("run:test")[:5]
    walks = [s.poses for s in sequences]
    lengths = [len(w) for w in walks]
    padded = np.full((len(walks), max(lengths), *walks[0].shape[1:]), np.nan, np.float32)  # padding never read
    for i, w in enumerate(walks):
        padded[i, :len(w)] = w
    from_list = run.embed(walks)
    assert from_list.shape == (5, 16) and from_list.dtype == np.float32
    assert np.array_equal(run.embed(padded, lengths), from_list)
    assert np.array_equal(run.embed(torch.from_numpy(padded), torch.tensor(lengths)), from_list)
    assert np.allclose(run.embed(walks, batch_size=2), from_list, atol=1e-5)
    labelled = run.embed_sequences(sequences)
    assert np.array_equal(labelled.features, from_list)
    assert labelled.subject == [s.subject for s in sequences] and labelled.view == [s.view for s in sequences]
    unit = run.embed(walks, l2_normalise=True)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)


def test_other_joint_formats_are_converted_to_the_runs(trained):
    run_dir, _ = trained
    run = load_run(run_dir)
    walks = [s.poses for s in run.sequences("run:test")[:3]]
    openpose = [convert_poses(w, "coco17", "openpose18") for w in walks]
    assert openpose[0].shape[1] == 18
    assert np.array_equal(run.embed(openpose, skeleton="openpose18"), run.embed(walks))
    with pytest.raises(ValueError, match="walk 0 has 18 joints, skeleton 'coco17' has 17"):
        run.embed(openpose)  # 18 joints read as the run's COCO-17: refused, not guessed


def test_embed_cli_writes_plain_arrays_with_labels_and_origin(trained, tmp_path, capsys):
    run_dir, _ = trained
    root = tmp_path / "opengait"  # the run's test walks, as an OpenGait pose tree on disk
    run = load_run(run_dir)
    sequences = run.sequences("run:test")
    for s in sequences:
        folder = root / s.subject / f"{s.condition}-01" / s.view
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{len(list(folder.iterdir()))}.pkl").write_bytes(pickle.dumps(s.poses))
    out = tmp_path / "emb.npz"
    assert main(["embed", str(run_dir), "--data", f"opengait:{root}", "--out", str(out)]) == 0
    assert f"{len(sequences)} sequences x 16 features" in capsys.readouterr().out
    with np.load(out, allow_pickle=False) as arrays:  # no object arrays: nothing to unpickle
        assert arrays["features"].dtype == np.float32 and arrays["features"].shape == (len(sequences), 16)
        assert sorted(arrays["subject"].tolist()) == sorted(s.subject for s in sequences)
    loaded = Embeddings.load(out)
    assert loaded.info["model"] == "bpmt" and loaded.info["weights"] == run.weights.name and loaded.info["flip"]
    assert all(source.endswith(".pkl") for source in loaded.source)
    order = {(s.subject, s.view, pickle.dumps(s.poses)): i for i, s in enumerate(sequences)}
    expected = run.embed([s.poses for s in sequences])
    for k, source in enumerate(loaded.source):
        walk = pickle.loads(open(source, "rb").read())
        i = order[(loaded.subject[k], loaded.view[k], pickle.dumps(walk))]
        assert np.array_equal(loaded.features[k], expected[i])


def test_identify_from_embedding_files_matches_identify_from_data(trained, tmp_path):
    run_dir, _ = trained
    for side in ("gallery", "probe"):
        assert main(["embed", str(run_dir), "--data", f"run:{side}", "--out", str(tmp_path / f"{side}.npz")]) == 0
    from_files, from_data = tmp_path / "files.csv", tmp_path / "data.csv"
    assert main(["identify", str(run_dir), "--gallery", str(tmp_path / "gallery.npz"), "--probe",
                 str(tmp_path / "probe.npz"), "--top-k", "3", "--out", str(from_files)]) == 0
    assert main(["identify", str(run_dir), "--gallery", "run:gallery", "--probe", "run:probe", "--top-k", "3",
                 "--out", str(from_data)]) == 0
    assert from_files.read_text() == from_data.read_text()
    rows = list(csv.DictReader(from_files.open()))
    probes = Embeddings.load(tmp_path / "probe.npz")
    gallery = Embeddings.load(tmp_path / "gallery.npz")
    assert len(rows) == 3 * len(probes)
    first = [r for r in rows if r["probe"] == probes.sequence_id[0]]
    distances = np.linalg.norm(gallery.features - probes.features[0], axis=1)
    assert [r["gallery"] for r in first] == [gallery.sequence_id[g] for g in np.argsort(distances, kind="stable")[:3]]
    assert [float(r["distance"]) for r in first] == pytest.approx(np.sort(distances)[:3], rel=1e-5)
    assert all(r["correct"] == str(int(r["probe_subject"] == r["gallery_subject"])) for r in rows)


def test_embeddings_of_another_model_or_setting_are_refused(trained, tmp_path):
    run_dir, _ = trained
    assert main(["embed", str(run_dir), "--model", "baseline", "--data", "run:gallery",
                 "--out", str(tmp_path / "baseline.npz")]) == 0
    with pytest.raises(ValueError, match="model 'baseline'.*'bpmt'"):
        main(["identify", str(run_dir), "--gallery", str(tmp_path / "baseline.npz"), "--probe", "run:probe"])
    assert main(["embed", str(run_dir), "--data", "run:gallery", "--l2-normalise",
                 "--out", str(tmp_path / "unit.npz")]) == 0
    with pytest.raises(ValueError, match="l2_normalised"):
        main(["identify", str(run_dir), "--gallery", str(tmp_path / "unit.npz"), "--probe", "run:probe"])


def test_unlabelled_probes_get_matches_without_figures(trained, tmp_path, capsys):
    run_dir, _ = trained
    run = load_run(run_dir)
    probe = run.embed_dataset("run:probe")
    probe.subject = [""] * len(probe)
    probe.save(tmp_path / "unknown.npz")
    assert main(["identify", str(run_dir), "--gallery", "run:gallery", "--probe", str(tmp_path / "unknown.npz"),
                 "--out", str(tmp_path / "m.json")]) == 0
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["metrics"] == {} and "identities unknown" in written["notes"][0]
    assert all(m["correct"] is None for p in written["probes"] for m in p["matches"])
    assert "identities unknown" in capsys.readouterr().out


def test_checkpoints_open_with_plain_safetensors_and_weights_only_torch_load(trained):
    run_dir, _ = trained
    folder = checkpoint.latest_checkpoint(run_dir / "checkpoints", "bpmt-best")
    weights = load_file(folder / "model.safetensors")
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    assert isinstance(state["epoch"], int)
    config = load_run(run_dir).config
    model = build_model("bpmt", config.model, weights["head.classifier.weight"].shape[0])
    model.load_state_dict(weights, strict=True)


def test_bad_input_is_named(trained, tmp_path):
    run_dir, _ = trained
    run = load_run(run_dir)
    walk = run.sequences("run:test")[0].poses
    cases = [
        (lambda: load_run(tmp_path), "not a run directory"),
        (lambda: load_run(run_dir, "gaitset"), "trained bpmt, baseline, not 'gaitset'"),
        (lambda: run.embed(walk), r"padded \(N, T, J, C\)"),
        (lambda: run.embed(walk[None], [len(walk) + 1]), r"lengths must lie in \[1, "),
        (lambda: run.embed(walk[None], [1.5]), "lengths must be"),
        (lambda: run.embed([walk[..., :2]]), r"\(T >= 1, 17, 3 or 4\), got \(\d+, 17, 2\)"),
        (lambda: run.embed([]), "nothing to embed"),
        (lambda: run.sequences("run:everything"), "run:SIDE"),
        (lambda: run.embed_dataset("nope:/x"), "unknown dataset spec"),
        (lambda: Embeddings.load(tmp_path / "missing.npz"), "not an embeddings file"),
        (lambda: main(["identify", str(run_dir), "--gallery", "run:gallery", "--probe", "run:probe",
                       "--out", str(tmp_path / "m.txt")]), r"\.csv or \.json"),
        (lambda: main(["identify", str(run_dir), "--gallery", "run:gallery", "--probe", "run:probe",
                       "--protocols", "casia"]), "unknown protocol"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    np.savez(tmp_path / "poses.npz", poses=walk)
    with pytest.raises(ValueError, match="not an embeddings file"):
        Embeddings.load(tmp_path / "poses.npz")


def readme_section(title: str) -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    return text[start:text.index("\n## ", start + 1)]


def test_the_readme_examples_run_as_written(trained, tmp_path, monkeypatch, capsys):
    """Every command and code block of the README's "Use a trained model" section, verbatim, with runs/quick
    standing for the tiny run and CASIA-B-Pose for an OpenGait pose tree."""
    run_dir, _ = trained
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "quick").symlink_to(run_dir)
    walk = load_run(run_dir).sequences("run:probe")[0].poses
    folder = tmp_path / "CASIA-B-Pose" / "001" / "nm-01" / "090"
    folder.mkdir(parents=True)
    (folder / "090.pkl").write_bytes(pickle.dumps(walk))
    section = readme_section("Use a trained model")
    commands = [line.split("#")[0].split() for line in re.findall(r"^bpmt-fast .*$", section, flags=re.M)]
    assert [c[1] for c in commands] == ["embed", "embed", "identify", "identify"]
    for command in commands:
        assert main(command[1:]) == 0, command
    assert (tmp_path / "matches.csv").is_file() and (tmp_path / "casiab.npz").is_file()
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["features"].shape[0] == len(namespace["walks"])
    assert isinstance(namespace["state"]["epoch"], int) and "head.neck.weight" in namespace["weights"]


def test_the_readme_data_format_example_runs_as_written(tmp_path, monkeypatch):
    """The "Pose data formats" code block, verbatim, on an 18-keypoint OpenGait tree; and the table names every
    loader scheme there is."""
    from bpmt_fast.data.loaders import SCHEMES

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for subject in ("001", "002"):
        folder = tmp_path / "CASIA-B-Pose" / subject / "nm-01" / "090"
        folder.mkdir(parents=True)
        walk = np.concatenate([rng.uniform(0, 100, (30, 18, 2)), rng.uniform(0.5, 1, (30, 18, 1))], axis=2)
        (folder / "090.pkl").write_bytes(pickle.dumps(walk.astype(np.float32)))
    section = readme_section("Pose data formats")
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["sequences"][0].skeleton == "openpose18" and namespace["coco"].shape == (30, 17, 3)
    table = {m for m in re.findall(r"\| `([a-z0-9]+):", section)}
    assert table == set(SCHEMES)


def test_embed_says_what_a_lenient_load_left_out(trained, tmp_path, capsys):
    run_dir, _ = trained
    walk = load_run(run_dir).sequences("run:probe")[0].poses
    good, bad = tmp_path / "poses" / "001" / "nm-01" / "090", tmp_path / "poses" / "002" / "nm-01" / "090"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    (good / "090.pkl").write_bytes(pickle.dumps(walk))
    (bad / "090.pkl").write_bytes(b"not a pickle")
    (tmp_path / "poses" / "README.txt").write_text("stray")
    out = tmp_path / "emb.npz"
    assert main(["embed", str(run_dir), "--data", f"opengait:{tmp_path / 'poses'}", "--lenient", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1" in printed and "002" in printed and "README.txt" in printed
    report = Embeddings.load(out).info["load_report"]
    assert report["loaded"] == 1 and len(report["skipped"]) == 1 and len(report["ignored"]) == 1
