"""Every figure in the README and docs/ comes from a committed record or says it is quoted.

A *figure* is a decimal number (``88.34``), a percentage (``57 %``), a number after ``±`` or a
duration or throughput (``44 s``, ``6 min``, ``5 im/s``). Each one in prose or a table must
restate (as written, or rounded to fewer digits) a figure of a generated block of its page
(``<!-- generated: NAME -->``, rewritten from committed records by a script and checked against
them by a test), or stand on a line that says where it comes from: ``quoted`` (from a paper or
an issue) or ``target`` (a requirement, not a measurement). Not checked: code (inline or
fenced), block quotes, settings named as such (``lr 0.1``, ``momentum 0.9``, ``α = 0.05``,
``95 % interval``) and references (Sec. 2.4, Eq. 32, Prop. 4.1, Table 4, torch 2.14.1).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"<!-- generated: (\S+) -->\n(.*?)<!-- end generated: \1 -->", re.S)
FIGURE = re.compile(r"±\s?\d+(?:\.\d+)?|(?<![\w.])\d+(?:\.\d+)?\s?%|(?<![\w.\-/])\d+\.\d+(?![\w.])"
                    r"|(?<![\w.\-])\d+(?:,\d+)?\s?(?:ms|s|seconds|min|minutes|hours|im/s|img/s)"
                    r"(?![\w/])")
REFERENCE = re.compile(r"(?:Sec\.|Section|Sections|Eq\.|Eqs\.|Prop\.|Table|Tables|Fig\.|Figs\."
                       r"|Appendix|Theorem|Lemma|Algorithm|torch|torchvision|timm|Python|python3?)"
                       r"\s?\(?\d+(?:\.\d+)*(?:\s?[-–/,]\s?\d+(?:\.\d+)*)*")
# settings, by the word before them (a learning rate, a decay, a significance level, ...)
SETTING = re.compile(r"(?:\blr|SGD|AdamW|momentum|\bwd|weight decay|clip|clipping at|smoothing|EMA"
                     r"|decay|α\s?=|\bp\s?<|×|M1\s?=|rather than)\s?\d+(?:\.\d+)?"
                     r"|\d+\s?% (?:t |confidence |bootstrap )?intervals?")
MARKERS = ("quoted", "target")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, text) of the lines a reader takes as prose or tables: generated blocks,
    code (fenced and inline), block quotes, HTML comments and references removed."""
    spans = [(m.start(), m.end()) for m in BLOCK.finditer(text)]
    lines, fenced, offset = [], False, 0
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        start, offset = offset, offset + len(line)
        if any(a <= start < b for a, b in spans):
            continue
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced or line.lstrip().startswith(">"):
            continue
        line = re.sub(r"`[^`]*`", " ", line)
        line = re.sub(r"<!--.*?-->", " ", line)
        line = re.sub(r"\]\([^)]*\)", "]", line)
        lines.append((number, SETTING.sub(" ", REFERENCE.sub(" ", line))))
    return lines


def generated_figures(pages: list[Path]) -> set[float]:
    figures: set[float] = set()
    for page in pages:
        for match in BLOCK.finditer(page.read_text()):
            figures.update(float(f) for f in re.findall(r"\d+(?:\.\d+)?", match.group(2)))
    return figures


def is_generated(figure: str, known: set[float]) -> bool:
    """Whether ``figure`` restates a generated one, rounded to its own precision (``78 %`` or
    ``0.78`` for a generated ``0.783``, ``0.25`` for ``0.253``)."""
    text = re.search(r"\d+(?:\.\d+)?", figure).group(0)
    value, decimals = float(text), len(text.partition(".")[2])
    scales = (1, 100) if "%" in figure else (1,)
    return any(round(v * scale, decimals) == value for v in known for scale in scales)


def unsourced_figures() -> list[str]:
    """The figures of each page that none of its own generated blocks holds (the README, the
    front door, may restate any page's)."""
    offenders = []
    for page in PAGES:
        known = generated_figures(PAGES if page.name == "README.md" else [page])
        for number, line in prose_lines(page.read_text()):
            if any(marker in line.lower() for marker in MARKERS):
                continue
            for figure in FIGURE.findall(line):
                if not is_generated(figure, known):
                    offenders.append(f"{page.relative_to(ROOT)}:{number}: {figure.strip()} "
                                     f"in: {line.strip()[:100]}")
    return offenders


def test_every_figure_in_the_docs_is_generated_or_marked_quoted():
    offenders = unsourced_figures()
    assert not offenders, (f"{len(offenders)} figure(s) neither in a generated block nor on a "
                           "line marked quoted / target:\n" + "\n".join(offenders))


def test_the_check_catches_an_unsourced_figure(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("<!-- generated: t -->\n| a | 88.34 |\n<!-- end generated: t -->\n"
                    "We measured 88.34 % and 91.20 ± 0.4; `lr 0.1`; Sec. 2.4.\n"
                    "A run took 44 s.\n"
                    "The paper reports 93.5 % (quoted).\n> a quote with 12.5 %\n"
                    "```\nprint(0.5)\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "PAGES", [page])
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert [o.split(" in:")[0] for o in unsourced_figures()] == [
        "page.md:4: 91.20", "page.md:4: ± 0.4", "page.md:5: 44 s"]
