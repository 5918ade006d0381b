"""Paper 1's evidence at CPU scale: Table 1 / Table 4 accuracies, TNS per variant, Fig. 2/3/6/7.

Protocol (``--preset cpu``, the default): a post-activation ResNet-20 (the authors' baseline
layout, at the depth that trains in minutes on 2 cores) on a stratified ``--train-subset`` of
``../shared/data/cifar10-jpeg``, SGD with a cosine schedule, evaluated on the 5,000 test images;
variants none, se, eca, srm, iebn, stepnet, StepNet's input ablations (Table 4: F(x_t),
F(x_{t+1}), F(x_{t+1} - x_t); F(x_{t+1}, x_t) is ``stepnet``) and StepNet in the second block of
each stage only (the lottery-ticket reading, LTH4SA), each over ``--seeds``.

``--preset full`` is the paper's protocol: ResNet-164 (post-activation), the full CIFAR-10
training set, 164 epochs (recipe ``cifar-resnet164``), 5 seeds; with ``--nproc N`` every run is
launched as ``torchrun --nproc-per-node N -m stepnet train ...`` (GPU machines).

Resumes: a finished run is not trained again and an interrupted one continues from its last
checkpoint. Runs go in ``--workers`` processes side by side (one thread each). When every run
has finished, ``stepnet compare`` writes the report (tables, correlations, figures) into
``--report`` and the study JSON into ``--output``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from stepnet.engine.distributed import run_dying_with_parent, run_side_by_side
from stepnet.studies import replace_generated_block

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "cifar10-jpeg"

# variant name -> config overrides; the StepNet-in-few-blocks blocks are filled per model.
VARIANTS: dict[str, dict[str, Any]] = {
    "none": {"attention": "none"},
    "se": {"attention": "se"},
    "eca": {"attention": "eca"},
    "srm": {"attention": "srm"},
    "iebn": {"attention": "none", "norm": "iebn"},
    "stepnet": {"attention": "stepnet"},
    "stepnet-x": {"attention": "stepnet", "attention_options": {"input": "x"}},
    "stepnet-next": {"attention": "stepnet", "attention_options": {"input": "next"}},
    "stepnet-diff": {"attention": "stepnet", "attention_options": {"input": "diff"}},
    "stepnet-few": {"attention": "stepnet", "attention_blocks": "second-of-each-stage"},
}
# The paper's CIFAR-10 top-1 (mean ± std over 5 seeds, ResNet-164): Table 1 and Table 4.
PAPER_CIFAR10: dict[str, tuple[float, float]] = {
    "none": (93.35, 0.18), "se": (94.26, 0.14), "eca": (94.15, 0.23), "srm": (94.59, 0.12),
    "iebn": (94.70, 0.13), "stepnet": (95.14, 0.24), "stepnet-x": (94.59, 0.14),
    "stepnet-next": (94.32, 0.23), "stepnet-diff": (94.69, 0.33),
}
TABLE1 = ("none", "se", "eca", "srm", "iebn", "stepnet")
TABLE4 = ("none", "stepnet-x", "stepnet-next", "stepnet-diff", "stepnet", "stepnet-few")
NAMES = {"none": "ResNet", "se": "+SE", "eca": "+ECA", "srm": "+SRM", "iebn": "+IEBN",
         "stepnet": "+StepNet F(x_{t+1}, x_t)", "stepnet-x": "F(x_t)",
         "stepnet-next": "F(x_{t+1})", "stepnet-diff": "F(x_{t+1} - x_t)",
         "stepnet-few": "StepNet in 3 blocks (LTH4SA)"}
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"recipe": "cifar-resnet164", "model": "resnet20", "dataset": "imagefolder",
            "train_subset": 5000, "epochs": 12, "batch_size": 128, "lr": 0.1,
            "schedule": "cosine", "milestones": [], "weight_decay": 5e-4, "cache_images": True,
            "workers": 0, "eval_batch_size": 500, "seeds": [0, 1, 2]},
    "full": {"recipe": "cifar-resnet164", "workers": 8, "seeds": [0, 1, 2, 3, 4]},
}


def few_blocks(model: str) -> list[int]:
    """The second block of every stage of ``model`` (the first is excluded from stiffness)."""
    from stepnet.models import create_model

    stages = [block.stage for block in create_model(model, num_classes=10).residual_blocks()]
    return [i for i in range(1, len(stages)) if stages[i] == stages[i - 1]
            and (i < 2 or stages[i - 2] != stages[i])]


def run_config(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides of one run (recipe given separately)."""
    preset = {k: v for k, v in PRESETS[args.preset].items() if k not in ("recipe", "seeds")}
    values = {**preset, **VARIANTS[variant], "data_dir": str(args.data_dir), "seed": seed,
              "device": args.device, "output": str(args.runs / variant / f"seed{seed}")}
    if args.dataset:
        values["dataset"] = args.dataset
    values["model_options"] = {"preact": False}
    if values.get("attention_blocks") == "second-of-each-stage":
        values["attention_blocks"] = few_blocks(values.get("model", "resnet164"))
    return values


