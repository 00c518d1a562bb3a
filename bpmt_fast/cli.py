"""Command line: `bpmt-fast backends | train | eval | embed | identify | demo | bench | gpu-check | compare |
ablation`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import typing

from bpmt_fast.attention import BACKENDS, ENV_VAR, AUTO_PRIORITY, BackendError, check_backend_name
from bpmt_fast.env import environment_info


def attn_backend_arg(name: str) -> str:
    """argparse type: a valid backend name, else the list of valid ones."""
    try:
        return check_backend_name(name)
    except BackendError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_attn_backend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--attn-backend", type=attn_backend_arg, metavar="NAME",
                        help=f"attention backend for every attention in the model (default: env {ENV_VAR} or auto)")


def apply_attn_backend(args) -> None:
    """The CLI choice becomes the process default (and is inherited by torchrun workers)."""
    if getattr(args, "attn_backend", None):
        os.environ[ENV_VAR] = args.attn_backend


def short_dtypes(dtypes) -> str:
    order = ["float16", "bfloat16", "float32", "float64"]
    names = {str(d).replace("torch.", "") for d in dtypes}
    return ",".join(n.replace("float", "f") for n in order if n in names)


def backend_rows() -> list[dict]:
    rows = []
    for name, cls in BACKENDS.items():
        reason = cls.why_unavailable()
        rows.append({
            "name": name,
            "available": reason is None,
            "reason": reason,
            "exact": cls.IS_EXACT,
            "devices": sorted(cls.SUPPORTED_DEVICES),
            "dtypes": sorted(str(d).replace("torch.", "") for d in cls.SUPPORTED_DTYPES),
            "max_head_dim": cls.MAX_HEAD_DIM,
            "varlen": cls.SUPPORTS_VARLEN,
            "version": cls.version() if reason is None else None,
            "description": cls.DESCRIPTION,
        })
    return rows


def cmd_backends(args) -> int:
    info, rows = environment_info(), backend_rows()
    if args.json:
        print(json.dumps({"environment": info, "auto_priority": AUTO_PRIORITY, "backends": rows}, indent=2))
        return 0
    print(f"torch {info['torch']} | triton {info['triton'] or 'not installed'} | CUDA {info['cuda'] or 'none'} | "
          f"GPU {info['gpu'] or 'none'}")
    header = f"{'backend':<15} {'available':<9} {'exact':<5} {'devices':<9} {'dtypes':<16} {'max D':<5}  notes"
    print(header)
    print("-" * len(header))
    for row in rows:
        dtypes = short_dtypes(BACKENDS[row["name"]].SUPPORTED_DTYPES)
        note = row["description"] if row["available"] else f"unavailable: {row['reason']}"
        print(f"{row['name']:<15} {'yes' if row['available'] else 'no':<9} {'yes' if row['exact'] else 'no':<5} "
              f"{','.join(row['devices']):<9} {dtypes:<16} {str(row['max_head_dim'] or '-'):<5}  {note}")
    device = info["device"]
    print(f"\nauto on {device}: first supporting of {', '.join(AUTO_PRIORITY.get(device, ('math',)))}")
    return 0


def cmd_demo(args) -> int:
    from bpmt_fast.demo import run_demo

    return run_demo(args.attn_backend, steps=args.steps)


def override_arg(text: str) -> str:
    """argparse type: a well-formed key=value override (kept as text; the config checks the key and value)."""
    from bpmt_fast.train.config import parse_override

    try:
        parse_override(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def stages_arg(text: str) -> list[str]:
    """argparse type: "1,ft" -> ["1", "ft"], each a stage name."""
    from bpmt_fast.train.config import StageName

    valid = typing.get_args(StageName)
    stages = comma_list(text)
    wrong = [stage for stage in stages if stage not in valid]
    if wrong or not stages:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(valid)}, got {text!r}")
    return stages


def train_config_from_args(args):
    """The TrainConfig of a `train` command line: preset <- --data / --run-dir / --attn-backend <- key=value
    overrides. A key given both as an option and as an override is an error, not a silent choice of one."""
    from bpmt_fast.train.config import load_config, merge, nest, parse_override

    options = [(flag, key, value) for flag, key, value in (("--data", "data.source", args.data),
                                                           ("--run-dir", "run_dir", args.run_dir),
                                                           ("--attn-backend", "model.attn_backend", args.attn_backend))
               if value]
    overrides: dict = {}
    for _, key, value in options:
        overrides = merge(overrides, nest(key, value))  # taken as is, not parsed as YAML
    for text in args.overrides:
        key = text.partition("=")[0].strip()
        for flag, option_key, _ in options:
            if option_key == key or option_key.startswith(key + "."):
                raise ValueError(f"config {option_key} is given twice: by {flag} and by the override {text!r}")
        overrides = merge(overrides, parse_override(text))
    return load_config(args.config, overrides)


def cmd_train(args) -> int:
    from bpmt_fast.train.pipeline import run_pipeline

    run_pipeline(train_config_from_args(args), args.stages)
    return 0


def cmd_eval(args) -> int:
    from bpmt_fast.train.pipeline import evaluate_run

    evaluate_run(args.run_dir)
    return 0


def add_use_options(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that use a trained run (embed, identify)."""
    parser.add_argument("run_dir", help="run directory written by `bpmt-fast train`")
    parser.add_argument("--model", choices=["bpmt", "baseline"],
                        help="which of the run's models (default: bpmt when the run trained it)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average each walk with its mirror image (default: the run's evaluation.flip)")
    parser.add_argument("--l2-normalise", action="store_true",
                        help="unit-length embeddings (default: the features the run's evaluation compares)")
    parser.add_argument("--lenient", action="store_true", help="skip bad files (listed) instead of stopping")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    add_attn_backend_option(parser)


