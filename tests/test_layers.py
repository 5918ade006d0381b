"""Package layers: no package imports one above it (top-level or inside a function), so no
cycle between packages can form. The arrows still listed in KNOWN_UPWARD are debts to remove
(the readable-model redesign), not exceptions to add to."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "stepnet"
# lower numbers may be imported by higher ones, never the reverse
LAYERS = {"atomic": 0, "torch_internals": 0, "checkpoint_file": 0, "linalg": 0, "stats": 0, "data": 0, "weights": 0,
          "attention": 1, "models": 2, "fast": 3, "stiffness": 3, "dynamics": 3, "engine": 4,
          "comparison": 5, "studies": 5, "cli": 6, "_timm": 6, "__init__": 7, "__main__": 7}
KNOWN_UPWARD: set[tuple[str, str]] = set()


def package_of(path: Path, root: Path = ROOT) -> str:
    return path.relative_to(root).parts[0].removesuffix(".py")


def imported_packages(path: Path, root: Path = ROOT) -> set[str]:
    """The stepnet packages a module imports, at any depth of its code."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if path.name == "__init__.py":
        parts = parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[:len(parts) - node.level + (path.name == "__init__.py")]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            bits = name.split(".")
            if bits[0] == "stepnet" and len(bits) > 1 and (
                    (root / bits[1]).is_dir() or (root / f"{bits[1]}.py").is_file()):
                found.add(bits[1])
    return found


def arrows(root: Path = ROOT) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        source = package_of(path, root)
        for target in imported_packages(path, root) - {source}:
            out.setdefault((source, target), []).append(str(path.relative_to(root)))
    return out


def test_every_package_has_a_layer():
    packages = {package_of(p) for p in ROOT.rglob("*.py")}
    assert packages <= set(LAYERS), sorted(packages - set(LAYERS))


def test_no_package_imports_a_higher_one():
    upward = {edge: files for edge, files in arrows().items()
              if LAYERS[edge[1]] > LAYERS[edge[0]]}
    new = {edge: files for edge, files in upward.items() if edge not in KNOWN_UPWARD}
    assert not new, f"upward imports (lower layer -> higher): {new}"
    paid = KNOWN_UPWARD - set(upward)
    assert not paid, f"remove {sorted(paid)} from KNOWN_UPWARD: the debt is paid"


@pytest.mark.parametrize("package", ["attention", "models", "stiffness", "dynamics"])
def test_the_plain_packages_import_nothing_of_the_fast_path(package):
    """Models, step-size modules and the analysis read as the papers write them: the fast
    paths (stepnet.fast) reach them only through fuse(model)."""
    assert (package, "fast") not in arrows()


def test_the_check_sees_a_planted_upward_import(tmp_path):
    root = tmp_path / "stepnet"
    for name in ("data", "cli"):
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text("")
    (root / "data" / "planted.py").write_text("def f():\n    from ..cli import main\n")
    (root / "cli" / "ok.py").write_text("import stepnet.data\n")
    assert set(arrows(root)) == {("data", "cli"), ("cli", "data")}


TASK_NAMES = {"classification", "sudoku", "detection"}
TASK_NEUTRAL = ["engine/trainer.py", "engine/checkpoint.py", "engine/records.py",
                "checkpoint_file.py"]


def compared_task_names(path: Path) -> list[int]:
    """Lines of ``path`` that compare something with a task's name (``== "sudoku"``, ``in
    ("detection", ...)``): each task's differences belong to its class in engine/tasks/."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                values = [side] + (list(side.elts) if isinstance(side, (ast.Tuple, ast.List,
                                                                         ast.Set)) else [])
                if any(isinstance(v, ast.Constant) and v.value in TASK_NAMES for v in values):
                    lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("module", TASK_NEUTRAL)
def test_the_trainer_and_checkpoints_never_test_a_tasks_name(module):
    assert compared_task_names(ROOT / module) == []


def test_the_task_name_check_sees_a_planted_comparison(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f(config):\n    return config.task in ('sudoku', 'x')\n")
    assert compared_task_names(planted) == [2]
