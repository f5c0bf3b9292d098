"""The README and docs/ stay true to the code.

- Every ```python block of README.md and docs/*.md runs, in order, with one namespace per
  file, on the test session, in a temporary working directory. A block preceded by
  `<!-- docs-test: skip (why) -->` is illustrative only; one preceded by
  `<!-- docs-test: needs ../shared -->` is skipped when ../shared/data is absent.
- Every ```bash block is checked without running it: each jobs/*.py, console script and
  scripts/* it names exists, its arguments parse with that job's own parser, and its
  --config file and --set keys load through the config loader (a relative --config must be
  a file of the repository; an absolute one is a deployment's own and is not read).
- .ci/run runs exactly the README's test command.
- Every relative link resolves, anchors included; every docs page is linked from the
  README; every file named in backticks exists.
- The config-key ↔ Param table and the layer table are the code's.

Only the python blocks touch Spark; everything else reads files and parses arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import runpy
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests_support import REPO

from cfspark.app.config import CONFIG_PARAMS, load_config
from cfspark.core.errors import ConfigError

ROOT = Path(REPO)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED = [*DOCS, ROOT / "CHANGELOG.md"]
SHARED = ROOT.parent / "shared" / "data"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

MARKER = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    path: Path
    line: int  # the line of the opening fence, 1-based
    lang: str
    text: str
    marker: str = ""  # what a <!-- docs-test: … --> just above the fence says

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the docs-test marker above each."""
    found, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.search(above)
        found.append(Block(path, i + 1, opening.group(1), "\n".join(lines[i + 1 : end]) + "\n",
                           marker.group(1) if marker else ""))  # fmt: skip
        i = end + 1
    return found


def prose_of(path: Path) -> str:
    """The file without its code blocks (links and headings inside them do not count)."""
    kept, inside = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line) or (inside and line.strip() == "```"):
            inside = not inside
            continue
        if not inside:
            kept.append(line)
    return "\n".join(kept)


BLOCKS = [b for path in DOCS for b in blocks_of(path)]
PYTHON = [b for b in BLOCKS if b.lang == "python"]
BASH = [b for b in BLOCKS if b.lang == "bash"]


# -- python blocks: run in order, one namespace per file ---------------------------------


@dataclass
class FileRun:
    """The python blocks of one file, run in order into one namespace, each at most once."""

    workdir: Path
    namespace: dict = field(default_factory=lambda: {"__name__": "docs_test"})
    outcome: dict[int, str] = field(default_factory=dict)  # line → "ok", "skipped: …" or "failed"

    def run(self, block: Block) -> None:
        if block.line in self.outcome:
            return
        self.outcome[block.line] = "failed"
        if block.marker.startswith("skip"):
            self.outcome[block.line] = f"skipped: {block.marker}"
            return
        if block.marker.startswith("needs ../shared") and not SHARED.is_dir():
            self.outcome[block.line] = "skipped: ../shared/data is absent"
            return
        here = os.getcwd()
        os.chdir(self.workdir)
        try:
            exec(compile(block.text, block.name, "exec"), self.namespace)
        finally:
            os.chdir(here)
        self.outcome[block.line] = "ok"


@pytest.fixture(scope="module")
def file_runs(tmp_path_factory):
    return {path: FileRun(tmp_path_factory.mktemp(path.stem)) for path in DOCS}


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.name)
def test_python_block_runs(spark, file_runs, block):
    runner = file_runs[block.path]
    for earlier in (b for b in PYTHON if b.path == block.path and b.line < block.line):
        with contextlib.suppress(Exception):  # its own test reports it
            runner.run(earlier)
        if runner.outcome[earlier.line] == "failed":
            pytest.skip(f"an earlier block of this file ({earlier.name}) failed")
    runner.run(block)
    if runner.outcome[block.line].startswith("skipped"):
        pytest.skip(runner.outcome[block.line])


# -- bash blocks: checked, not run ----------------------------------------------------------