def load_trained_run(args):
    from bpmt_fast.api import load_run

    return load_run(args.run_dir, args.model, device=args.device, attn_backend=args.attn_backend)


def embeddings_of(run, spec: str, args):
    """A data spec embedded with the run, or an embeddings file (`bpmt-fast embed` output, a path without a
    SCHEME: prefix) checked to come from the same model and weights."""
    from bpmt_fast.api import Embeddings
    from bpmt_fast.data.sequence import LoadReport

    if ":" in spec:
        embeddings = run.embed_dataset(spec, lenient=args.lenient, flip=args.flip, l2_normalise=args.l2_normalise)
        report = embeddings.info["load_report"]
        if report["skipped"] or report["ignored"]:  # say what was left out, as train does
            print(f"{spec}: " + str(LoadReport(**report)))
        return embeddings
    embeddings = Embeddings.load(spec)
    expected = run.info(False, args.l2_normalise)
    for key in ("model", "weights", "l2_normalised"):
        if embeddings.info.get(key) != expected[key]:
            raise ValueError(f"{spec}: embedded with {key} {embeddings.info.get(key)!r}, but this run's is "
                             f"{expected[key]!r}: embed it again with the same run and options")
    return embeddings


def cmd_embed(args) -> int:
    run = load_trained_run(args)
    embeddings = embeddings_of(run, args.data, args)
    path = embeddings.save(args.out)
    info = embeddings.info
    print(f"{len(embeddings)} sequences x {embeddings.features.shape[1]} features -> {path} ({run.model_name}, "
          f"weights {run.weights.name} (finetune epoch {run.epoch}), flip {info['flip']}, metric {info['metric']})")
    return 0


def cmd_identify(args) -> int:
    from bpmt_fast.eval.matching import check_comparable, retrieval_figures, top_matches, write_matches

    run = load_trained_run(args)
    gallery, probe = embeddings_of(run, args.gallery, args), embeddings_of(run, args.probe, args)
    check_comparable(probe, gallery)
    metric = probe.info.get("metric", run.metric)
    matches = top_matches(probe, gallery, args.top_k, metric)
    protocols = args.protocols or list(run.config.evaluation.protocols)
    figures, notes = retrieval_figures(probe, gallery, protocols, metric, run.config.evaluation.ranks)
    print(f"{len(probe)} probes against a gallery of {len(gallery)} ({run.model_name}, weights {run.weights.name}, "
          f"{metric} distance)")
    for name, result in figures.get("all", {}).items():
        ci = result["ci95"]["rank1"]
        print(f"  {name}: rank-1 {result['rank1']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}], mAP {result['mAP']:.3f}")
    for note in notes:
        print(f"  {note}")
    if args.out:
        header = {"run_dir": str(run.run_dir), "model": run.model_name, "weights": run.weights.name,
                  "metric": metric, "gallery": args.gallery, "probe": args.probe, "metrics": figures, "notes": notes}
        print(f"matches (top {args.top_k}) -> {write_matches(matches, args.out, header)}")
    else:
        for probe_row in matches[:10]:
            best = probe_row["matches"][0]
            print(f"  {probe_row['sequence_id']}: {best['sequence_id']} ({best['subject']}, {best['distance']:.4g})")
        if len(matches) > 10:
            print(f"  ... {len(matches) - 10} more probes (--out FILE.csv|.json writes them all)")
    return 0


