"""The layer rule of docs/architecture.md: every import inside refad points down (or stays in
its own package), so data flows one way and each layer can be read without the ones above."""

from __future__ import annotations

import ast
from pathlib import Path

import refad

SRC = Path(refad.__file__).parent

# Lower number = lower layer. A module may import its own package and any lower layer.
LAYERS: dict[str, int] = {
    "errors": 0, "lazy": 0,
    "atomic": 1, "device": 1,
    "config": 2,
    "data": 3, "backbones": 3, "metrics": 3,
    "models": 4,
    "runs": 5,
    "inference": 6,
    "training": 7,
    "deploy": 8,
    "reporting": 9, "export": 9,
    "serve": 10,
    "api": 11,
    "cli": 12,
    "__main__": 13, "__init__": 13,
}
# Same-layer packages that may use each other (one direction each).
PEERS = {("backbones", "data")}
# Packages that must stay importable without torch (edge boxes run them on onnxruntime).
TORCH_FREE = {"deploy"}


def package_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def refad_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported refad package) of every import in a module, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "refad" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
            elif parts[0] == "refad" and isinstance(node, ast.ImportFrom):
                found.extend((node.lineno, a.name) for a in node.names)
    return found


def test_every_package_has_a_layer() -> None:
    packages = {package_of(p) for p in SRC.rglob("*.py")}
    assert packages <= set(LAYERS), sorted(packages - set(LAYERS))


def test_imports_point_down() -> None:
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        owner = package_of(path)
        for line, target in refad_imports(path):
            if target == owner or (owner, target) in PEERS:
                continue
            if target not in LAYERS or LAYERS[target] >= LAYERS[owner]:
                wrong.append(f"{path.relative_to(SRC)}:{line} imports refad.{target}")
    assert not wrong, "\n".join(wrong)


def test_lower_layers_never_reach_up() -> None:
    """The rule the brief states outright: nothing below the models imports the run machinery."""
    upper = {"training", "inference", "runs", "reporting", "cli", "api", "serve", "export"}
    for pkg in ("data", "backbones", "metrics", "models", "config"):
        for path in (SRC / pkg).rglob("*.py"):
            assert not {t for _, t in refad_imports(path)} & upper, path


def test_torch_free_packages_import_no_torch() -> None:
    for pkg in TORCH_FREE:
        for path in (SRC / pkg).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [
                        a.name for a in node.names
                    ]
                    assert not any(n.split(".")[0] == "torch" for n in names), path
