"""The documentation claims only what exists: no references to a design document outside the
repository, and a README layout that names every package folder."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


MARK = "DESIGN " + "\u00a7"   # written apart so this file does not match itself


def test_no_references_to_an_outside_design_document():
    offenders = [str(p.relative_to(ROOT)) for folder in ("src", "docs", "tests", "benchmarks")
                 for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md")
                 and MARK in p.read_text(encoding="utf-8")]
    offenders += ["README.md"] if MARK in (ROOT / "README.md").read_text() else []
    assert not offenders, offenders
    assert (ROOT / "docs" / "design.md").is_file()


def test_readme_layout_names_every_package_folder():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    package = ROOT / "src" / "stepnet"
    folders = sorted(p.relative_to(ROOT).as_posix() + "/" for p in package.rglob("*")
                     if p.is_dir() and p.name != "__pycache__")
    missing = [f for f in folders if f"`{f}`" not in layout]
    assert not missing, missing


def test_docs_link_to_existing_files():
    import re

    broken = []
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.name} -> {target}")
    assert not broken, broken