def add_use_parsers(commands) -> None:
    embed = commands.add_parser("embed", help="identity embeddings of a dataset with a trained run's kept weights "
                                              "and recorded preprocessing -> .npz")
    add_use_options(embed)
    embed.add_argument("--data", required=True, metavar="SPEC",
                       help="SCHEME:PATH (gait3d, alphapose, casiab, npz, opengait, pyskl, oumvlp) or run:SIDE "
                            "(the run's own data: all, train, val, test, gallery, probe)")
    embed.add_argument("--out", required=True, help="output .npz (features, subject, view, condition, "
                                                    "sequence_id, source, info)")
    embed.set_defaults(run=cmd_embed)
    identify = commands.add_parser("identify", help="rank a gallery for every probe (top-k with distances) and, "
                                                    "when identities are known, rank-1 / mAP under the protocols")
    add_use_options(identify)
    identify.add_argument("--gallery", required=True, metavar="SPEC|FILE.npz",
                          help="data spec as for embed, or an embeddings file written by embed")
    identify.add_argument("--probe", required=True, metavar="SPEC|FILE.npz", help="as --gallery")
    identify.add_argument("--top-k", type=int, default=5, help="matches listed per probe (default 5)")
    identify.add_argument("--protocols", type=comma_list, metavar="P,P",
                          help="reid, gait3d, cross-view (default: the run's evaluation.protocols)")
    identify.add_argument("--out", help="matches as .csv (one row per probe and rank) or .json (with the figures)")
    identify.set_defaults(run=cmd_identify)


def comma_list(text: str) -> list[str]:
    """argparse type: "a,b" -> ["a", "b"] (names are checked when the benchmark starts)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def cmd_bench(args) -> int:
    from bpmt_fast.bench import run_bench

    run_bench(args.suite, quick=args.quick, out=args.out, backends=args.backends, shapes=args.shapes,
              dtype=args.dtype, device=args.device, budget_s=args.budget_s)
    return 0


def cmd_bench_report(args) -> int:
    from bpmt_fast.bench import rebuild_report
    from bpmt_fast.bench.readme import update_readme

    rebuild_report(args.path, args.out)
    if args.readme:
        update_readme(args.path, args.readme)
    return 0


def cmd_bench_model(args) -> int:
    from bpmt_fast.bench.cost_model import run_model

    table = run_model(args.shapes, args.gpu, args.dtype, quick=args.quick, out=args.out)
    print(table)
    if args.readme:
        if args.shapes or args.gpu != "h100" or args.dtype != "bf16" or args.quick:
            raise SystemExit("bpmt-fast bench model --readme: error: the README shows the default model only "
                             "(no --shapes, --gpu, --dtype or --quick)")
        from bpmt_fast.bench.cost_model import update_readme

        update_readme(args.readme, table)
    return 0


def seconds_arg(text: str) -> float:
    """argparse type: a non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"seconds must be >= 0, got {text}")
    return value


