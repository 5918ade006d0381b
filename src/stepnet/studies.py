"""Studies from committed run records: loading them, the pre-registered comparisons, and the
Markdown blocks of docs/ that are generated from them (and checked against them by the tests).

A generated block sits between ``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->``
in a Markdown file; :func:`replace_generated_block` rewrites it, :func:`generated_block` reads
it back.
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .engine.records import load_record, unpack_bits
from .stats import holm, mcnemar_exact, paired_bootstrap, paired_t, spearman_of_means

CIFAR10_ARMS = ("none", "se", "stepnet")
# (label, treatment, baseline): the positive control first, as pre-registered
CIFAR10_COMPARISONS = (("SE − none (positive control)", "se", "none"),
                       ("StepNet − none", "stepnet", "none"),
                       ("StepNet − SE", "stepnet", "se"))
PILOT_THRESHOLD = 88.5   # pre-registered: the pilot's final validation top-1 that fixes 40 epochs
ALPHA = 0.05


# -- generated blocks --------------------------------------------------------------------------
def _markers(name: str) -> tuple[str, str]:
    return f"<!-- generated: {name} -->", f"<!-- end generated: {name} -->"


def generated_block(path: str | Path, name: str) -> str:
    """The text of generated block ``name`` in ``path`` (without its markers)."""
    text = Path(path).read_text()
    start, end = _markers(name)
    match = re.search(re.escape(start) + r"\n(.*?)" + re.escape(end), text, flags=re.S)
    if match is None:
        raise ValueError(f"{path} has no generated block {name!r} ({start} ... {end})")
    return match.group(1)


def replace_generated_block(path: str | Path, name: str, body: str) -> None:
    """Rewrite generated block ``name`` of ``path`` with ``body``."""
    path = Path(path)
    old = generated_block(path, name)
    start, end = _markers(name)
    body = body if body.endswith("\n") else body + "\n"
    path.write_text(path.read_text().replace(start + "\n" + old + end, start + "\n" + body + end))


# -- records -----------------------------------------------------------------------------------
def load_study_records(folder: str | Path) -> list[dict[str, Any]]:
    """Every record (``*.json``) in ``folder``, sorted by arm and seed; each must name its arm
    and seed under ``study``."""
    folder = Path(folder)
    records = []
    for path in sorted(folder.glob("*.json")):
        record = load_record(path)
        if "study" not in record:
            raise ValueError(f"{path} is a run record without its study's arm and seed")
        record["_path"] = str(path)
        records.append(record)
    return sorted(records, key=lambda r: (r["study"]["arm"], r["study"]["seed"]))


def _correct(record: dict[str, Any]) -> np.ndarray:
    sample = record["per_sample"]
    return unpack_bits(sample["test_correct"], sample["test_images"])


def compare_arms(records: list[dict[str, Any]],
                 comparisons: tuple[tuple[str, str, str], ...] = CIFAR10_COMPARISONS,
                 resamples: int = 10_000) -> list[dict[str, Any]]:
    """The pre-registered comparisons over the seeds both arms have: the seed-level paired t
    (Holm over the comparisons that have a p-value), McNemar per seed, and the image-level
    paired bootstrap (Holm too)."""
    by_arm: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for record in records:
        by_arm[record["study"]["arm"]][record["study"]["seed"]] = record
    rows = []
    for label, treatment, baseline in comparisons:
        seeds = sorted(set(by_arm[treatment]) & set(by_arm[baseline]))
        a = [by_arm[treatment][s]["final"]["test_acc1"] for s in seeds]
        b = [by_arm[baseline][s]["final"]["test_acc1"] for s in seeds]
        row: dict[str, Any] = {"label": label, "treatment": treatment, "baseline": baseline,
                               "seeds": seeds, "seed_level": paired_t(a, b)}
        if seeds:
            ca = np.stack([_correct(by_arm[treatment][s]) for s in seeds])
            cb = np.stack([_correct(by_arm[baseline][s]) for s in seeds])
            row["mcnemar"] = [mcnemar_exact(x, y)["p"] for x, y in zip(ca, cb)]
            row["image_level"] = paired_bootstrap(ca, cb, resamples=resamples)
        rows.append(row)
    for level in ("seed_level", "image_level"):
        have = [r for r in rows if r.get(level) and r[level]["p"] is not None]
        for r, adjusted in zip(have, holm([r[level]["p"] for r in have])):
            r[level]["holm_p"] = adjusted
    for r in rows:
        r["verdict"] = verdict(r["seed_level"])
    return rows


def verdict(seed_level: dict[str, Any]) -> str:
    """The pre-registered reading of one seed-level comparison."""
    p = seed_level.get("holm_p")
    if p is None:
        return "not yet (fewer than 2 paired seeds)"
    mean = seed_level["mean"]
    if p < ALPHA and mean > 0:
        return "better"
    if p < ALPHA and mean < 0:
        return "worse"
    return "cannot tell"


# -- the CIFAR-10 study's block ----------------------------------------------------------------
def _mean_sd(values: list[float], digits: int = 2) -> str:
    """Mean ± sample standard deviation over seeds ("–" for none, the value for one)."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"