def finished(run: Path, epochs: int) -> bool:
    from stepnet.engine import read_metrics

    return (run / "metrics.jsonl").is_file() and read_metrics(run)[-1]["epoch"] >= epochs


def train_in_process(variant: str, seed: int, args: argparse.Namespace) -> str:
    """Train (or resume, or skip) one run in this worker process (one thread)."""
    import torch

    torch.set_num_threads(args.threads)
    from stepnet.engine import Trainer, resolve_config

    config = resolve_config(PRESETS[args.preset]["recipe"], run_config(variant, seed, args))
    run = Path(config.output)
    if finished(run, config.epochs):
        return f"{variant} seed {seed}: done before"
    started = time.time()
    trainer = Trainer(config, progress=False)
    if (run / "checkpoints" / "last.pt").is_file():
        trainer.resume()
    trainer.fit()
    return f"{variant} seed {seed}: trained in {(time.time() - started) / 60:.1f} min"


def train_with_torchrun(variant: str, seed: int, args: argparse.Namespace) -> str:
    """Train one run as ``torchrun --nproc-per-node N -m stepnet train`` (the full preset)."""
    values = run_config(variant, seed, args)
    run = Path(values["output"])
    from stepnet.engine import resolve_config

    if finished(run, resolve_config(PRESETS[args.preset]["recipe"], values).epochs):
        return f"{variant} seed {seed}: done before"
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}",
               "-m", "stepnet.cli.main", "train", "--recipe", PRESETS[args.preset]["recipe"],
               "--quiet"]
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value)
        command += ["--set", f"{key}={text}"]
    if (run / "checkpoints" / "last.pt").is_file():
        command.append("--resume")
    run_dying_with_parent(command)
    return f"{variant} seed {seed}: trained"


