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

    def mean_sd(values: list[float], digits: int = 2) -> str:
        if len(values) == 1:
            return f"{values[0]:.{digits}f}"
        return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"

    for arm in [a for a in CIFAR10_ARMS if a in by_arm] + sorted(set(by_arm) - set(CIFAR10_ARMS)):
        runs = by_arm[arm]
        best = [b for b in (_best_test(r) for r in runs) if b is not None]
        lines.append(
            f"| {arm} | {', '.join(str(r['study']['seed']) for r in runs)} "
            f"| {mean_sd([r['final']['test_acc1'] for r in runs])} "
            f"| {mean_sd([r['final']['val_acc1'] for r in runs])} "
            f"| {mean_sd(best) if best else '–'} "
            f"| {mean_sd([r['analysis']['tns'] for r in runs], 4)} "
            f"| {mean_sd([r['analysis']['tns_step'] for r in runs], 4)} "
            f"| {mean_sd([r['train_seconds'] for r in runs], 0)} |")
    lines += ["", "Mean ± sample standard deviation over seeds; test top-1 over the 5,000 test "
              "images of the final (epoch-40) weights, the study's primary measure.", ""]
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