def _best_test(record: dict[str, Any]) -> float | None:
    epoch = record["selection"]["best_epoch"]
    if epoch is None:
        return None
    return record["epochs"][epoch - 1]["test_acc1"]


def pilot_markdown(pilots: list[dict[str, Any]]) -> list[str]:
    """One line per pilot run: its final validation top-1 against the pre-registered threshold
    and what the rule then fixes (the test top-1 is shown, and decides nothing)."""
    lines = []
    for pilot in pilots:
        final, epochs = pilot["final"], pilot["final"]["epoch"]
        verdict = (f"at least {PILOT_THRESHOLD} %: {epochs} epochs are the protocol" if
                   final["val_acc1"] >= PILOT_THRESHOLD else f"below {PILOT_THRESHOLD} %: by the "
                   f"pre-registered rule the protocol moves to 60 epochs and every run, the "
                   f"pilot included, is run at 60")
        lines.append(f"**Pilot** (`{pilot['study']['arm']}`, seed {pilot['study']['seed']}, "
                     f"{epochs} epochs, commit {pilot['code'].get('commit', '?')[:10]}): final "
                     f"validation top-1 {final['val_acc1']:.2f} %, {verdict}. (Its test top-1, "
                     f"{final['test_acc1']:.2f} %, decides nothing; TNS "
                     f"{pilot['analysis']['tns']:.4f}; {pilot['train_seconds']:.0f} s of "
                     f"training on a shared 2-core CPU.)")
        lines.append("")
    return lines


