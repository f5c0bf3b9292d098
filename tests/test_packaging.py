"""Packaging, without Spark: the defaults travel inside the package (source tree, wheel,
--py-files zip), conf/default.toml is that same file, not a copy, and every console
script and jobs/*.py wrapper runs one main() of cfspark.app or cfspark.bench."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from tests_support import REPO

import cfspark.app.config
from cfspark.app.config import load_defaults

PACKAGED = Path(REPO, "cfspark", "app", "default.toml")


def test_defaults_are_read_through_importlib_resources(monkeypatch, tmp_path):
    (tmp_path / "default.toml").write_text("[model]\nrank = 99\n")
    asked = []

    def files(package):
        asked.append(package)
        return tmp_path

    monkeypatch.setattr(cfspark.app.config.resources, "files", files)
    assert load_defaults() == {"model": {"rank": 99}}
    assert asked == ["cfspark.app"]


def test_conf_default_toml_is_the_packaged_file_not_a_copy():
    documented = Path(REPO, "conf", "default.toml")
    assert documented.is_symlink() and documented.resolve() == PACKAGED.resolve()
    with open(PACKAGED, "rb") as f:
        assert repr(load_defaults()) == repr(tomllib.load(f))  # repr: nan != nan


def _pyproject() -> dict:
    with open(Path(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_pyproject_ships_the_defaults_as_package_data():
    assert "default.toml" in _pyproject()["tool"]["setuptools"]["package-data"]["cfspark.app"]


def test_package_zip_holds_the_defaults_and_loads_them_by_zipimport(tmp_path):
    """scripts/package.sh's zip, alone on sys.path: cfspark.app.config is imported from it and
    reads its defaults from it (there is no file path to open inside a zip)."""
    env = {**os.environ, "CFSPARK_PYTHON": sys.executable}
    proc = subprocess.run([os.path.join(REPO, "scripts", "package.sh"), str(tmp_path / "dist")], capture_output=True,
                          text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    zip_path = proc.stdout.strip()
    with zipfile.ZipFile(zip_path) as z:
        assert z.read("cfspark/app/default.toml") == PACKAGED.read_bytes()
    probe = "import cfspark.app.config as c; print(c.__file__); print(c.load_defaults()['model']['rank'])"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    (tmp_path / "cwd").mkdir()
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": zip_path}, cwd=tmp_path / "cwd")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    where, rank = proc.stdout.split()
    assert where == os.path.join(zip_path, "cfspark", "app", "config.py")
    assert int(rank) == load_defaults()["model"]["rank"]


# jobs/<file>.py → the console script that runs the same main().
WRAPPERS = {
    "train.py": "cfspark-train",
    "benchmark.py": "cfspark-benchmark",
    "profile_fit.py": "cfspark-profile",
    "generate.py": "cfspark-generate",
    "implicit_bench.py": "cfspark-implicit-bench",
    "implicit_scale_bench.py": "cfspark-implicit-scale-bench",
}


def test_every_console_script_is_a_main_that_answers_help(capsys):
    scripts = _pyproject()["project"]["scripts"]
    assert sorted(scripts) == sorted(WRAPPERS.values())
    for name, target in scripts.items():
        module, attr = target.split(":")
        main = getattr(importlib.import_module(module), attr)
        with pytest.raises(SystemExit) as stop:
            main(["--help"])
        assert stop.value.code == 0, name
        assert capsys.readouterr().out.startswith("usage: "), name


def test_jobs_are_thin_wrappers_of_the_console_scripts_mains():
    """No sys.path hack: a job imports its main from the installed (or --py-files) cfspark."""
    scripts = _pyproject()["project"]["scripts"]
    assert sorted(os.listdir(Path(REPO, "jobs"))) == sorted(WRAPPERS)
    for file, script in WRAPPERS.items():
        source = Path(REPO, "jobs", file).read_text()
        assert "sys.path" not in source, file
        imports = [(n.module, [a.name for a in n.names]) for n in ast.walk(ast.parse(source))
                   if isinstance(n, ast.ImportFrom)]  # fmt: skip
        module, attr = scripts[script].split(":")
        assert imports == [(module, [attr])], file


def test_cfspark_train_console_script_prints_help_with_the_config_keys():
    """The console script that pip put beside this Python (the README's venv)."""
    script = shutil.which("cfspark-train", path=os.path.dirname(sys.executable))
    if script is None:
        if not importlib.metadata.entry_points(group="console_scripts", name="cfspark-train"):
            pytest.skip("cfspark was installed before it declared console scripts: run pip install -e . again")
        pytest.fail(f"cfspark-train is declared but not installed in {os.path.dirname(sys.executable)}")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: cfspark-train ")
    assert "  model.rank = 10\n" in proc.stdout and "  output.path = " in proc.stdout
