"""The package's layers are its folders: a module imports only from its own layer or the layers below.

Every module of cfspark is read with ast (no import runs), and every import in it counts:
at the top, inside a function, `import x` and `from x import y`, absolute or relative.
A module outside the layer folders fails; docs/architecture.md draws the same table (tests/test_docs.py checks it).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests_support import REPO

from cfspark.train import WORKER_MODULES

# The layers, low to high: each is one or more folders of the package, and a module's folder
# is its layer. The package's own __init__ (the public face) sits in the top layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core", "kernels"),  # leaves: schema, errors, fs, phases; pure numpy kernels
    ("data", "blocks"),  # ratings as DataFrames; setup into blocks
    ("train",),  # the distributed engine
    ("fit",),  # the fit paths
    ("ml",),  # the pyspark.ml face
    ("app", "bench"),  # the job; benchmark and profile
)

# Folders whose modules must not import these at all, whatever the layer (the kernels are pure numpy).
FORBIDDEN: dict[str, tuple[str, ...]] = {"kernels": ("pyspark",)}


def layer_of(module: str, package: str, layers: tuple[tuple[str, ...], ...]) -> int | None:
    """The layer of a module of package: its folder's, the top one for the package itself, else None."""
    if module == package:
        return len(layers) - 1
    folder = module[len(package) + 1 :].split(".")[0] if module.startswith(package + ".") else None
    found = [layer for layer, folders in enumerate(layers) if folder in folders]
    return found[0] if len(found) == 1 else None


def _name(layer: int, layers: tuple[tuple[str, ...], ...]) -> str:
    return ", ".join(layers[layer])


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


def violations(root: Path, package: str, layers: tuple[tuple[str, ...], ...], forbidden=None) -> list[str]:
    """Every import that goes up a layer, every module outside the layer folders, every forbidden import."""
    modules = modules_of(root, package)
    problems = []
    for module, path in modules.items():
        mine = layer_of(module, package, layers)
        if mine is None:
            problems.append(f"{module} ({path}) has no layer: move it into a layer folder, or add its folder to LAYERS")
            continue
        for imported, line in imports_of(module, path, set(modules)):
            where = f"{path.relative_to(root.parent)}:{line}"
            for folder, banned in (forbidden or {}).items():
                if module.startswith(f"{package}.{folder}.") and imported.split(".")[0] in banned:
                    problems.append(
                        f"{where}: {module} imports {imported}, which no {package}.{folder}.* module may import"
                    )
            if imported != package and not imported.startswith(package + "."):
                continue
            theirs = layer_of(imported, package, layers)
            if theirs is None:
                problems.append(f"{where}: {module} imports {imported}, which has no layer")
            elif theirs > mine:
                problems.append(
                    f"{where}: {module} (layer {mine}, {_name(mine, layers)}) imports {imported} "
                    f"(layer {theirs}, {_name(theirs, layers)}), a higher layer"
                )
    return problems


def test_every_import_in_cfspark_goes_down_the_layers():
    problems = violations(Path(REPO, "cfspark"), "cfspark", LAYERS, FORBIDDEN)
    assert not problems, "\n".join(problems)


def test_every_folder_of_cfspark_is_a_layer():
    """The tree shows the layers: no module at the package's top, no folder outside LAYERS."""
    root = Path(REPO, "cfspark")
    entries = {p.name for p in root.iterdir() if p.name != "__pycache__"}
    assert entries == {"__init__.py", *(folder for layer in LAYERS for folder in layer)}, entries


def test_the_checker_sees_the_package_it_checks():
    """Guards the test itself: it walks real modules and finds real imports."""
    root = Path(REPO, "cfspark")
    modules = modules_of(root, "cfspark")
    expected = {"cfspark", "cfspark.kernels.losses", "cfspark.data.read", "cfspark.app.train", "cfspark.app.run"}
    assert expected <= modules.keys()
    imported = {m for m, _ in imports_of("cfspark.app.run", modules["cfspark.app.run"], set(modules))}
    assert {"cfspark.ml.estimator", "cfspark.app.config", "cfspark"} <= imported  # `from cfspark import __version__`