def cifar10_study_markdown(records: list[dict[str, Any]], resamples: int = 10_000,
                           pilots: list[dict[str, Any]] | None = None) -> str:
    """The study's results block: the pilot, per-arm summaries, the pre-registered comparisons
    with their verdicts, the stiffness correlation and every run."""
    lines: list[str] = pilot_markdown(pilots or [])
    if not records:
        return "\n".join(lines + ["No run of the study's protocol has finished yet.", ""])
    by_arm: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_arm[record["study"]["arm"]].append(record)
    lines += ["| arm | seeds | test top-1, final (%) | validation top-1, final (%) "
              "| test top-1 at the validation-best epoch (%) | TNS Δ=1 | TNS Δ=h "
              "| training s / run |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]

    for arm in [a for a in CIFAR10_ARMS if a in by_arm] + sorted(set(by_arm) - set(CIFAR10_ARMS)):
        runs = by_arm[arm]
        best = [b for b in (_best_test(r) for r in runs) if b is not None]
        lines.append(
            f"| {arm} | {', '.join(str(r['study']['seed']) for r in runs)} "
            f"| {_mean_sd([r['final']['test_acc1'] for r in runs])} "
            f"| {_mean_sd([r['final']['val_acc1'] for r in runs])} "
            f"| {_mean_sd(best) if best else '–'} "
            f"| {_mean_sd([r['analysis']['tns'] for r in runs], 4)} "
            f"| {_mean_sd([r['analysis']['tns_step'] for r in runs], 4)} "
            f"| {_mean_sd([r['train_seconds'] for r in runs], 0)} |")
    epochs = sorted({r["final"]["epoch"] for r in records})
    lines += ["", "Mean ± sample standard deviation over seeds; test top-1 over the 5,000 test "
              f"images of the final (epoch-{'/'.join(map(str, epochs))}) weights, the study's "
              "primary measure.", ""]
    rows = compare_arms(records, resamples=resamples)
    lines += ["| comparison | paired seeds | Δ top-1 (points) | 95 % t interval | p (t) "
              "| Holm p | d_z | Δ / seed sd | image bootstrap Δ [95 %] | bootstrap Holm p "
              "| McNemar p per seed | verdict |",
              "|---|---:|---:|---|---:|---:|---:|---:|---|---:|---|---|"]
    for row in rows:
        s = row["seed_level"]
        image = row.get("image_level")
        interval = (f"[{_fmt(s['low'], signed=True)}, {_fmt(s['high'], signed=True)}]"
                    if s["low"] is not None else "–")
        boot = (f"{_fmt(image['mean'], signed=True)} [{_fmt(image['low'], signed=True)}, "
                f"{_fmt(image['high'], signed=True)}]" if image else "–")
        mcnemar = ", ".join(_p(p) for p in row.get("mcnemar", [])) or "–"
        lines.append(
            f"| {row['label']} | {len(row['seeds'])} | {_fmt(s['mean'], signed=True)} "
            f"| {interval} | {_p(s['p'])} | {_p(s.get('holm_p'))} | {_fmt(s['d_z'])} "
            f"| {_fmt(s['d_seed'])} | {boot} | {_p(image.get('holm_p') if image else None)} "
            f"| {mcnemar} | {row['verdict']} |")
    control = rows[0]
    lines += ["", "**Positive control**: " + {
        "better": "passed: SE beats the plain network (Holm p < 0.05), so the study can detect "
                  "an attention module's gain at this scale.",
        "worse": "failed: SE is worse than the plain network; the pipeline or the regime is "
                 "suspect, and StepNet's differences are not read.",
        "cannot tell": "not passed (SE − none is not significant after Holm); StepNet's "
                       "differences are not read until it passes or the seeds run out.",
    }.get(control["verdict"], "not judged yet: " + control["verdict"] + "."), ""]
    arms = [a for a in CIFAR10_ARMS if a in by_arm]
    common = sorted(set.intersection(*(set(r["study"]["seed"] for r in by_arm[a])
                                       for a in arms))) if arms else []
    if len(arms) == 3 and common:
        pick = {a: {r["study"]["seed"]: r for r in by_arm[a]} for a in arms}
        acc = np.array([[pick[a][s]["final"]["test_acc1"] for s in common] for a in arms])
        for step, key in (("Δ=1", "tns"), ("Δ=h", "tns_step")):
            tns = np.array([[pick[a][s]["analysis"][key] for s in common] for a in arms])
            rho = spearman_of_means(tns, acc)
            interval = (f"[{_fmt(rho['low'])}, {_fmt(rho['high'])}]" if rho["low"] is not None
                        else "no interval")
            lines.append(f"Spearman ρ of TNS ({step}) against test top-1 over the 3 arm means "
                         f"({len(common)} paired seeds): {_fmt(rho['rho'])}, seed-bootstrap "
                         f"95 % {interval} (the paper: positive).")
        lines.append("")
    lines += ["<details><summary>Every run</summary>", "",
              "| arm | seed | epochs | val top-1 | test top-1 | best epoch (val) | test at best "
              "| TNS Δ=1 | TNS Δ=h | training s | device | commit |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in records:
        f = r["final"]
        lines.append(
            f"| {r['study']['arm']} | {r['study']['seed']} | {f['epoch']} "
            f"| {f['val_acc1']:.2f} | {f['test_acc1']:.2f} | {r['selection']['best_epoch']} "
            f"| {_fmt(_best_test(r))} | {r['analysis']['tns']:.4f} "
            f"| {r['analysis']['tns_step']:.4f} | {r['train_seconds']:.0f} | {r['device']} "
            f"| {r['code'].get('commit', '?')[:10]} |")
    lines += ["", "</details>", ""]
    return "\n".join(lines)


# -- paper 2's Sudoku study ----------------------------------------------------------------------
# The study's variants, in table order: the engine settings each changes from the recipe.
SUDOKU_VARIANTS: dict[str, dict[str, Any]] = {
    "post, layernorm": dict(itrsa_preset="paper2", loop_norm="layernorm"),
    "post, rmsnorm (paper2)": dict(itrsa_preset="paper2", loop_norm="rmsnorm"),
    "pre, layernorm": dict(itrsa_preset="paper2", loop_norm="layernorm", placement="pre"),
    "pre, layernorm (akorn)": dict(itrsa_preset="akorn", loop_norm="layernorm"),
    "no norm": dict(itrsa_preset="paper2", placement="none", loop_norm="none"),
    "post, layernorm + spectral reg.": dict(itrsa_preset="paper2", loop_norm="layernorm",
                                            spectral_weight=1e-4),
    "pre, layernorm + spectral reg.": dict(itrsa_preset="paper2", loop_norm="layernorm",
                                           placement="pre", spectral_weight=1e-4),
    "energy core": dict(core="energy"),
    "AKOrN": dict(core="akorn"),
}
# the ItrSA loops (no energy of their own): the ones the pseudo-energy is for
PSEUDO_ENERGY_VARIANTS = ("post, layernorm", "post, rmsnorm (paper2)", "pre, layernorm",
                          "pre, layernorm (akorn)", "no norm", "post, layernorm + spectral reg.",
                          "pre, layernorm + spectral reg.")
SOLVES = 0.5   # a seed "solves" the task when at least this share of test boards is right


def _by_variant(rows: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """Finished (not diverged) runs by variant and seed, variants in table order."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for variant in [v for v in SUDOKU_VARIANTS if any(r["variant"] == v for r in rows)]:
        out[variant] = {r["seed"]: r for r in rows
                        if r["variant"] == variant and "diverged" not in r}
    return out


def _board(row: dict[str, Any], loops: int, split: str = "test") -> float:
    return row["accuracy"][split][str(loops)]["board"]


def _verdict(low: float | None, high: float | None, sign: int) -> str:
    """Agrees when the interval excludes the opposite of the claimed direction ``sign``
    (+1: the difference is positive), disagrees when it excludes the claim, else cannot
    tell."""
    if low is None or high is None:
        return "cannot tell (too few seeds)"
    if (low > 0 if sign > 0 else high < 0):
        return "agrees"
    if (high < 0 if sign > 0 else low > 0):
        return "disagrees"
    return "cannot tell"


def sudoku_claims(rows: list[dict[str, Any]], loops: list[int]) -> list[dict[str, Any]]:
    """Paper 2's claims checked on the study's runs, each a paired comparison over the seeds
    two variants share (a seed draws the same puzzles in every variant): the claim, the
    comparison, the mean difference with its 95 % t interval, and the reading (``agrees``
    only where the interval excludes the opposite)."""
    runs = _by_variant(rows)
    trained, beyond = loops[0], loops[-1]
    claims: list[dict[str, Any]] = []

    def compare(claim: str, label: str, a: str, b: str, value: Any, sign: int) -> None:
        if a not in runs or b not in runs:
            return
        seeds = sorted(set(runs[a]) & set(runs[b]))
        if not seeds:
            return
        diff = paired_t([value(runs[a][s]) for s in seeds], [value(runs[b][s]) for s in seeds])
        claims.append({"claim": claim, "comparison": label, "seeds": seeds, **diff,
                       "reading": _verdict(diff["low"], diff["high"], sign)})

    for norm in ("post, layernorm", "pre, layernorm"):
        compare("normalisation brings the dynamics close to a critical state (top exponent "
                "nearer 0)", f"\\|λ₁\\|: {norm} − no norm", norm, "no norm",
                lambda r: abs(r["max_exponent"]), -1)
    for norm in ("post, layernorm", "pre, layernorm"):
        for t in (trained, beyond):
            compare("normalisation improves inference", f"boards at T={t}: {norm} − no norm",
                    norm, "no norm", lambda r, t=t: _board(r, t), +1)
    for base in ("post, layernorm", "pre, layernorm"):
        reg = f"{base} + spectral reg."
        for t in (trained, beyond):
            compare("the Jacobian regulariser improves training",
                    f"boards at T={t}: {reg} − {base}", reg, base,
                    lambda r, t=t: _board(r, t), +1)
    voting = [r for v in PSEUDO_ENERGY_VARIANTS if v in runs for r in runs[v].values()
              if r.get("energy_voting")]
    if voting:
        diff = paired_t([r["energy_voting"]["board"] for r in voting],
                        [r["energy_voting"]["single_run_board"] for r in voting])
        claims.append({"claim": "the pseudo-energy monitors inference (the lowest-energy of "
                                "several starts is the better answer)",
                       "comparison": f"boards: energy voting − one run (ItrSA runs, "
                                     f"{voting[0]['energy_voting']['votes']} starts)",
                       "seeds": [r["seed"] for r in voting], **diff,
                       "reading": _verdict(diff["low"], diff["high"], +1)})
    return claims


def _exact_permutation_p(x: np.ndarray, y: np.ndarray) -> float | None:
    """Two-sided p of Spearman's rho between ``x`` and ``y`` by every pairing (exact up to 8
    points)."""
    from scipy import stats as scipy_stats

    if len(x) < 3:
        return None
    result = scipy_stats.permutation_test(
        (x,), lambda a: scipy_stats.spearmanr(a, y).statistic, permutation_type="pairings",
        n_resamples=np.inf if len(x) <= 8 else 20_000, alternative="two-sided", random_state=0)
    return float(result.pvalue)


def sudoku_correlations(rows: list[dict[str, Any]], loops: list[int]) -> list[str]:
    """Exponent against accuracy: over every run (which counts seeds of one variant, often
    near-duplicates, as independent), and over the variant means, with a seed-bootstrap
    interval (seeds paired across variants) and an exact permutation p over the means."""
    from scipy import stats as scipy_stats

    runs = _by_variant(rows)
    done = [r for seeds in runs.values() for r in seeds.values()]
    if len(done) < 3:
        return ["(fewer than 3 runs: no rank correlation)"]
    t = loops[0]
    lines = []
    for metric in ("board", "cell"):
        rho, p = scipy_stats.spearmanr([r["max_exponent"] for r in done],
                                       [r["accuracy"]["test"][str(t)][metric] for r in done])
        lines.append(f"Over every run ({len(done)}; seeds of one variant counted as independent, "
                     f"which they are not): Spearman ρ of the largest exponent with {metric} "
                     f"accuracy at T={t} = {rho:+.2f} (p = {p:.2g}).")
    common = sorted(set.intersection(*(set(s) for s in runs.values())))
    if len(runs) >= 3 and common:
        for metric in ("board", "cell"):
            x = np.array([[runs[v][s]["max_exponent"] for s in common] for v in runs])
            y = np.array([[runs[v][s]["accuracy"]["test"][str(t)][metric] for s in common]
                          for v in runs])
            rho = spearman_of_means(x, y)
            interval = (f"[{rho['low']:+.2f}, {rho['high']:+.2f}]" if rho["low"] is not None
                        else "no interval")
            p = _exact_permutation_p(x.mean(1), y.mean(1))
            lines.append(f"Over the {len(runs)} variant means ({len(common)} seeds each): ρ of "
                         f"the largest exponent with {metric} accuracy at T={t} = "
                         f"{_fmt(rho['rho'], signed=True)}, seed-bootstrap 95 % {interval}, "
                         f"exact permutation p = {_p(p)}.")
    return lines


def sudoku_pilot_markdown(rows: list[dict[str, Any]], loops: list[int]) -> str:
    """The 8-epoch pilot's block of docs/dynamics.md: one row per recorded run, boards at each
    of ``loops``, cells at the first, the largest exponent."""
    lines = ["| variant (seed) | boards at " + " / ".join(map(str, loops)) + " loops | cells at "
             f"{loops[0]} | largest exponent |", "|---|---|---|---|"]
    for row in rows:
        test = row["accuracy"]["test"]
        boards = " / ".join(f"{test[str(t)]['board']:.3f}" for t in loops)
        lines.append(f"| {row['variant']} ({row['seed']}) | {boards} | "
                     f"{test[str(loops[0])]['cell']:.3f} | {row['max_exponent']:+.3f} |")
    return "\n".join(lines) + "\n"


def sudoku_study_markdown(rows: list[dict[str, Any]], loops: list[int]) -> str:
    """The Sudoku study's results block: accuracy and dynamics per variant (mean ± sd over
    seeds), how many seeds solve the task, every run, the correlations and paper 2's claims."""
    runs = _by_variant(rows)
    accuracy = (["variant", "seeds"] + [f"board T={t}" for t in loops] + [f"cell T={loops[0]}"]
                + [f"hard board T={t}" for t in loops]
                + [f"seeds with ≥ {SOLVES:.0%} boards at T={loops[0]}"])
    dynamics = ["variant", "max exponent", "complex share", "mean \\|arg λ\\| (rad)",
                "energy voting", "single run", "train min"]
    first = ["| " + " | ".join(accuracy) + " |", "|" + "---|" * len(accuracy)]
    second = ["| " + " | ".join(dynamics) + " |", "|" + "---|" * len(dynamics)]
    for variant, seeds in runs.items():
        mine = list(seeds.values())
        diverged = sum(1 for r in rows if r["variant"] == variant and "diverged" in r)
        name = variant + (f" ({diverged} diverged)" if diverged else "")
        at = lambda split, t, metric: _mean_sd(  # noqa: E731
            [r["accuracy"][split][str(t)][metric] for r in mine], 3)
        solved = sum(_board(r, loops[0]) >= SOLVES for r in mine)
        cells = [name, str(len(mine))] + [at("test", t, "board") for t in loops]
        cells += [at("test", loops[0], "cell")] + [at("hard", t, "board") for t in loops]
        cells += [f"{solved} of {len(mine) + diverged}"]
        first.append("| " + " | ".join(cells) + " |")
        voted = [r["energy_voting"] for r in mine if r.get("energy_voting")]
        cells = [name, _mean_sd([r["max_exponent"] for r in mine], 3),
                 _mean_sd([r["imaginary"]["complex_share"] for r in mine], 3),
                 _mean_sd([r["imaginary"]["mean_abs_angle"] for r in mine], 3),
                 _mean_sd([v["board"] for v in voted], 3),
                 _mean_sd([v["single_run_board"] for v in voted], 3),
                 f"{np.mean([r['seconds'] for r in mine]) / 60:.0f}" if mine else "–"]
        second.append("| " + " | ".join(cells) + " |")
    every = ["| run | boards " + " / ".join(map(str, loops)) + " | cells " + str(loops[0])
             + " | exponent | mean \\|arg λ\\| | voting / single run |",
             "|---|---|---|---|---|---|"]
    for variant, seeds in runs.items():
        for seed, r in sorted(seeds.items()):
            vote = r.get("energy_voting") or {}
            every.append(
                f"| {variant}, seed {seed} | "
                + " / ".join(f"{_board(r, t):.3f}" for t in loops)
                + f" | {r['accuracy']['test'][str(loops[0])]['cell']:.3f} "
                f"| {r['max_exponent']:+.3f} | {r['imaginary']['mean_abs_angle']:.2f} "
                f"| {vote.get('board', float('nan')):.3f} / "
                f"{vote.get('single_run_board', float('nan')):.3f} |")
    claims = ["| paper 2's claim | comparison (paired seeds) | seeds | mean difference "
              "| 95 % t interval | reading |", "|---|---|---:|---:|---|---|"]
    for c in sudoku_claims(rows, loops):
        interval = (f"[{c['low']:+.3f}, {c['high']:+.3f}]" if c["low"] is not None else "–")
        claims.append(f"| {c['claim']} | {c['comparison']} | {len(c['seeds'])} "
                      f"| {c['mean']:+.3f} | {interval} | {c['reading']} |")
    return "\n".join(
        first + [""] + second + ["", "Mean ± sample standard deviation over seeds. Every run:",
                                 ""] + every + [""] + sudoku_correlations(rows, loops)
        + ["", "Paper 2's claims on these runs (`agrees` only where the 95 % interval excludes "
               "the opposite):", ""] + claims) + "\n"


def sudoku_recipe_seeds_markdown(results: list[dict[str, Any]]) -> str:
    """How many seeds of the ``sudoku-cpu`` recipe solve the task: from each seed's committed
    ``result.json`` (the final epoch's metrics, nothing selected)."""
    boards = [r["metrics"]["test_board"] for r in results]
    solved = sum(b >= SOLVES for b in boards)
    shares = " and ".join(f"{b:.1%}" for b in boards)
    return (f"{solved} of {len(boards)} seeds solve at least {SOLVES:.0%} of the test boards at "
            f"the final epoch ({shares}; `docs/figures/sudoku_cpu/`).\n")


# -- running a study's runs ----------------------------------------------------------------------
STIFFNESS_INPUTS = 1000


def run_stiffness(run: str | Path, config: Any, device: str = "cpu",
                  inputs: int = STIFFNESS_INPUTS) -> dict[str, Any]:
    """TNS (Delta_t = 1 and Delta_t = h) of a run's final weights (``checkpoints/last.pt``)
    over ``inputs`` class-stratified test images, the first block of each stage excluded (as
    the paper)."""
    from torch.utils.data import DataLoader

    from .data import build_dataset, stratified_subset
    from .engine import model_from_checkpoint
    from .fast import fuse_as
    from .stiffness.metrics import total_neural_stiffness
    from .stiffness.recorder import record_trajectories

    test = build_dataset(config.dataset, config.data_dir, train=False, augment=False)
    test = stratified_subset(test, inputs)
    model = model_from_checkpoint(Path(run) / "checkpoints" / "last.pt", task="classification")
    model = fuse_as(model.to(device), config.fuse, device)   # as the run was evaluated
    trajectory = record_trajectories(model, DataLoader(test, batch_size=250),
                                     device=device, exclude="first", progress=False)
    return {"tns": float(total_neural_stiffness(trajectory.nsi_for("1"), trajectory.stage)),
            "tns_step": float(total_neural_stiffness(trajectory.nsi_for("h"),
                                                     trajectory.stage)),
            "stiffness_inputs": len(test)}


def train_and_record(config: Any, target: str | Path, study: dict[str, Any],
                     device: str = "cpu") -> dict[str, Any]:
    """Train (or resume) the run of ``config``, then write its study record to ``target``
    (atomically): the engine's run record, ``study`` (name, arm, seed, ...), the final
    weights' TNS (``analysis``) and the checkpoint's epoch. A finished run is not trained
    again; returns the record."""
    import json

    from .atomic import atomic_write
    from .engine import Trainer, load_checkpoint
    from .engine.records import load_record

    run = Path(config.output)
    trainer = Trainer(config, progress=False)
    last = run / "checkpoints" / "last.pt"
    if last.is_file():
        trainer.resume()
    if trainer.start_epoch < config.epochs:
        trainer.fit()
    elif not (run / "record.json").is_file():
        trainer.write_results()
    record = load_record(run)
    record["study"] = dict(study)
    record["analysis"] = run_stiffness(run, config, device)
    record["checkpoint_epoch"] = load_checkpoint(last, mmap=True)["epoch"] + 1
    text = (json.dumps(record, indent=1, allow_nan=False) + "\n").encode()
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda handle: handle.write(text))
    return record