def add_bench_parser(commands) -> None:
    bench = commands.add_parser("bench", help="benchmark attention backends, training steps and accuracy on this "
                                              "machine: JSON, markdown report and plots")
    suites = bench.add_subparsers(dest="suite", required=True)
    helps = {"attention": "every backend on every attention shape set, forward and forward + backward",
             "train-step": "BPMT / baseline training steps per backend, eager and torch.compile",
             "accuracy": "the same short training run per backend: final losses and rank-1",
             "all": "attention, train-step and accuracy in one run"}
    for suite, text in helps.items():
        parser = suites.add_parser(suite, help=text)
        parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test that runs in seconds")
        parser.add_argument("--out", help="results folder (default: bench-results/<date>-<device>)")
        parser.add_argument("--backends", type=comma_list, metavar="A,B",
                            help="backends to run (default: every available one; math is always included)")
        parser.add_argument("--shapes", type=comma_list, metavar="X,Y",
                            help="shape sets: bpmt-fixed, bpmt-varlen, cross-pairs, long, train-step (default: all)")
        parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="default: bf16 on CUDA, fp32 on CPU")
        parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
        parser.add_argument("--budget-s", type=seconds_arg, metavar="S",
                            help="time budget for the whole run, shared among the suites; rows that would start "
                                 "later are 'skipped' with reason 'time budget' (default: none)")
        parser.set_defaults(run=cmd_bench)
    model = suites.add_parser("model", help="cost MODEL of our triton attention kernels (no GPU, nothing timed): "
                                            "programs, idle programs, HBM bytes, FLOPs, exps and floors vs ideal")
    model.add_argument("--shapes", type=comma_list, metavar="X,Y",
                       help="attention shape sets (default: bpmt-fixed, bpmt-varlen, cross-pairs)")
    model.add_argument("--gpu", choices=["h100", "h200", "a100"], default="h100")
    model.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    model.add_argument("--quick", action="store_true", help="the shape sets' tiny CPU sizes")
    model.add_argument("--out", help="also write cost-model.json and cost-model.md into this folder")
    model.add_argument("--readme", nargs="?", const="README.md", metavar="README",
                       help="also replace the README's cost-model section (between its <!-- cost-model:start --> / "
                            "<!-- cost-model:end --> markers) with the default model")
    model.set_defaults(run=cmd_bench_model)
    from bpmt_fast.bench.tune import add_tune_parser

    add_tune_parser(suites)  # `bench tune`: kernel launch configurations timed on a GPU, written to kernels/tuned/
    report = suites.add_parser("report", help="rebuild the markdown report and plots from a saved results JSON")
    report.add_argument("path", help="results.json or the folder holding it")
    report.add_argument("--out", help="folder for report.md and plots/ (default: the JSON's folder)")
    report.add_argument("--readme", nargs="?", const="README.md", metavar="README",
                        help="also replace the GPU results section of README (default README.md) between its "
                             "<!-- gpu-results:start --> / <!-- gpu-results:end --> markers; full-size GPU runs only")
    report.set_defaults(run=cmd_bench_report)


def protocol_arg(name: str) -> str:
    """argparse type: a test retrieval protocol name, else the list of valid ones."""
    from bpmt_fast.train.config import EvalProtocol

    valid = typing.get_args(EvalProtocol)
    if name not in valid:
        raise argparse.ArgumentTypeError(f"unknown protocol {name!r}; valid: {', '.join(valid)}")
    return name


def cmd_ablation(args) -> int:
    from bpmt_fast.train.ablation import read_spec, run_ablation, write_table

    if args.table_only:
        write_table(read_spec(args.spec))
    else:
        run_ablation(args.spec, args.only)
    return 0


def add_ablation_parser(commands) -> None:
    ablation = commands.add_parser("ablation", help="train every row of an ablation spec (a preset, then one element "
                                                    "changed per row, over seeds) and write ablation.md")
    ablation.add_argument("spec", help="ablation spec YAML, e.g. configs/ablation-psymo.yaml")
    ablation.add_argument("--only", type=comma_list, metavar="ROW,ROW", help="train only these rows (by name)")
    ablation.add_argument("--table-only", action="store_true", help="rebuild ablation.md from finished rows")
    ablation.set_defaults(run=cmd_ablation)


def cmd_compare(args) -> int:
    from bpmt_fast.train.compare import run_compare

    run_compare(args.run_dirs, out=args.out, protocol=args.protocol)
    return 0


