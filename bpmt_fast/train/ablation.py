"""Ablation tables: a preset, then the same preset with one element changed per row, each row trained and
evaluated by the ordinary pipeline (`bpmt-fast train`), summarised as mean and spread over training seeds.

A spec file (YAML)::

    config: psymo-recipe.yaml      # the preset every row starts from (relative to the spec file)
    run_dir: runs/ablation-psymo   # one run directory per row and seed below it
    seeds: [0, 1, 2]               # training seeds (config key `seed`) of rows with `seeds: all`
    rows:
      - name: full recipe
        seeds: all
      - name: joints only
        overrides: ["model.streams=[joints]"]   # key=value, as on the train command line

Rows without `seeds: all` run with the first seed only. The split does not change with the training seed
(`data.seed` is a separate key), so the spread is that of training alone. A row whose run directory already holds
results.json is not trained again: a killed ablation resumes row by row (and each run resumes from its checkpoints).
Each row records its wall-clock time and the CPU time of this process (all threads) while it trained.
"""
from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from . import checkpoint
from .config import load_config, parse_overrides

SPEC_KEYS = {"config", "run_dir", "seeds", "rows"}
ROW_KEYS = {"name", "seeds", "overrides"}


@dataclass
class Row:
    name: str
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


@dataclass
class AblationSpec:
    path: Path
    config: Path
    run_dir: Path
    rows: list[Row]