def test_a_worker_imports_no_layer_above_train_and_saved_class_names_still_load():
    """Importing a worker's modules runs the package's __init__: it must not pull in the
    layers above train, nor pyspark.ml (most of a fresh worker's import time). The names
    that models saved before the ml/ folder carry (cfspark.model, cfspark.estimator) still
    import, as the modules under ml/ themselves, in a fresh interpreter that has not
    imported the public face; and the face's names resolve on first use."""
    script = f"""
import importlib, json, sys
for name in {WORKER_MODULES!r}:
    importlib.import_module(name)
above = ("cfspark.fit", "cfspark.ml", "cfspark.app", "cfspark.bench", "pyspark.ml")
loaded = sorted(m for m in sys.modules if m.startswith(above))
from pyspark.ml.util import DefaultParamsReader
model = DefaultParamsReader._DefaultParamsReader__get_class("cfspark.model.CFModel")
import cfspark.estimator
import cfspark.ml.estimator, cfspark.ml.model
from cfspark import COURSE_PARAMS, CollaborativeFilter
print(json.dumps({{"loaded": loaded, "model": model is cfspark.ml.model.CFModel,
                  "estimator": cfspark.estimator is cfspark.ml.estimator,
                  "face": CollaborativeFilter is cfspark.ml.estimator.CollaborativeFilter,
                  "params": COURSE_PARAMS is cfspark.ml.params.COURSE_PARAMS}}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"loaded": [], "model": True, "estimator": True, "face": True, "params": True}, done.stderr


FAKE_LAYERS = (("low", "sub"), ("high",))


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "fake"
    folders = {f"{folder}/__init__.py": "" for layer in FAKE_LAYERS for folder in layer}
    for name, text in {"__init__.py": "", **folders, **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_checker_passes_downward_imports(tmp_path):
    root = _fake_package(tmp_path, {
        "low/a.py": "from fake.sub import leaf\nfrom ..sub.leaf import f\n",
        "high/h.py": "import fake.low.a\nfrom fake.low import a\nimport numpy\n",
        "sub/leaf.py": "from . import other\nfrom ..low.a import g\n",
        "sub/other.py": "",
    })  # fmt: skip
    assert violations(root, "fake", FAKE_LAYERS) == []


def test_checker_catches_upward_top_level_local_relative_and_unplaced(tmp_path):
    root = _fake_package(tmp_path, {
        "low/a.py": "import fake.high.h\n\n\ndef f():\n    from fake.high.h import g\n    from ..high import h\n",
        "high/h.py": "",
        "sub/leaf.py": "def f():\n    from fake import __version__\n",
        "stray.py": "",
    })  # fmt: skip
    problems = violations(root, "fake", FAKE_LAYERS)
    assert any(p.startswith("fake/low/a.py:1: fake.low.a (layer 0") and "imports fake.high.h (layer 1" in p
               for p in problems)  # fmt: skip
    assert any(p.startswith("fake/low/a.py:5: ") for p in problems)  # function-local
    assert any(p.startswith("fake/low/a.py:6: ") for p in problems)  # relative, function-local
    assert any(p.startswith("fake/sub/leaf.py:2: fake.sub.leaf (layer 0") and "imports fake (layer 1" in p
               for p in problems)  # fmt: skip
    assert any(p.startswith("fake.stray ") and "has no layer" in p for p in problems)
    assert len(problems) == 5, problems


def test_checker_catches_a_forbidden_import_anywhere_in_a_module(tmp_path):
    root = _fake_package(tmp_path, {"low/a.py": "import numpy\n", "high/h.py": "",
                                    "sub/leaf.py": "def f():\n    from pyspark.sql import functions\n"})  # fmt: skip
    problems = violations(root, "fake", FAKE_LAYERS, {"sub": ("pyspark",)})
    assert problems == [
        "fake/sub/leaf.py:2: fake.sub.leaf imports pyspark.sql, which no fake.sub.* module may import"
    ], problems