# -- the ViT placement study ---------------------------------------------------------------------
def choose_on_validation(records: list[dict[str, Any]], candidates: list[str],
                         seeds: tuple[int, ...]) -> str:
    """The candidate arm with the highest mean final validation top-1 over ``seeds`` (every
    one must be recorded: a choice is made once, on the whole selection phase)."""
    found = {(r["study"]["arm"], r["study"]["seed"]): r for r in records}
    missing = [(a, s) for a in candidates for s in seeds if (a, s) not in found]
    if missing:
        raise ValueError(f"the selection phase is not complete: no record for "
                         f"{', '.join(f'{a} seed {s}' for a, s in missing)}")
    means = {a: float(np.mean([found[a, s]["final"]["val_acc1"] for s in seeds]))
             for a in candidates}
    return max(candidates, key=lambda a: (means[a], -candidates.index(a)))


def vit_study_markdown(select: list[dict[str, Any]], confirm: list[dict[str, Any]],
                       arms: list[str], seeds: tuple[int, ...]) -> str:
    """The ViT study's block: the selection phase per arm (validation and test top-1, TNS),
    the placement validation chose, and the confirmation's paired comparison on fresh seeds
    (t interval over seeds, McNemar per seed) with its verdict."""
    lines: list[str] = []
    if not select:
        return "No run of the study's selection phase has finished yet.\n"
    by_arm: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in select:
        by_arm[record["study"]["arm"]].append(record)

    lines += ["Selection phase (the choice reads the validation column only):", "",
              "| arm | seeds | validation top-1 (%) | test top-1 (%) | TNS Δ=1 | TNS Δ=h "
              "| training s / run |", "|---|---|---:|---:|---:|---:|---:|"]
    for arm in [a for a in arms if a in by_arm]:
        runs = sorted(by_arm[arm], key=lambda r: r["study"]["seed"])
        lines.append(
            f"| {arm} | {', '.join(str(r['study']['seed']) for r in runs)} "
            f"| {_mean_sd([r['final']['val_acc1'] for r in runs])} "
            f"| {_mean_sd([r['final']['test_acc1'] for r in runs])} "
            f"| {_mean_sd([r['analysis']['tns'] for r in runs], 3)} "
            f"| {_mean_sd([r['analysis']['tns_step'] for r in runs], 3)} "
            f"| {_mean_sd([r['train_seconds'] for r in runs], 0)} |")
    candidates = [a for a in arms if a != "vit"]
    try:
        chosen = choose_on_validation(select, candidates, seeds)
    except ValueError as error:
        return "\n".join(lines + ["", f"No choice yet: {error}.", ""])
    lines += ["", f"Validation chooses `step_branches=\"{chosen}\"`.", ""]
    pairs = {(r["study"]["arm"], r["study"]["seed"]): r for r in confirm}
    common = sorted(s for (a, s) in pairs if a == chosen and ("vit", s) in pairs)
    if not common:
        return "\n".join(lines + ["The confirmation on fresh seeds has not finished a pair "
                                  "yet.", ""])
    treated = [pairs[chosen, s] for s in common]
    plain = [pairs["vit", s] for s in common]
    diff = paired_t([r["final"]["test_acc1"] for r in treated],
                    [r["final"]["test_acc1"] for r in plain])
    mcnemar = [mcnemar_exact(_correct(a), _correct(b))["p"] for a, b in zip(treated, plain)]
    interval = (f"[{_fmt(diff['low'], signed=True)}, {_fmt(diff['high'], signed=True)}]"
                if diff["low"] is not None else "–")
    reading = verdict({**diff, "holm_p": diff["p"]})   # one comparison: Holm's p is p
    lines += [f"Confirmation on fresh seeds (test top-1, {chosen} − plain ViT, paired):", "",
              "| seeds | plain ViT (%) | ViT + StepNet (%) | Δ (points) | 95 % t interval "
              "| p (t) | McNemar p per seed | verdict |",
              "|---|---:|---:|---:|---|---:|---|---|",
              f"| {', '.join(map(str, common))} "
              f"| {_mean_sd([r['final']['test_acc1'] for r in plain])} "
              f"| {_mean_sd([r['final']['test_acc1'] for r in treated])} "
              f"| {_fmt(diff['mean'], signed=True)} | {interval} | {_p(diff['p'])} "
              f"| {', '.join(_p(p) for p in mcnemar)} | {reading} |", ""]
    return "\n".join(lines)