def commands_of(text: str) -> list[list[str]]:
    """The simple commands of a shell snippet, as argument lists (continuations joined,
    full-line comments dropped, split at &&, ||, ; and |)."""
    lines = [line for line in text.replace("\\\n", " ").splitlines() if not line.lstrip().startswith("#")]
    commands = []
    for line in lines:
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
        lexer.commenters = ""
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token in ("&&", "||", ";", "|", "&"):
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class ParserFoundError(Exception):
    """Raised in place of parse_args, carrying the parser a job's main() built."""


def parser_of(main) -> argparse.ArgumentParser:
    """The argument parser a job's main() builds, caught before it parses anything."""

    def capture(self, args=None, namespace=None):
        raise ParserFoundError(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        main([])
    except ParserFoundError as caught:
        return caught.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{main.__module__}.main() did not parse its arguments")


def check_job_arguments(where: str, main, args: list[str]) -> None:
    parser = parser_of(main)
    try:
        parsed = parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: the job's parser refuses {shlex.join(args)}")
    if not hasattr(parsed, "overrides"):
        return  # a job without --config/--set (the generator)
    config = parsed.config
    if config and not os.path.isabs(config):
        assert (ROOT / config).is_file(), f"{where}: --config {config} is not a file of the repository"
        config = str(ROOT / config)
    elif config:
        config = None  # a deployment's own file
    remote = [f"spark.remote={parsed.remote}"] if getattr(parsed, "remote", None) else []
    try:
        load_config(config, [*parsed.overrides, *remote])
    except ConfigError as e:
        pytest.fail(f"{where}: {e}")


def job_main(path: str):
    """main() of jobs/<name>.py, which imports it from the package."""
    return runpy.run_path(str(ROOT / "jobs" / Path(path).name), run_name="docs_test")["main"]


def script_main(name: str):
    module, function = PYPROJECT["project"]["scripts"][name].split(":")
    return getattr(importlib.import_module(module), function)


def check_command(where: str, command: list[str]) -> None:
    words = list(command)
    while words and ENV_ASSIGNMENT.match(words[0]):
        words.pop(0)
    if not words:
        return
    program = os.path.basename(words[0])
    for word in words:
        zip_name = re.search(r"cfspark-([\w.]+)\.zip", word)
        if zip_name:
            assert zip_name.group(1) == PYPROJECT["project"]["version"], f"{where}: {word} names another version"
        if word.startswith("scripts/"):
            assert (ROOT / word).is_file(), f"{where}: {word} does not exist"
    if program.startswith("python") and words[1:2] == ["-m"]:
        if words[2:3] == ["pytest"]:
            check_markers(where, words[3:])
        return  # python -m venv, pip, …
    if program == "spark-submit" or program.startswith("python"):
        app = next(i for i, w in enumerate(words) if w.endswith(".py"))
        path = words[app].removeprefix("local://")
        assert re.search(r"(^|/)jobs/\w+\.py$", path), f"{where}: {words[app]} is not one of jobs/*.py"
        assert (ROOT / "jobs" / Path(path).name).is_file(), f"{where}: jobs/{Path(path).name} does not exist"
        check_job_arguments(where, job_main(path), words[app + 1 :])
    elif program.startswith("cfspark-"):
        assert program in PYPROJECT["project"]["scripts"], f"{where}: {program} is not a console script"
        check_job_arguments(where, script_main(program), words[1:])
    elif program == "pytest":
        check_markers(where, words[1:])


def check_markers(where: str, words: list[str]) -> None:
    declared = {m.split(":")[0].strip() for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
    for i, word in enumerate(words[:-1]):
        if word == "-m":
            used = set(re.findall(r"\w+", words[i + 1])) - {"and", "or", "not"}
            assert used <= declared, f"{where}: unknown pytest markers {used - declared}"


@pytest.mark.parametrize("block", BASH, ids=lambda b: b.name)
def test_bash_block_names_real_jobs_keys_and_files(block):
    for command in commands_of(block.text):
        check_command(block.name, command)


# -- the README's test command is what CI runs ---------------------------------------------


def one_line(text: str) -> str:
    return " ".join(text.replace("\\\n", " ").split())


def test_ci_runs_exactly_the_readmes_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    ci_command = one_line(ci.split('cd "$(dirname "$0")/.."\n', 1)[1])
    readme = [b for b in BASH if b.path.name == "README.md" and "pytest" in b.text]
    assert len(readme) == 1, "the README has one test command"
    assert one_line(readme[0].text) == ci_command
    for block in BASH:  # wherever the docs repeat it, they repeat it exactly
        if "pip install" in block.text and "pytest" in block.text:
            assert one_line(block.text) == ci_command, block.name


# -- links ------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, without punctuation, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"[^\w\- ]", "", text.replace("`", "").lower())
    return text.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in HEADING.findall(prose_of(path)):
        base = slug(heading)
        anchors.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return anchors


def links_of(path: Path) -> list[str]:
    prose = re.sub(r"`[^`\n]*`", "", prose_of(path))  # not inside inline code
    return [t for t in LINK.findall(prose) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("path", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    for target in links_of(path):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        assert resolved.exists(), f"{path.name}: link {target} points at nothing"
        assert ROOT in resolved.parents or resolved == ROOT, f"{path.name}: link {target} leaves the repository"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors_of(resolved), f"{path.name}: no heading #{anchor} in {resolved.name}"


def test_every_docs_page_is_linked_from_the_readme():
    readme = ROOT / "README.md"
    linked = {(readme.parent / t.partition("#")[0]).resolve() for t in links_of(readme)}
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set(), "docs pages the README does not link"


# -- tables that mirror the code ------------------------------------------------------------


def table_after(path: Path, heading: str) -> list[list[str]]:
    """The first table under a heading, as rows of cells with their backticks removed."""
    text = prose_of(path).split(heading, 1)[1]
    rows = re.findall(r"^\|(.+)\|\s*$", text.split("\n#", 1)[0], re.M)
    cells = [[c.strip().strip("`") for c in row.split("|")] for row in rows]
    return [c for c in cells[2:]]  # without the header and its rule


def test_the_config_key_to_param_table_is_the_jobs_mapping():
    expected = {f"{section}.{key}": param for (section, key), param in CONFIG_PARAMS.items()}
    # The rest of what the job's estimator_from_config passes: the columns, the checkpoint
    # folder and the warm start.
    expected.update({
        "input.user_col": "userCol", "input.item_col": "itemCol", "input.rating_col": "ratingCol",
        "checkpoint.dir": "checkpointDir", "model.warm_start": "initialModel",
    })  # fmt: skip
    documented = dict(table_after(ROOT / "docs" / "configuration.md", "## Config keys and Params"))
    assert documented == expected


def test_the_layer_table_is_the_packages_folders_and_layers():
    from test_layering import LAYERS

    documented = {
        folder.strip("/"): int(layer)
        for layer, folder, _ in table_after(ROOT / "docs" / "architecture.md", "## Layers")
    }
    assert documented == {folder: layer for layer, folders in enumerate(LAYERS) for folder in folders}
    packages = {p.parent.name for p in (ROOT / "cfspark").glob("*/__init__.py")}
    assert set(documented) == packages


FILE_NAMED = re.compile(r"`([\w./-]+\.(?:py|toml|sh))`")
SOURCE_FOLDERS = ("cfspark", "conf", "jobs", "scripts", "tests")


@pytest.mark.parametrize("path", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_named_in_backticks_exists(path):
    """`jobs/train.py` from the repository, `kernels/newton.py` from the package, `default.toml` anywhere."""
    for name in FILE_NAMED.findall(prose_of(path)):
        if "/" in name:
            # A path outside the repository exists only on the machine that wrote it.
            assert not name.startswith("/"), f"{path.name}: names a file outside the repository, {name}"
            assert (ROOT / name).exists() or (ROOT / "cfspark" / name).exists(), f"{path.name}: no file {name}"
        else:
            found = (ROOT / name).exists() or any(any((ROOT / d).rglob(name)) for d in SOURCE_FOLDERS)
            assert found, f"{path.name}: no file {name}"