def paper_tables(result: dict[str, Any]) -> str:
    """Table 1 and Table 4 in the paper's form, ours beside the paper's, with TNS per variant,
    and the TNS-accuracy rank correlations; Markdown, from ``stepnet compare``'s summary
    (``compare.json``, committed) alone."""
    groups = {g["group"]: g for g in result["groups"]}
    base = groups.get("none", {}).get("accuracy")
    def row(variant: str) -> str:
        g = groups.get(variant)
        paper = PAPER_CIFAR10.get(variant)
        paper_text = f"{paper[0]:.2f} ± {paper[1]:.2f}" if paper else "–"
        if g is None:
            return f"| {NAMES[variant]} | – | – | – | – | {paper_text} |"
        gain = f"{g['accuracy'] - base:+.2f}" if base is not None else "–"
        return (f"| {NAMES[variant]} | {g['n']} | {g['accuracy']:.2f} ± {g['accuracy_std']:.2f} "
                f"| {gain} | {g['tns']:.4f} ± {g['tns_std']:.4f} / {g['tns_step']:.4f} | "
                f"{paper_text} |")

    header = ("| model | n | top-1 (%) | Δ vs ResNet | TNS Δ=1 / Δ=h "
              "| paper top-1 (ResNet-164) |\n|---|---:|---:|---:|---:|---:|")
    correlations = ["| TNS vs top-1 | over | n | Kendall τ (p) | Spearman ρ (p) |",
                    "|---|---|---:|---:|---:|"]
    for step, label in (("1", "Δ=1"), ("h", "Δ=h")):
        for over in ("runs", "groups"):
            c = result["correlation"][step][f"over_{over}"]
            correlations.append(
                f"| {label} | {over} | {c['n']} "
                f"| {c['kendall']['statistic']:+.3f} ({c['kendall']['pvalue']:.3g}) "
                f"| {c['spearman']['statistic']:+.3f} ({c['spearman']['pvalue']:.3g}) |")
    return "\n".join([
        "#### Table 1 (CIFAR-10)", "", header, *(row(v) for v in TABLE1), "",
        "#### Table 4 (StepNet's inputs) and StepNet in few blocks", "", header,
        *(row(v) for v in TABLE4), "", *correlations, "", *paper_claims(result)]) + "\n"


