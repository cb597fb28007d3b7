"""The layer rule of docs/architecture.md: every import inside refad points down (or stays in
its own package), so data flows one way and each layer can be read without the ones above."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import refad

SRC = Path(refad.__file__).parent

# Lower number = lower layer. A module may import its own package and any lower layer.
LAYERS: dict[str, int] = {
    "errors": 0, "lazy": 0,
    "atomic": 1, "device": 1,
    "config": 2,
    "data": 3, "backbones": 3, "metrics": 3, "pipeline": 3,
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
PEERS = {("backbones", "data"), ("data", "pipeline"), ("metrics", "pipeline")}
PEERS.add(("backbones", "pipeline"))  # the feature cache keys sizes as the preprocess does
# The one upward import: the method registry imports the method folders the first time it is
# read (refad.config.methods.import_method_folders), as a plugin system discovers its plugins.
PLUGIN_DISCOVERY = {("config/methods.py", "models")}
# Packages that must stay importable without torch (edge boxes run them on onnxruntime).
TORCH_FREE = {"deploy", "pipeline"}


NAMED_TARGET = re.compile(r"refad(\.\w+)+:\w+")


def package_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def module_name(path: Path) -> str:
    """refad.a.b for src/refad/a/b.py and src/refad/a/b/__init__.py."""
    parts = ["refad", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    """The absolute module of a `from` import, relative ones (`from .x import y`) resolved."""
    if node.level == 0:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every module a file imports anywhere (lazy imports too):
    plain and relative imports, the names of `from refad.x import name` (a name may be a
    submodule), and `importlib.import_module("...")` / `lazy_attributes("refad.x", {...})`
    with literal names."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = _absolute(node, path)
            found.append((node.lineno, module))
            found.extend((node.lineno, f"{module}.{a.name}") for a in node.names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if name == "import_module" and isinstance(first, ast.Constant):
                found.append((node.lineno, str(first.value)))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and NAMED_TARGET.fullmatch(node.value)):
            # "refad.pkg.module:attribute": a name loaded on first use (api.py's tables, the
            # method registry's network classes)
            found.append((node.lineno, node.value.partition(":")[0]))
    # `from refad.pkg import Name` where pkg's __init__ loads Name lazily from a submodule
    for line, name in list(found):
        package, _, attribute = name.rpartition(".")
        submodule = lazy_exports(package).get(attribute)
        if submodule:
            found.append((line, f"{package}.{submodule}"))
    return found


def lazy_exports(package: str) -> dict[str, str]:
    """name -> submodule of a package whose __init__ calls `lazy_attributes(__name__, {...})`
    (names that load on first use; the layer rules must follow them)."""
    init = SRC / Path(*package.split(".")[1:]) / "__init__.py" if package.startswith(
        "refad.") else None
    if init is None or not init.is_file():
        return {}
    exports: dict[str, str] = {}
    tree = ast.parse(init.read_text())
    mappings = {t.id: n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "lazy_attributes"
                and len(node.args) > 1):
            table = node.args[1]
            table = mappings.get(table.id, table) if isinstance(table, ast.Name) else table
            if isinstance(table, ast.Dict):
                pairs = zip(table.keys, table.values, strict=True)
                exports.update({k.value: v.value for k, v in pairs
                                if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)})
    return exports


def refad_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported refad package) of every import in a module, lazy ones included."""
    found = []
    for line, name in imported_modules(path):
        parts = name.split(".")
        if parts[0] == "refad" and len(parts) > 1:
            found.append((line, parts[1]))
    return sorted(set(found))


def module_file(name: str) -> Path | None:
    """The file that defines refad module `name`, or None (an attribute, not a module)."""
    rel = Path(*name.split(".")[1:])
    for candidate in (SRC / rel.with_suffix(".py"), SRC / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def files_run_by_importing(name: str) -> list[Path]:
    """Importing refad.a.b runs refad/__init__, refad/a/__init__ and refad/a/b."""
    parts = name.split(".")
    files = [module_file(".".join(parts[:i])) for i in range(2, len(parts) + 1)]
    return [f for f in files if f is not None]


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
            if (str(path.relative_to(SRC)), target) in PLUGIN_DISCOVERY:
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
    """Transitively: no module that a torch-free package's import reaches (through any refad
    module, lazy imports included) imports torch, timm or torchvision."""
    heavy = {"torch", "timm", "torchvision"}
    for pkg in TORCH_FREE:
        seen: dict[Path, str] = {}
        todo = [(path, str(path.relative_to(SRC))) for path in (SRC / pkg).rglob("*.py")]
        while todo:
            path, via = todo.pop()
            if path in seen:
                continue
            seen[path] = via
            for line, name in imported_modules(path):
                top = name.split(".")[0]
                assert top not in heavy, f"{via} -> {path.relative_to(SRC)}:{line} imports {name}"
                if top == "refad":
                    todo.extend((f, f"{via} -> {name}") for f in files_run_by_importing(name))


def test_the_import_reader_sees_relative_and_importlib_imports(tmp_path: Path) -> None:
    """The holes the rules had: relative imports and importlib were not read."""
    module = SRC / "metrics" / "accumulator.py"
    names = {n for _, n in imported_modules(module)}
    assert "refad.metrics.regions" in names  # `from .regions import region_sizes`
    assert {t for _, t in refad_imports(module)} >= {"metrics"}
    # a name a package loads lazily is followed to the submodule that defines it
    server = {n for _, n in imported_modules(SRC / "serve" / "torch_backend.py")}
    assert "refad.inference.scorer" in server and "refad.inference.Scorer" in server
    assert lazy_exports("refad.inference")["Scorer"] == "scorer"
    # and the torch-free walk starts from what a deploy module runs on import
    assert SRC / "device.py" in files_run_by_importing("refad.device")
    assert "torch" in {n for _, n in imported_modules(SRC / "device.py")}


def test_the_cli_reaches_every_verb_through_the_api() -> None:
    """The CLI turns flags into calls of `refad.api` (and prints); it imports no layer that
    does the work itself, so the Python API can do everything the CLI does."""
    allowed = {"api", "errors", "config", "device"}
    direct = {t for _, t in refad_imports(SRC / "cli" / "main.py")}
    assert direct <= allowed, sorted(direct - allowed)


def run_in_fresh_interpreter(code: str) -> None:
    """Run `code` in a new Python process (nothing imported yet) and require it to pass."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_importing_the_api_needs_no_torch() -> None:
    """The torch-free verbs (predict and serve on an exported folder) are usable from the API
    on a deploy install: the api module loads torch-backed names on first use."""
    run_in_fresh_interpreter(
        "import sys; sys.modules['torch'] = None\n"
        "import refad.api as api\n"
        "assert callable(api.predict_exported) and callable(api.serve)\n"
        "assert not [m for m, v in sys.modules.items() if v is not None and "
        "m.split('.')[0] in ('torch', 'timm', 'torchvision')]\n")


def test_the_import_reader_sees_names_loaded_on_first_use() -> None:
    names = {n for _, n in imported_modules(SRC / "api.py")}
    assert {"refad.training", "refad.export", "refad.serve.server"} <= names


def test_the_deploy_path_loads_no_method_configuration() -> None:
    """Importing refad (or its torch-free deploy package) imports no method folder: the
    registry loads them when it is first read, not on every `import refad`."""
    run_in_fresh_interpreter(
        "import sys, refad.deploy, refad.errors\n"
        "assert 'refad.models' not in sys.modules, 'method folders imported'\n"
        "from refad.config import METHODS\n"
        "assert 'rlr' in METHODS and 'refad.models.rlr.config' in sys.modules\n")