def add_study_arguments(train: Any, report: Any, *, epochs: int, data: Path, val_split: int,
                        runs: Path, records: Path, doc: Path, parallel: int,
                        threads: int) -> None:
    """The options every study script's ``train`` and ``analyze`` commands share (argparse
    sub-parsers), with this study's defaults."""
    train.add_argument("--epochs", type=int, default=epochs)
    train.add_argument("--data-dir", type=Path, default=data)
    train.add_argument("--val-split", type=int, default=val_split,
                       help=f"the protocol's {val_split:,}; smaller only for smoke tests on "
                            f"small trees")
    train.add_argument("--runs", type=Path, default=runs)
    train.add_argument("--records", type=Path, default=records)
    train.add_argument("--device", default="cpu")
    train.add_argument("--parallel", type=int, default=parallel,
                       help="runs trained side by side")
    train.add_argument("--threads", type=int, default=threads, help="torch threads per run")
    report.add_argument("--records", type=Path, default=records)
    report.add_argument("--doc", type=Path, default=doc)
    report.add_argument("--write", action="store_true",
                        help="replace the generated block of --doc instead of printing")


def run_study_jobs(fn: Any, jobs: list[tuple[Any, ...]], args: Any) -> None:
    """``fn(*job, args)`` for every job, ``args.parallel`` side by side (in this process when
    1); a failed job is reported and the others go on, then the script exits non-zero naming
    the failures (finished records are kept: rerunning resumes)."""
    if args.parallel <= 1:
        for job in jobs:
            print(fn(*job, args), flush=True)
        return
    from .engine.distributed import run_side_by_side

    failed = run_side_by_side(fn, jobs, args.parallel, args)
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed: {failed}; rerun (records are kept)")


