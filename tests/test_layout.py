"""The package's imports point down: errors/io/fields/flags/settings/variants at the bottom,
then model, data, train, serve, eval, report, and the CLI on top, which nothing imports."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src/rrt"
# Each layer may import the layers listed before it (and itself).
ORDER = ["errors", "io", "fields", "flags", "settings", "variants", "model", "data", "train", "serve", "eval", "report",
         "cli"]
ALLOWED = {
    "errors": set(), "io": {"errors"}, "fields": {"errors"}, "flags": {"fields"}, "settings": {"fields"},
    "variants": {"errors", "settings"},
    "model": {"errors", "io", "settings"},
    "data": {"errors", "io", "settings"},
    "train": {"errors", "io", "settings", "variants", "model", "data"},
    "serve": {"errors", "io", "settings", "model", "data"},
    "eval": {"errors", "io", "settings", "model", "data", "serve"},
    "report": {"errors", "io", "settings", "variants"},
    "cli": set(ORDER),
}


def _layer(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_layers(path: Path) -> set[str]:
    """rrt layers imported by a module, relative or absolute."""
    layers = set()
    package = path.relative_to(SRC.parent).with_suffix("").parts[:-1]  # ('rrt', 'model') for rrt/model/x.py
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts] if node.module else [base + [a.name] for a in node.names]
            else:
                names = [node.module.split(".")] if node.module else []
            for parts in names:
                if parts[:1] == ["rrt"] and len(parts) > 1:
                    layers.add(parts[1])
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[:1] == ["rrt"] and len(parts) > 1:
                    layers.add(parts[1])
    return layers


MODULES = sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path):
    layer = _layer(path)
    bad = _imported_layers(path) - ALLOWED[layer] - {layer}
    assert not bad, f"{path.relative_to(SRC)} ({layer}) imports {sorted(bad)}"


def test_no_function_level_imports_of_the_package():
    """Imports of rrt modules sit at the top of each module, where tools can see them."""
    for path in MODULES:
        tree = ast.parse(path.read_text())
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("rrt")):
                    pytest.fail(f"{path.relative_to(SRC)}:{node.lineno} imports inside {fn.name}()")