def read_spec(path: str | Path) -> AblationSpec:
    """Read and check an ablation spec; every problem is a ValueError naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ablation spec not found: {path}")
    values = yaml.safe_load(path.read_text()) or {}
    where = f"ablation spec {path}"
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping")
    unknown = set(values) - SPEC_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(SPEC_KEYS))}")
    for key in ("config", "run_dir", "rows"):
        if key not in values:
            raise ValueError(f"{where}: missing key {key!r}")
    seeds = values.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and s >= 0 for s in seeds)):
        raise ValueError(f"{where}: seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    rows, names = [], set()
    for i, row in enumerate(values["rows"] or []):
        if not isinstance(row, dict) or "name" not in row or set(row) - ROW_KEYS:
            raise ValueError(f"{where}: rows[{i}] must be a mapping with name and optional seeds: all / overrides")
        if row["name"] in names:
            raise ValueError(f"{where}: rows[{i}] repeats the name {row['name']!r}")
        names.add(row["name"])
        if row.get("seeds", "first") not in ("all", "first"):
            raise ValueError(f"{where}: rows[{i}].seeds must be 'all' (or left out: the first seed only)")
        overrides = list(row.get("overrides") or [])
        parse_overrides(overrides)  # a malformed override fails now, not after the rows before it trained
        rows.append(Row(str(row["name"]), seeds if row.get("seeds") == "all" else seeds[:1], overrides))
    if not rows:
        raise ValueError(f"{where}: rows is empty")
    config = path.parent / values["config"]
    for row in rows:  # every row's config is valid before anything trains
        load_config(config, row.overrides + [f"seed={seeds[0]}"])
    return AblationSpec(path, config, Path(values["run_dir"]), rows)


def run_dir_of(spec: AblationSpec, row: Row, seed: int) -> Path:
    return spec.run_dir / f"{row.slug}-seed{seed}"


def command_of(spec: AblationSpec, row: Row, seed: int) -> str:
    """The `bpmt-fast train` command line that trains one row and seed on its own."""
    words = ["bpmt-fast", "train", "--config", str(spec.config), f"run_dir={run_dir_of(spec, row, seed)}",
             f"seed={seed}", *row.overrides]
    return " ".join(shlex.quote(word) for word in words)


def run_ablation(spec_path: str | Path, only: list[str] | None = None) -> dict:
    """Train every row (or the rows named in `only`) that has no results yet, then write the table."""
    from .pipeline import run_pipeline

    spec = read_spec(spec_path)
    known = {row.name for row in spec.rows}
    missing = sorted(set(only or []) - known)
    if missing:
        raise ValueError(f"no row named {', '.join(map(repr, missing))} in {spec.path}; rows: {', '.join(known)}")
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    for row in spec.rows:
        if only and row.name not in only:
            continue
        for seed in row.seeds:
            folder = run_dir_of(spec, row, seed)
            if (folder / "results.json").is_file():
                continue
            print(f"[ablation] {row.name}, seed {seed}: {command_of(spec, row, seed)}")
            config = load_config(spec.config, row.overrides + [f"seed={seed}", f"run_dir={folder}"])
            wall, cpu = time.perf_counter(), time.process_time()
            run_pipeline(config)
            timing = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
            checkpoint.atomic_write_text(folder / "timing.json", json.dumps(timing))
    return write_table(spec)


def _headline(results: dict, model: str, protocol: str) -> float | None:
    value = results["models"].get(model, {}).get("test", {}).get("all", {}).get(protocol, {}).get("rank1")
    return None if value is None else float(value)


def summarise_rows(spec: AblationSpec) -> dict:
    """Per row: per model and protocol the rank-1 of every finished seed, and the timings."""
    table = {}
    for row in spec.rows:
        runs = []
        for seed in row.seeds:
            folder = run_dir_of(spec, row, seed)
            if not (folder / "results.json").is_file():
                continue
            results = json.loads((folder / "results.json").read_text())
            timing = json.loads((folder / "timing.json").read_text()) if (folder / "timing.json").is_file() else {}
            runs.append({"seed": seed, "results": results, "timing": timing})
        table[row.name] = {"row": row, "runs": runs}
    return table


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def write_table(spec: AblationSpec) -> dict:
    """ablation.md (markdown table) and ablation.json in the spec's run_dir, from the finished runs."""
    summary = summarise_rows(spec)
    finished = [entry for entry in summary.values() if entry["runs"]]
    if not finished:
        raise ValueError(f"no finished row in {spec.run_dir}")
    first = finished[0]["runs"][0]["results"]
    protocols = first["protocols"]
    models = [m for m in first["models"]]
    reference, learned = models[0], models[1:]
    header = ["row", "seeds"] + [f"{m} {p}" for m in learned for p in protocols] + ["CPU min / run", "wall min / run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    record = {"spec": str(spec.path), "protocols": protocols, "reference": {}, "rows": {}}
    for p in protocols:
        record["reference"][p] = _headline(first, reference, p)
    for name, entry in summary.items():
        runs, row = entry["runs"], entry["row"]
        cells = [name, f"{len(runs)} / {len(row.seeds)}"]
        values = {}
        for m in learned:
            for p in protocols:
                got = [v for v in (_headline(r["results"], m, p) for r in runs) if v is not None]
                values[f"{m} {p}"] = got
                cells.append(_mean_spread(got))
        cpu = [r["timing"]["cpu_s"] / 60 for r in runs if "cpu_s" in r["timing"]]
        wall = [r["timing"]["wall_s"] / 60 for r in runs if "wall_s" in r["timing"]]
        cells += [f"{np.mean(cpu):.1f}" if cpu else "-", f"{np.mean(wall):.1f}" if wall else "-"]
        lines.append("| " + " | ".join(cells) + " |")
        record["rows"][name] = {"seeds": [r["seed"] for r in runs], "rank1": values, "cpu_min": cpu,
                                "wall_min": wall, "command": command_of(spec, row, row.seeds[0])}
    ref = ", ".join(f"{p} {v:.3f}" for p, v in record["reference"].items() if v is not None)
    notes = [f"Rank-1 on the test split (mean ± sample standard deviation over training seeds; one value: one seed). "
             f"The non-learned {reference} scores {ref}.", "", "Commands (first seed; other seeds: seed=K):", ""]
    notes += [f"- {name}: `{entry['command']}`" for name, entry in record["rows"].items()]
    text = "\n".join(lines + [""] + notes) + "\n"
    checkpoint.atomic_write_text(spec.run_dir / "ablation.md", text)
    checkpoint.atomic_write_text(spec.run_dir / "ablation.json", json.dumps(record, indent=1))
    print(text)
    return record