def add_compare_parser(commands) -> None:
    compare = commands.add_parser("compare", help="finished runs side by side: attention backend, precision, "
                                                  "compile, seq/s per stage, peak memory, test rank-1 / mAP "
                                                  "(compare.md and compare.png)")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories holding results.json")
    compare.add_argument("--out", default="compare", help="folder for compare.md and compare.png (default: compare)")
    compare.add_argument("--protocol", type=protocol_arg, metavar="NAME",
                         help="test protocol of the rank-1 / mAP columns (default: each run's first)")
    compare.set_defaults(run=cmd_compare)


def cmd_gpu_check(args) -> int:
    from bpmt_fast.bench.gpu_check import run_gpu_check

    verdicts = run_gpu_check(args.out, args.budget_s, device=None if args.device == "cuda" else args.device,
                             bench_out=args.bench_out, readme=args.readme)
    return 0 if all(v.ok for v in verdicts) else 1


def add_gpu_check_parser(commands) -> None:
    from bpmt_fast.bench.gpu_check import DEFAULT_TOTAL_S

    check = commands.add_parser(
        "gpu-check", help="on a CUDA machine: environment, every kernel launch against the references, the GPU "
                          "tests, host syncs in a training step, the full benchmark and the README's GPU results, "
                          "within a time budget (refused without CUDA)")
    check.add_argument("--out", help="verdicts and part outputs (default: BENCH_OUT/gpu-check)")
    check.add_argument("--budget-s", type=seconds_arg, default=DEFAULT_TOTAL_S, metavar="S",
                       help=f"total time budget, shared among the parts (default {DEFAULT_TOTAL_S:.0f})")
    check.add_argument("--bench-out", help="benchmark results folder (default: benchmarks/results/<date>-<gpu>)")
    check.add_argument("--readme", help="README whose GPU results section is regenerated (default: the source "
                                        "tree's README.md)")
    check.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                       help="cpu: a rehearsal of the orchestration on CPU (kernels in the Triton interpreter); "
                            "nothing it writes is a GPU result and it never touches the README")
    check.set_defaults(run=cmd_gpu_check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bpmt-fast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    backends = commands.add_parser("backends", help="list attention backends, why unavailable ones are, versions")
    backends.add_argument("--json", action="store_true", help="machine-readable output")
    backends.set_defaults(run=cmd_backends)
    train = commands.add_parser("train", help="stage 1 -> stage 2 -> finetune -> evaluation into one run directory "
                                              "(resumes from its checkpoints)")
    train.add_argument("--config", help="YAML preset, e.g. configs/quick.yaml")
    train.add_argument("--data", help="synthetic | SCHEME:PATH with SCHEME one of gait3d, alphapose, casiab, npz, "
                                      "opengait, pyskl, oumvlp")
    train.add_argument("--stages", type=stages_arg, metavar="S,S",
                       help="comma-separated subset of 1,2,ft (default: the config's)")
    train.add_argument("--run-dir", help="run directory (default: the config's)")
    add_attn_backend_option(train)
    train.add_argument("overrides", nargs="*", type=override_arg, metavar="KEY=VALUE",
                       help="config overrides on top of the preset, after the options; the value is YAML, e.g. "
                            "finetune.lr=1e-3 data.camera.open_set=true models=[bpmt]")
    train.set_defaults(run=cmd_train)
    evaluate = commands.add_parser("eval", help="evaluate the best checkpoints of a run directory again")
    evaluate.add_argument("run_dir")
    evaluate.set_defaults(run=cmd_eval)
    demo = commands.add_parser("demo", help="forward + backward of BPMT and the baseline on a synthetic padded batch "
                                            "with every available backend (or one), compared with math")
    add_attn_backend_option(demo)
    demo.add_argument("--steps", type=int, default=3, help="optimizer steps per backend and model")
    demo.set_defaults(run=cmd_demo)
    add_bench_parser(commands)
    add_gpu_check_parser(commands)
    add_compare_parser(commands)
    add_ablation_parser(commands)
    add_use_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_attn_backend(args)
    return args.run(args)


def console_main() -> int:
    """The `bpmt-fast` script: bad input (a ValueError naming the problem) is one line on stderr and exit status 2,
    not a traceback. `main` raises, for callers and tests."""
    try:
        return main()
    except ValueError as error:
        print(f"bpmt-fast: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(console_main())
