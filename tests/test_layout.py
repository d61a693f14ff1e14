"""The package layout holds its promises (DESIGN.md, "Layout"), read from the source with the ``ast`` module only:
imports run one way down the stages, onnxruntime and torch stay in their corners, modules stay small."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "onnxprune"
#: The stages, lowest first: a module may import from its own stage and the ones before it.
STAGES = ("errors", "core", "ops", "analysis", "measure", "planning", "rewriting", "training", "tuning",
          "pipeline", "cli")
#: Modules that may import anything (the public API and ``python -m onnxprune``).
FREE = ("__init__.py", "__main__.py")
MAX_LINES = 400


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def stage_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0][:-3] if len(parts) == 1 else parts[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, package: str | None = None) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, absolute module, names) of every import in the file, at any depth (functions included);
    relative imports are resolved against ``package`` (by default the file's own)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    if package is None:
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            found.extend((n.lineno, a.name, ()) for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = package.split(".")
                base = base[: len(base) - (n.level - 1)]
                module = ".".join(base + ([n.module] if n.module else []))
            else:
                module = n.module or ""
            found.append((n.lineno, module, tuple(a.name for a in n.names)))
    return found


def targets(module: str, names: tuple[str, ...]) -> list[str]:
    """The onnxprune stages an import reaches; "onnxprune" for the top-level package itself."""
    parts = module.split(".")
    if parts[0] != "onnxprune":
        return []
    if len(parts) > 1:
        return [parts[1]]
    out = []
    for name in names or ("",):
        if name == "__version__":
            continue
        out.append(name if name in STAGES else "onnxprune")
    return out


def test_the_stages_are_the_folders():
    """Every module lives in a known stage (a new sub-package must take its place in STAGES)."""
    found = {stage_of(p) for p in modules() if not (p.parent == PACKAGE and p.name in FREE)}
    assert found - set(STAGES) == set(), f"modules outside the known stages: {sorted(found - set(STAGES))}"
    assert {"core", "ops", "cli"} <= found


def test_the_import_reader_can_see_a_violation(tmp_path):
    """Imports inside functions are seen and relative ones resolved, so the checks below can fail."""
    probe = tmp_path / "probe.py"
    probe.write_text("import numpy\n\ndef f():\n    from onnxprune.cli import main\n    from . import runtime\n"
                     "    from ..core.graph import Graph\n    import onnxprune.pipeline.pruning\n")
    got = imports(probe, package="onnxprune.measure")
    assert got == [(1, "numpy", ()), (4, "onnxprune.cli", ("main",)), (5, "onnxprune.measure", ("runtime",)),
                   (6, "onnxprune.core.graph", ("Graph",)), (7, "onnxprune.pipeline.pruning", ())]
    assert [t for _, m, n in got for t in targets(m, n)] == ["cli", "measure", "core", "pipeline"]
    assert targets("onnxprune", ("__version__",)) == [] and targets("onnxprune", ("analyze",)) == ["onnxprune"]


def test_imports_run_down_the_stages():
    bad = []
    for path in modules():
        if path.parent == PACKAGE and path.name in FREE:
            continue
        rank = STAGES.index(stage_of(path))
        for line, module, names in imports(path):
            for target in targets(module, names):
                if target == "onnxprune" or STAGES.index(target) > rank:
                    bad.append(f"{rel(path)}:{line} ({stage_of(path)}) imports {module} {list(names)}")
    assert not bad, "imports that run up the stages:\n" + "\n".join(bad)


@pytest.mark.parametrize("library,allowed", [
    ("onnxruntime", lambda p: rel(p) == "onnxprune/measure/runtime.py"),
    ("torch", lambda p: rel(p).startswith("onnxprune/training/")),
])
def test_heavy_runtimes_stay_in_their_corner(library, allowed):
    bad = [f"{rel(p)}:{line} imports {module}" for p in modules() for line, module, _ in imports(p)
           if module.split(".")[0] == library and not allowed(p)]
    assert not bad, "\n".join(bad)
    assert any(module.split(".")[0] == library for p in modules() for _, module, _ in imports(p)), \
        f"nothing imports {library}: the check would pass vacuously"


def test_modules_are_small():
    big = {rel(p): n for p in modules() if (n := len(p.read_text(encoding="utf-8").splitlines())) >= MAX_LINES}
    assert not big, f"modules of {MAX_LINES} lines or more: {big}"
