"""The generated blocks of docs/benchmarks.md (and the benchmark blocks of docs/dynamics.md),
from the committed ``benchmarks/results/*.json``.

    python benchmarks/report.py            # print every block
    python benchmarks/report.py --write    # rewrite them in docs/

Each block is a table of one committed result file (or of a few files measured together). A
block whose files are not committed says so and names the command that writes them; nothing
here holds a figure of its own. ``tests/test_benchmark_report.py`` regenerates the blocks and
fails when the page and the files differ.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
SETTING_NAMES = {"resnet164-pre-b32": "ResNet-164 pre, b32", "resnet164-post-b32":
                 "ResNet-164 post, b32", "resnet50-b16": "ResNet-50, b16, 224"}


def _load(results: Path, name: str) -> Any | None:
    path = results / name
    return json.loads(path.read_text()) if path.is_file() else None


def _missing(names: list[str], command: str) -> str:
    files = ", ".join(f"`benchmarks/results/{n}`" for n in names)
    return f"*No committed record yet ({files}): run `{command}`.*\n"


Renderer = Callable[[Path], str]


def from_results(*names: str, command: str) -> Callable[[Callable[..., str]], Renderer]:
    """Make ``render(*loaded)`` a block renderer of a results folder: it gets the files
    ``names`` loaded, or the block says they are not committed and names ``command``."""
    def wrap(render: Callable[..., str]) -> Renderer:
        def block(results: Path) -> str:
            loaded = [_load(results, name) for name in names]
            if any(result is None for result in loaded):
                return _missing(list(names), command)
            return render(*loaded)
        block.__name__, block.__doc__ = render.__name__, render.__doc__
        return block
    return wrap


def _rows(result: dict) -> dict[tuple[str, str], dict]:
    return {(row["setting"], row["variant"]): row for row in result["rows"]}


def _train_ratio(rows: dict, setting: str, variant: str) -> float:
    """Throughput of ``variant`` ÷ its plain network (fused ÷ fused, unfused ÷ unfused): the
    median over rounds of the per-round ratio, as ``overhead.py`` reports it."""
    base = "none/plain" if variant.endswith("/plain") else "none"
    return statistics.median(b / v for b, v in zip(rows[setting, base]["train_seconds"],
                                                   rows[setting, variant]["train_seconds"]))


@from_results("fuse_overhead_before.json", "fuse_overhead_after.json",
              command="python benchmarks/overhead.py --settings resnet164-pre-b32 "
                      "resnet164-post-b32 resnet50-b16 --variants none stepnet none/plain "
                      "stepnet/plain --rounds 4")
def fuse_before_after(before: dict, after: dict) -> str:
    """StepNet ÷ plain training throughput before and after the fast-path redesign."""
    old, new = _rows(before), _rows(after)
    lines = [f"{after['meta']['rounds']} rounds × {after['meta']['steps']} steps, "
             f"{after['meta']['threads']} threads, torch {after['meta']['torch']}.", "",
             "| setting | StepNet ÷ plain train, before | after (both fused) | plain fused im/s, "
             "before → after | StepNet ÷ plain, both unfused |", "|---|---:|---:|---:|---:|"]
    for setting in SETTING_NAMES:
        if (setting, "none") not in new:
            continue
        unfused = (f"{_train_ratio(new, setting, 'stepnet/plain'):.3f}"
                   if (setting, "stepnet/plain") in new else "–")
        lines.append(f"| {SETTING_NAMES[setting]} | {_train_ratio(old, setting, 'stepnet'):.3f} "
                     f"| {_train_ratio(new, setting, 'stepnet'):.3f} | "
                     f"{old[setting, 'none']['train_images_per_s']:.1f} → "
                     f"{new[setting, 'none']['train_images_per_s']:.1f} | {unfused} |")
    return "\n".join(lines) + "\n"


@from_results("ops_overhead_ctypes_1.json", "ops_overhead_ctypes_2.json",
              "ops_overhead_operators_1.json", "ops_overhead_operators_2.json",
              command="python benchmarks/overhead.py --settings resnet164-pre-b32 "
                      "resnet164-post-b32 resnet50-b16 --variants none stepnet se "
                      "--rounds 4 --no-recorder --output ...")
def operators_against_ctypes(ctypes_1: dict, ctypes_2: dict, operators_1: dict,
                             operators_2: dict) -> str:
    """Training throughput of the ctypes build and the torch.library operators, alternating."""
    runs = {"ctypes": [_rows(ctypes_1), _rows(ctypes_2)],
            "operators": [_rows(operators_1), _rows(operators_2)]}
    lines = ["| setting | variant | train im/s, ctypes (runs 1, 2) | operators (runs 1, 2) | "
             "÷ plain, ctypes | ÷ plain, operators | operators ÷ ctypes, means |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for setting in SETTING_NAMES:
        for variant in ("none", "stepnet", "se"):
            if (setting, variant) not in runs["ctypes"][0]:
                continue
            speed = {b: [r[setting, variant]["train_images_per_s"] for r in runs[b]]
                     for b in runs}
            ratio = {b: ("–" if variant == "none" else ", ".join(
                f"{_train_ratio(r, setting, variant):.3f}" for r in runs[b])) for b in runs}
            change = statistics.mean(speed["operators"]) / statistics.mean(speed["ctypes"])
            lines.append(f"| {SETTING_NAMES[setting]} | {variant} | "
                         f"{', '.join(f'{s:.1f}' for s in speed['ctypes'])} | "
                         f"{', '.join(f'{s:.1f}' for s in speed['operators'])} | "
                         f"{ratio['ctypes']} | {ratio['operators']} | {change:.3f} |")
    return "\n".join(lines) + "\n"


PEER_NAMES = {"stepnet:none": "ResNet-50", "stepnet:se": "SE-ResNet-50",
              "stepnet:eca": "ECA-ResNet-50", "stepnet:stepnet": "StepNet-ResNet-50",
              "torchvision:resnet50": "torchvision `resnet50`",
              "timm:seresnet50": "timm `seresnet50`",
              "timm:resnet50-eca": "timm `resnet50`, ECA blocks"}


@from_results("peers_operators.json",
              command="python benchmarks/peers.py --batch 16 --size 224 --rounds 5")
def peers(result: dict) -> str:
    """Training-step time of our ResNet-50s against the peers a user would pick instead."""
    settings = result["settings"]
    by_pair = {(row["ours"], row["peer"]): row for row in result["rows"]}
    lines = [f"`{settings['command']}`: batch {settings['batch']} at {settings['size']} px, "
             f"{settings['rounds']} rounds, {settings['threads']} threads, torch "
             f"{settings['torch']}, timm {settings['timm']}.", "",
             "| ours | peer | params, ours / peer | time ratio, fused [range] | "
             "unfused [range] |", "|---|---|---:|---:|---:|"]
    for (ours, peer), row in by_pair.items():
        if ours.endswith("/plain"):
            continue
        plain = by_pair.get((ours + "/plain", peer))

        def cell(r: dict | None) -> str:
            if r is None:
                return "–"
            low, high = r["time_ratio_range"]
            return f"{r['time_ratio']:.3f} [{low:.3f}, {high:.3f}]"
        lines.append(f"| {PEER_NAMES.get(ours, ours)} | {PEER_NAMES.get(peer, peer)} | "
                     f"{row['ours_params']:,} / {row['peer_params']:,} | {cell(row)} | "
                     f"{cell(plain)} |")
    return "\n".join(lines) + "\n"


def fuse_equality(results: Path) -> str:
    """How many models the fused path reproduces bit for bit, per committed comparison."""
    files = {"fuse_equality_operators.json": "the operators against the ctypes build",
             "fuse_equality.json": "after the redesign against before it",
             "fuse_equality_before_the_cbam_fix.json": "the same, before the CBAM / SGE fix"}
    lines = ["| comparison | models | bit-equal | differing (largest absolute difference) |",
             "|---|---:|---:|---|"]
    for name, label in files.items():
        result = _load(results, name)
        if result is None:
            continue
        differing = "; ".join(f"{model}: {entry['max_abs']:.3g}"
                              for model, entry in result["differing"].items()) or "none"
        lines.append(f"| {label} (`{name}`) | {result['models']} | {len(result['identical'])} "
                     f"| {differing} |")
    return "\n".join(lines) + "\n"


def _overhead_table(result: dict) -> str:
    meta = result["meta"]
    lines = [f"{meta['rounds']} rounds × {meta['steps']} steps, {meta['threads']} threads, "
             f"torch {meta['torch']}, device {meta['device']}; ratios to `none` of the same "
             "setting, medians of per-round ratios.", "",
             "| setting | variant | params | × params | × FLOPs | train im/s | × train | "
             "eval im/s | × eval | recorder ÷ eval |", "|---|---|---:|---:|---:|---:|---:|---:|"
             "---:|---:|"]
    for row in result["rows"]:
        recorder = f"{row['recorder_ratio']:.3f}" if "recorder_ratio" in row else "–"
        lines.append(f"| {SETTING_NAMES.get(row['setting'], row['setting'])} | {row['variant']} "
                     f"| {row['params']:,} | {row['params_ratio']:.3f} | "
                     f"{row['flops_ratio']:.3f} | {row['train_images_per_s']:.1f} | "
                     f"{row['train_images_per_s_ratio']:.3f} | {row['eval_images_per_s']:.1f} "
                     f"| {row['eval_images_per_s_ratio']:.3f} | {recorder} |")
    return "\n".join(lines) + "\n"


# every step-size module on its backbones (the default settings of overhead.py)
attention_overhead = from_results("overhead.json",
                                  command="python benchmarks/overhead.py")(_overhead_table)
vit_overhead = from_results(
    "overhead_vit.json", command="python benchmarks/overhead.py --settings vit_cifar-b64 "
                                 "--output benchmarks/results/overhead_vit.json")(_overhead_table)


@from_results("detection_throughput.json", command="python benchmarks/detection_throughput.py")
def detection(result: dict) -> str:
    """Faster R-CNN training steps with each step-size module in the backbone."""
    settings = result["settings"]
    lines = [f"`fasterrcnn_{settings['backbone']}_fpn`, batch {settings['batch_size']}, "
             f"{settings['min_size']} / {settings['max_size']} px, {settings['rounds']} rounds "
             f"× {settings['steps']} steps, {result['threads']} threads, torch "
             f"{result['torch']}.", "", "| variant | params | train img/s | ÷ none |",
             "|---|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['variant']} | {row['params']:,} | {row['images_per_s']:.2f} | "
                     f"{row['ratio']:.3f} |")
    return "\n".join(lines) + "\n"


@from_results("stiffness_cost.json", command="python benchmarks/stiffness_cost.py")
def stiffness_cost(result: dict) -> str:
    """The stiffness tools' cost and the matrix-free SI against the dense one."""
    r, t, s, f = (result[k] for k in ("recorder", "exact_tns", "si_n4096", "si_n65536"))
    rows = [("recorder eval pass ÷ plain eval pass (ResNet-164 + StepNet, batch 64)",
             f"{r['ratio']:.3f}", "≤ 1.10"),
            (f"exact TNS, {t['inputs']:,} inputs × {t['blocks']} blocks",
             f"{t['seconds']:.4f} s", t["target"]),
            (f"SI at n = {s['n']:,}: dense time ÷ matrix-free time", f"{s['speedup']:.1f}×",
             "≥ 10×"),
            (f"SI at n = {s['n']:,}: relative difference, matrix-free against dense",
             f"{s['relative_difference']:.1e}", "≤ 1e-6"),
            (f"SI of a ResNet-164 stage-1 block, n = {f['n']:,}, matrix-free",
             f"{f['seconds']:.1f} s", f["target"])]
    lines = [f"{result['threads']} threads, torch {result['torch']}.", "",
             "| measurement | value | target |", "|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


@from_results("train_throughput.json",
              command="python benchmarks/train_throughput.py --workers 2 --cache-images")
def engine_throughput(result: dict) -> str:
    """The full training engine against a bare loop on pre-loaded tensors."""
    lines = [f"{result['model']} + {result['attention']}, batch {result['batch_size']}, "
             f"{result['steps']} steps a round, {result['threads']} threads.", "",
             "| data pipeline | bare im/s | engine im/s | engine ÷ bare |", "|---|---:|---:|---:|"]
    for row in result["rows"]:
        label = ("`--cache-images` (decoded once, tensor augmentation, 0 workers)"
                 if row["cache_images"] else f"JPEG decode + augmentation, {row['workers']} "
                 "workers")
        lines.append(f"| {label} | {row['bare_images_per_s']:.1f} | "
                     f"{row['engine_images_per_s']:.1f} | {row['ratio']:.3f} |")
    return "\n".join(lines) + "\n"


@from_results("lyapunov_cost.json", command="python benchmarks/lyapunov_cost.py")
def lyapunov_cost(result: dict) -> str:
    """Matrix-free Lyapunov exponents against the dense ones (docs/dynamics.md)."""
    return "\n".join([
        f"n = {result['unknowns']:,} unknowns, T = {result['steps']}, k = {result['k']}, "
        f"{result['threads']} threads.", "",
        "| dense | matrix-free | dense ÷ matrix-free | largest difference of the top k |",
        "|---:|---:|---:|---:|",
        f"| {result['dense_s']:.1f} s | {result['matrix_free_s']:.2f} s | "
        f"{result['speedup']:.1f}× | {result['max_abs_difference']:.1e} |"]) + "\n"


@from_results("relaxed_energy.json", command="python benchmarks/relaxed_energy.py")
def relaxed_energy(result: dict) -> str:
    """Trajectories of the relaxed single-head flow along which the pair energy rises."""
    lines = ["| `‖W_Q W_K^T‖₂` | dt | steps | raw asymmetric scores | symmetrised scores | "
             "trajectories |", "|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['scale']:g} | {row['dt']:.1e} | {row['steps']} | "
                     f"{row['raw_rises']} | {row['symmetrized_rises']} | "
                     f"{row['trajectories']} |")
    return "\n".join(lines) + "\n"


DYNAMICS = ROOT / "docs" / "dynamics.md"

# block name -> (the page it sits in, its renderer)
BLOCKS: dict[str, tuple[Path, Renderer]] = {
    "bench-attention": (DOC, attention_overhead), "bench-fuse": (DOC, fuse_before_after),
    "bench-operators": (DOC, operators_against_ctypes), "bench-peers": (DOC, peers),
    "bench-fuse-equality": (DOC, fuse_equality), "bench-vit": (DOC, vit_overhead),
    "bench-detection": (DOC, detection), "bench-stiffness": (DOC, stiffness_cost),
    "bench-engine": (DOC, engine_throughput), "bench-lyapunov": (DYNAMICS, lyapunov_cost),
    "bench-relaxed-energy": (DYNAMICS, relaxed_energy)}


def blocks(results: Path = RESULTS) -> dict[str, tuple[Path, str]]:
    """Every block: name -> (its page, its text)."""
    return {name: (page, render(results)) for name, (page, render) in BLOCKS.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--docs", type=Path, default=ROOT / "docs",
                        help="the folder of the pages the blocks sit in")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from stepnet.studies import replace_generated_block

    for name, (page, text) in blocks(args.results).items():
        if args.write:
            replace_generated_block(args.docs / page.name, name, text)
        else:
            print(f"<!-- {page.name}: {name} -->\n{text}")
    if args.write:
        print(f"wrote {len(BLOCKS)} blocks in {args.docs}")


if __name__ == "__main__":
    main()
