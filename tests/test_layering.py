"""The package's layers: a module imports only from its own layer or the layers below.

Every module of cfspark is read with ast (no import runs), and every import in it counts:
at the top, inside a function, `import x` and `from x import y`, absolute or relative.
README, Architecture, draws the same table.
"""

from __future__ import annotations

import ast
from fnmatch import fnmatchcase
from pathlib import Path

from tests_support import REPO

# Low to high. "x.*" is the package x and everything in it; a plain name is that module.
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("cfspark.kernels.*", "cfspark.errors", "cfspark.phases", "cfspark.schema", "cfspark.fs"),
    1: ("cfspark.blocks.*", "cfspark.data.*", "cfspark.synthetic"),
    2: ("cfspark.train.*", "cfspark.factors"),
    3: ("cfspark.params", "cfspark.estimator", "cfspark.model", "cfspark.model_io", "cfspark.recommend",
        "cfspark.evaluate"),
    4: ("cfspark.job", "cfspark.run", "cfspark.benchmark", "cfspark.profile", "cfspark.compare", "cfspark.config",
        "cfspark.cli", "cfspark.guard", "cfspark.plot", "cfspark.output", "cfspark.apps.*",
        "cfspark"),  # cfspark/__init__.py, the public face: it re-exports the estimator and the model
}  # fmt: skip

NAMES = {0: "leaves", 1: "data and blocks", 2: "training", 3: "estimator and model", 4: "applications"}

# Modules that must not import these at all, whatever the layer (the kernels are pure numpy).
FORBIDDEN: dict[str, tuple[str, ...]] = {"cfspark.kernels.*": ("pyspark",)}


def matches(module: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        return module == pattern[:-2] or fnmatchcase(module, pattern)
    return module == pattern


def layer_of(module: str, layers: dict[int, tuple[str, ...]]) -> int | None:
    found = [layer for layer, patterns in layers.items() if any(matches(module, p) for p in patterns)]
    return found[0] if len(found) == 1 else None


def modules_of(root: Path, package: str) -> dict[str, Path]:
    """Every module under the package folder root, by dotted name (a package is its __init__)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((package, *parts))] = path
    return found


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement anywhere in the file.

    `from a import b` imports a.b when that is a module of the package, else a (b is a
    name defined in a). A relative import is resolved against the importing module's package.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full if full in known else base, node.lineno))
    return found


def violations(root: Path, package: str, layers: dict[int, tuple[str, ...]], forbidden=None) -> list[str]:
    """Every import that goes up a layer, every module without a layer, every forbidden import."""
    modules = modules_of(root, package)
    problems = []
    for module, path in modules.items():
        mine = layer_of(module, layers)
        if mine is None:
            problems.append(f"{module} ({path}) has no layer (or more than one): add it to LAYERS")
            continue
        for imported, line in imports_of(module, path, set(modules)):
            where = f"{path.relative_to(root.parent)}:{line}"
            for pattern, banned in (forbidden or {}).items():
                if matches(module, pattern) and imported.split(".")[0] in banned:
                    problems.append(f"{where}: {module} imports {imported}, which no {pattern} module may import")
            if imported != package and not imported.startswith(package + "."):
                continue
            theirs = layer_of(imported, layers)
            if theirs is None:
                problems.append(f"{where}: {module} imports {imported}, which has no layer")
            elif theirs > mine:
                problems.append(
                    f"{where}: {module} (layer {mine}, {NAMES.get(mine, '')}) imports {imported} "
                    f"(layer {theirs}, {NAMES.get(theirs, '')}), a higher layer"
                )
    return problems


def test_every_import_in_cfspark_goes_down_the_layers():
    problems = violations(Path(REPO, "cfspark"), "cfspark", LAYERS, FORBIDDEN)
    assert not problems, "\n".join(problems)


def test_the_checker_sees_the_package_it_checks():
    """Guards the test itself: it walks real modules and finds real imports."""
    root = Path(REPO, "cfspark")
    modules = modules_of(root, "cfspark")
    expected = {"cfspark", "cfspark.kernels.losses", "cfspark.data.read", "cfspark.apps.train", "cfspark.job"}
    assert expected <= modules.keys()
    imported = {m for m, _ in imports_of("cfspark.run", modules["cfspark.run"], set(modules))}
    assert {"cfspark.estimator", "cfspark.config", "cfspark"} <= imported  # `from cfspark import __version__`, local


FAKE_LAYERS = {0: ("fake.low", "fake.sub.*"), 1: ("fake.high", "fake")}


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "fake"
    for name, text in {"__init__.py": "", "sub/__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_checker_passes_downward_imports(tmp_path):
    root = _fake_package(tmp_path, {
        "low.py": "from fake.sub import leaf\nfrom .sub.leaf import f\n",
        "high.py": "import fake.low\nfrom fake import low\nimport numpy\n",
        "sub/leaf.py": "from . import other\nfrom ..low import g\n",
        "sub/other.py": "",
    })  # fmt: skip
    assert violations(root, "fake", FAKE_LAYERS) == []


def test_checker_catches_upward_top_level_local_relative_and_unplaced(tmp_path):
    root = _fake_package(tmp_path, {
        "low.py": "import fake.high\n\n\ndef f():\n    from fake.high import g\n    from .high import h\n",
        "high.py": "",
        "sub/leaf.py": "def f():\n    from fake import __version__\n",
        "stray.py": "",
    })  # fmt: skip
    problems = violations(root, "fake", FAKE_LAYERS)
    assert any(p.startswith("fake/low.py:1: fake.low (layer 0") and "imports fake.high (layer 1" in p for p in problems)
    assert any(p.startswith("fake/low.py:5: ") for p in problems)  # function-local
    assert any(p.startswith("fake/low.py:6: ") for p in problems)  # relative, function-local
    assert any(p.startswith("fake/sub/leaf.py:2: fake.sub.leaf (layer 0") and "imports fake (layer 1" in p
               for p in problems)  # fmt: skip
    assert any(p.startswith("fake.stray ") and "has no layer" in p for p in problems)
    assert len(problems) == 5, problems


def test_checker_catches_a_forbidden_import_anywhere_in_a_module(tmp_path):
    root = _fake_package(tmp_path, {"low.py": "import numpy\n", "high.py": "",
                                    "sub/leaf.py": "def f():\n    from pyspark.sql import functions\n"})  # fmt: skip
    problems = violations(root, "fake", FAKE_LAYERS, {"fake.sub.*": ("pyspark",)})
    assert problems == [
        "fake/sub/leaf.py:2: fake.sub.leaf imports pyspark.sql, which no fake.sub.* module may import"
    ], problems