def publish(text: str, args: Any, block: str) -> None:
    """With ``args.write``, ``text`` replaces generated block ``block`` of ``args.doc``;
    otherwise it is printed."""
    if args.write:
        replace_generated_block(args.doc, block, text)
        print(f"wrote the generated block of {args.doc}")
    else:
        print(text)


# -- the sudoku-cpu recipe's runs ----------------------------------------------------------------
SUDOKU_CPU_EPOCHS = (1, 4, 6, 8, 10, 16, 20, 31, 40)


def sudoku_cpu_markdown(history: list[dict[str, Any]], result: dict[str, Any],
                        second: dict[str, Any], analysis: dict[str, Any]) -> str:
    """The ``sudoku-cpu`` recipe's tables, from its committed files (docs/figures/sudoku_cpu/):
    the training curve at ``SUDOKU_CPU_EPOCHS`` (``metrics.jsonl``), accuracy against test-time
    loops of the final weights for both seeds (``result.json``), and the dynamics analysis
    (``analysis.json``, with the epoch whose weights it read)."""
    lines = ["| epoch | minutes | train loss | test cell | test board | EMA cell | EMA board |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    minutes = np.cumsum([r["seconds"] for r in history]) / 60
    for row, elapsed in zip(history, minutes):
        if row["epoch"] in SUDOKU_CPU_EPOCHS:
            lines.append(f"| {row['epoch']} | {elapsed:.1f} | {row['train_loss']:.4g} "
                         f"| {row['test_cell']:.3f} | {row['test_board']:.3g} "
                         f"| {row['ema_test_cell']:.3f} | {row['ema_test_board']:.3g} |")
    loops = sorted(result["accuracy"]["test"], key=int)
    lines += ["", "Final weights (EMA, last epoch), board / cell accuracy against the loops run "
              "at test time:", "",
              "| seed | puzzles | " + " | ".join(loops) + " |",
              "|---|---|" + "---|" * len(loops)]
    for seed, run in ((0, result), (1, second)):
        for split, label in (("test", "in distribution (31-42 givens)"),
                             ("hard", "harder (24-30 givens)")):
            cells = [f"{run['accuracy'][split][t]['board']:.3f} / "
                     f"{run['accuracy'][split][t]['cell']:.3f}" for t in loops]
            lines.append(f"| {seed} | {label} | " + " | ".join(cells) + " |")
    top = np.array([e[0] for e in analysis["exponents"]])
    modulus = [max(abs(complex(*v)) for v in board) for board in analysis["eigenvalues"]]
    falling = sum(all(b <= a for a, b in zip(trace, trace[1:analysis["loops"] + 1]))
                  for trace in analysis["energy"])
    imaginary, voting = analysis["imaginary"], analysis["energy_voting"]
    at = analysis["accuracy_vs_loops"]
    few = ", ".join(f"{at[t]['board']:.3g} / {at[t]['cell']:.2f}" for t in ("1", "2", "4", "8"))
    many = ", ".join(f"{at[t]['board']:.3f} / {at[t]['cell']:.3f}" for t in ("16", "32", "64"))
    lines += ["", f"`stepnet dynamics analyze` of seed 0 ({analysis['boards']} test boards, "
              f"{len(analysis['exponents'][0])} exponents and eigenvalues each):", "",
              "| quantity | value |", "|---|---|",
              f"| largest finite-horizon Lyapunov exponent over the {analysis['loops']} trained "
              f"loops | {analysis['max_exponent_mean']:+.3f} ± {analysis['max_exponent_std']:.3f}"
              f" (range {top.min():+.2f} to {top.max():+.2f}; positive on "
              f"{int((top > 0).sum())} of {len(top)} boards) |",
              f"| largest \\|λ\\| of the one-step Jacobian at the final state | "
              f"{np.mean(modulus):.2f} on average ({min(modulus):.2f} to {max(modulus):.2f}) |",
              f"| top eigenvalues: complex share, mean / max \\|Im λ\\|, mean \\|arg λ\\| | "
              f"{imaginary['complex_share']:.0%}, {imaginary['mean_abs_imag']:.2f} / "
              f"{imaginary['max_abs_imag']:.2f}, {imaginary['mean_abs_angle']:.2f} rad |",
              f"| contribution index (top 2 % eigenspace of J + Jᵀ, "
              f"{len(analysis['contribution_index'])} boards) | "
              f"{analysis['contribution_index_mean']:.3f} |",
              f"| board / cell accuracy at 1, 2, 4, 8 loops | {few} |",
              f"| at 16 (trained), 32, 64 loops | {many} |",
              f"| energy voting, {voting['votes']} initial states, {voting['puzzles']} puzzles | "
              f"{voting['board']:.3f} of boards, against {voting['single_run_board']:.3f} for "
              f"the single run from C |",
              f"| pseudo-energy non-increasing along the {analysis['loops']} loops | on "
              f"{falling} of {len(analysis['energy'])} boards |"]
    return "\n".join(lines) + "\n"
