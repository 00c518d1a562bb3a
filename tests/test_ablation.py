"""The ablation runner: spec checks, resume row by row, and the table's mean and spread."""
import json

import numpy as np
import pytest
import yaml

from bpmt_fast.train import ablation
from bpmt_fast.train.config import load_config


def write_spec(tmp_path, rows, seeds=(0, 1, 2)):
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump({"run_dir": "unused",
                                                          "finetune": {"epochs": 2, "warmup_epochs": 0}}))
    spec = {"config": "preset.yaml", "run_dir": str(tmp_path / "runs"), "seeds": list(seeds), "rows": rows}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def fake_results(rank1: dict) -> dict:
    """results.json as the pipeline writes it, reduced to what the table reads."""
    models = {"pose-stats 1-NN (reference)": {"test": {"all": {"reid": {"rank1": 0.1}}}}}
    for model, value in rank1.items():
        models[model] = {"test": {"all": {"reid": {"rank1": value}}}}
    return {"protocols": ["reid"], "models": models}


def test_rows_run_once_per_seed_and_resume(tmp_path, monkeypatch):
    """A row trains with its seeds (all or the first), its overrides and its own run directory; a row that
    already has results.json is not trained again (a killed ablation resumes)."""
    path = write_spec(tmp_path, [{"name": "full", "seeds": "all"},
                                 {"name": "no flip", "overrides": ["finetune.epochs=1"]}])
    calls = []

    def fake_pipeline(config):
        calls.append((config.seed, config.finetune.epochs, config.run_dir))
        folder = tmp_path / config.run_dir
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(fake_results({"bpmt": 0.2 + config.seed / 10})))

    import bpmt_fast.train.pipeline as pipeline
    monkeypatch.setattr(pipeline, "run_pipeline", fake_pipeline)
    monkeypatch.chdir(tmp_path)
    record = ablation.run_ablation(path)
    assert [(s, e) for s, e, _ in calls] == [(0, 2), (1, 2), (2, 2), (0, 1)]
    assert len({d for _, _, d in calls}) == 4  # one run directory per row and seed
    assert record["rows"]["full"]["rank1"]["bpmt reid"] == pytest.approx([0.2, 0.3, 0.4])
    calls.clear()
    ablation.run_ablation(path)
    assert calls == []  # everything finished: nothing trains again


def test_table_mean_and_sample_spread(tmp_path):
    path = write_spec(tmp_path, [{"name": "full", "seeds": "all"}, {"name": "other"}])
    spec = ablation.read_spec(path)
    values = [0.31, 0.42, 0.29]
    for seed, value in zip(spec.rows[0].seeds, values):
        folder = ablation.run_dir_of(spec, spec.rows[0], seed)
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(fake_results({"bpmt": value, "baseline": 1 - value})))
        (folder / "timing.json").write_text(json.dumps({"wall_s": 120, "cpu_s": 180}))
    ablation.write_table(spec)
    text = (spec.run_dir / "ablation.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| full"))
    assert f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" in row
    assert "| 3 / 3 |" in row and "| 3.0 | 2.0 |" in row  # CPU and wall minutes per run
    other = next(line for line in text.splitlines() if line.startswith("| other"))
    assert "| 0 / 1 |" in other  # not run yet: shown as missing, not as zero
    assert "reference" in text and "0.100" in text


@pytest.mark.parametrize("rows, problem", [
    ([], "rows is empty"),
    ([{"name": "a"}, {"name": "a"}], "repeats the name"),
    ([{"name": "a", "seeds": 3}], "seeds must be 'all'"),
    ([{"name": "a", "overrides": ["finetune.epochz=1"]}], "finetune.epochz"),
    ([{"name": "a", "overrides": ["no equals sign"]}], "key=value"),
    ([{"name": "a", "colour": "red"}], "rows[0]"),
])
def test_bad_specs_name_the_problem(tmp_path, rows, problem):
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        ablation.read_spec(write_spec(tmp_path, rows))


def test_shipped_specs_are_valid():
    for name in ("configs/ablation-psymo.yaml", "configs/ablation-synthetic.yaml"):
        spec = ablation.read_spec(name)
        assert spec.rows[0].name == "full recipe" and len(spec.rows[0].seeds) == 3
        assert "bpmt-fast train --config" in ablation.command_of(spec, spec.rows[1], 0)


def test_presets_extend_several_bases_in_order(tmp_path):
    (tmp_path / "a.yaml").write_text("finetune: {epochs: 3, lr: 0.01}\nrun_dir: a\n")
    (tmp_path / "b.yaml").write_text("finetune: {epochs: 5}\n")
    (tmp_path / "c.yaml").write_text("base: [a.yaml, b.yaml]\nrun_dir: c\n")
    config = load_config(tmp_path / "c.yaml")
    assert (config.finetune.epochs, config.finetune.lr, config.run_dir) == (5, 0.01, "c")
    (tmp_path / "d.yaml").write_text("base: [a.yaml, 3]\n")
    with pytest.raises(ValueError, match="base must be a file name or a list"):
        load_config(tmp_path / "d.yaml")


def test_recipe_presets_use_the_recipe():
    """The real-data presets carry the recipe (what the ablation's 'full recipe' row measures); the options the
    ablation adds one by one are off in it, so each '+' row changes exactly one thing."""
    for name in ("configs/psymo.yaml", "configs/quick-recipe.yaml", "configs/gait3d-dev.yaml"):
        config = load_config(name)
        assert config.model.streams == ["joints", "bones", "velocity", "angles"], name
        assert config.evaluation.all_frames and config.evaluation.flip, name
        assert config.data.normalisation == "hips" and not config.stage2.contrastive_weight, name
        assert not (config.augment.reverse or config.augment.move or config.augment.joint_noise), name
        assert not config.model.inter_part_layers, name
    assert not load_config("configs/psymo.yaml").data.pretrain_sources
