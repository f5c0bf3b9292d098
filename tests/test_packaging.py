"""Packaging, without Spark: the defaults travel inside the package (source tree, wheel,
--py-files zip), and conf/default.toml is that same file, not a copy."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests_support import REPO

import cfspark.config
from cfspark.config import load_defaults

PACKAGED = Path(REPO, "cfspark", "default.toml")


def test_defaults_are_read_through_importlib_resources(monkeypatch, tmp_path):
    (tmp_path / "default.toml").write_text("[model]\nrank = 99\n")
    asked = []

    def files(package):
        asked.append(package)
        return tmp_path

    monkeypatch.setattr(cfspark.config.resources, "files", files)
    assert load_defaults() == {"model": {"rank": 99}}
    assert asked == ["cfspark"]


def test_conf_default_toml_is_the_packaged_file_not_a_copy():
    documented = Path(REPO, "conf", "default.toml")
    assert documented.is_symlink() and documented.resolve() == PACKAGED.resolve()
    with open(PACKAGED, "rb") as f:
        assert repr(load_defaults()) == repr(tomllib.load(f))  # repr: nan != nan


def test_pyproject_ships_the_defaults_as_package_data():
    with open(Path(REPO, "pyproject.toml"), "rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    assert "default.toml" in package_data["cfspark"]


def test_package_zip_holds_the_defaults_and_loads_them_by_zipimport(tmp_path):
    """scripts/package.sh's zip, alone on sys.path: cfspark.config is imported from it and
    reads its defaults from it (there is no file path to open inside a zip)."""
    env = {**os.environ, "CFSPARK_PYTHON": sys.executable}
    proc = subprocess.run([os.path.join(REPO, "scripts", "package.sh"), str(tmp_path / "dist")], capture_output=True,
                          text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    zip_path = proc.stdout.strip()
    with zipfile.ZipFile(zip_path) as z:
        assert z.read("cfspark/default.toml") == PACKAGED.read_bytes()
    probe = "import cfspark.config as c; print(c.__file__); print(c.load_defaults()['model']['rank'])"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    (tmp_path / "cwd").mkdir()
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": zip_path}, cwd=tmp_path / "cwd")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    where, rank = proc.stdout.split()
    assert where == os.path.join(zip_path, "cfspark", "config.py")
    assert int(rank) == load_defaults()["model"]["rank"]