def paper_claims(result: dict[str, Any]) -> list[str]:
    """Paper 1's claims on these runs, each read from an interval (``agrees`` only where it
    excludes the opposite): every module against the plain ResNet, paired by seed (a seed
    draws the same images and order in every variant), in top-1 and in TNS with Δ_t = h; and
    the rank correlation of TNS with top-1 over the variant means, with a seed-bootstrap
    interval and a permutation p (read only when both exclude chance: with three seeds the
    bootstrap alone is too narrow)."""
    import numpy as np

    from stepnet.stats import paired_t, spearman_of_means
    from stepnet.studies import _exact_permutation_p, _verdict

    by_group: dict[str, dict[int, dict[str, Any]]] = {}
    for run in result["runs"]:
        by_group.setdefault(run["group"], {})[run["seed"]] = run
    base = by_group.get("none", {})
    lines = ["#### Paper 1's claims on these runs", "",
             "| claim | comparison (paired seeds) | seeds | mean difference | 95 % t interval "
             "| reading |", "|---|---|---:|---:|---|---|"]
    for claim, key, digits in (("the module improves top-1 (Tables 1, 4)", "accuracy", 2),
                               ("the module's (better) network has a larger TNS, Δ_t = h (Fig. 2)",
                                "tns_step", 4)):
        for variant in (*TABLE1[1:], *TABLE4[1:4], TABLE4[5]):
            runs = by_group.get(variant)
            seeds = sorted(set(runs or {}) & set(base))
            if not seeds:
                continue
            diff = paired_t([runs[s][key] for s in seeds], [base[s][key] for s in seeds])
            interval = (f"[{diff['low']:+.{digits}f}, {diff['high']:+.{digits}f}]"
                        if diff["low"] is not None else "–")
            lines.append(f"| {claim} | {NAMES[variant]} − ResNet | {len(seeds)} | "
                         f"{diff['mean']:+.{digits}f} | {interval} | "
                         f"{_verdict(diff['low'], diff['high'], +1)} |")
    groups = [g for g in by_group if by_group[g]]
    seeds = sorted(set.intersection(*(set(by_group[g]) for g in groups)))
    accuracy = np.array([[by_group[g][s]["accuracy"] for s in seeds] for g in groups])
    lines.append("")
    for key, label in (("tns", "Δ_t = 1"), ("tns_step", "Δ_t = h")):
        tns = np.array([[by_group[g][s][key] for s in seeds] for g in groups])
        rho = spearman_of_means(tns, accuracy)
        p = _exact_permutation_p(tns.mean(1), accuracy.mean(1))
        # three seeds make the bootstrap narrow: a reading needs the permutation test too
        reading = _verdict(rho["low"], rho["high"], +1) if p is not None and p < 0.05 \
            else "cannot tell"
        lines.append(f"TNS ({label}) against top-1 over the {len(groups)} variant means "
                     f"({len(seeds)} seeds each; the paper's Fig. 7: positive): Spearman ρ = "
                     f"{rho['rho']:+.2f}, seed-bootstrap 95 % [{rho['low']:+.2f}, "
                     f"{rho['high']:+.2f}], permutation p = {p:.2g}: {reading}.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--full", action="store_const", const="full", dest="preset",
                        help="the paper's protocol (same as --preset full)")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--dataset", default=None,
                        help="dataset name (default: imagefolder on CPU, the recipe's cifar10 "
                        "with --full; an imagefolder tree of CIFAR-10 works for both)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="default: the preset's (3 on CPU, 5 in full)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--workers", type=int, default=2, help="runs trained side by side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--nproc", type=int, default=0,
                        help="launch every run with torchrun on this many processes (GPUs)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--stiffness-inputs", type=int, default=1000)
    parser.add_argument("--runs", type=Path, default=None,
                        help="default: runs/paper1_<preset>")
    parser.add_argument("--report", type=Path, default=None,
                        help="default: docs/figures/paper1_<preset>")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: benchmarks/results/paper1_<preset>.json")
    parser.add_argument("--train-only", action="store_true", help="skip the comparison")
    parser.add_argument("--tables-only", action="store_true",
                        help="rewrite the tables (and docs/reproduction.md's block, CPU preset) "
                             "from the committed <report>/compare.json; train nothing")
    args = parser.parse_args()
    args.runs = args.runs or ROOT / "runs" / f"paper1_{args.preset}"
    args.report = args.report or ROOT / "docs" / "figures" / f"paper1_{args.preset}"
    args.output = args.output or ROOT / "benchmarks" / "results" / f"paper1_{args.preset}.json"
    if args.tables_only:
        write_tables(json.loads((args.report / "compare.json").read_text()), args)
        return
    seeds = args.seeds or PRESETS[args.preset]["seeds"]
    if not args.data_dir.is_dir():
        raise SystemExit(f"no CIFAR-10 JPEG folder at {args.data_dir} (see ../shared/data)")
    jobs = [(v, s) for s in seeds for v in args.variants]
    started = time.time()
    if args.nproc:
        for variant, seed in jobs:
            print(train_with_torchrun(variant, seed, args), flush=True)
    else:
        failed = run_side_by_side(train_in_process, jobs, args.workers, args)
        if failed:
            raise SystemExit(f"{len(failed)} run(s) failed: {failed}; fix and rerun (finished "
                             f"runs are skipped)")
    print(f"training: {(time.time() - started) / 60:.1f} min", flush=True)
    if args.train_only:
        return
    from stepnet.cli.compare import compare_runs

    runs = [args.runs / v / f"seed{s}" for v, s in jobs]
    # ResNet-20 keeps 2 blocks per stage after the exclusion: a block is 20 % above its stage
    # mean when its NSI is 1.5 times the other's, so p_hat is tabulated at M1 = 0.2
    result = compare_runs(runs, args.report, max_inputs=args.stiffness_inputs,
                          proportion_at=(0.2, 0.0),
                          labels={str(args.runs / v / f"seed{s}"): v for v, s in jobs},
                          summary_json=args.output)
    write_tables(result, args)
    print(f"all of it: {(time.time() - started) / 60:.1f} min")


def write_tables(result: dict[str, Any], args: argparse.Namespace) -> None:
    """``<report>/tables.md`` and, for the CPU preset, docs/reproduction.md's generated block,
    from ``result`` (``compare.json``)."""
    tables = paper_tables(result)
    (args.report / "tables.md").write_text(tables)
    if args.preset == "cpu":
        replace_generated_block(ROOT / "docs" / "reproduction.md", "paper1-cpu", tables)
    print(tables)


if __name__ == "__main__":
    main()
