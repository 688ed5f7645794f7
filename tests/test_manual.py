"""What a user reads: ``--help`` (examples, exit codes, variables) and the man page inturn(1),
built and installed as ``pip install .`` does, then read with ``man``.

What must be documented is found independently: every ``INTURN_*`` variable named in the
source, every exit code in ``exits.py``, every command and option of the parser.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from inturn import __version__
from inturn.cli import exits
from inturn.cli.manpage import man_page
from inturn.cli.parser import build_parser

from conftest import HERE, child_env, missing_component, run_cli
from terminal import ensure_program

ROOT = HERE.parent


def variables() -> set[str]:
    """Every INTURN_* variable the package reads or sets (test-only ones are not in src/)."""
    found: set[str] = set()
    for path in (ROOT / "src" / "inturn").rglob("*.py"):
        found.update(re.findall(r"\bINTURN_[A-Z_]+\b", path.read_text()))
    return found


def exit_codes() -> set[int]:
    return {value for name, value in vars(exits).items() if name.startswith("EXIT_")}


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(found.choices)


def section(text: str, title: str) -> str:
    """The lines under ``title:`` in a --help, up to the next blank line."""
    lines = text.split("\n")
    start = lines.index(f"{title}:") + 1
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    return "\n".join(lines[start:end])


@pytest.mark.parametrize("command", ["", "run"])
def test_help_shows_examples_exit_codes_and_variables(lines_dir, command):
    result = run_cli(*([command] if command else []), "--help")
    assert result.returncode == 0 and result.stderr == ""
    examples = section(result.stdout, "examples")
    assert examples.count("  inturn ") >= 3, examples
    codes = section(result.stdout, "exit codes")
    for code in exit_codes():
        assert re.search(rf"^  {code} +\S", codes, re.MULTILINE), (code, codes)
    environment = section(result.stdout, "environment")
    assert variables() >= {"INTURN_DIR", "INTURN_BACKEND", "INTURN_TICKET"}
    for variable in variables():
        assert re.search(rf"^  {variable} +\S", environment, re.MULTILINE), variable
    assert "1h30m" in result.stdout  # how a duration is written


def test_every_command_has_examples_in_its_help(lines_dir):
    for name in commands():
        result = run_cli(name, "--help")
        assert result.returncode == 0, name
        assert section(result.stdout, "examples").count("  inturn") >= 1, name


@pytest.mark.parametrize("columns", [60, 80, 100])
def test_help_is_wrapped_to_the_terminal(lines_dir, columns):
    """Descriptions, examples, exit codes and variables fit the terminal as argparse fits the
    options (two columns short of it), a table's rows going on under its second column."""
    for name in ["", *commands()]:
        result = run_cli(*([name] if name else []), "--help", COLUMNS=str(columns))
        assert result.returncode == 0, name
        long = [row for row in result.stdout.splitlines() if len(row) > columns - 2]
        assert not long, (name, long)
        split = [row for row in result.stdout.splitlines() if re.search(r"\w-$", row)]
        assert not split, (name, split)  # an option or a word cut at its hyphen
    text = run_cli("--help", COLUMNS=str(columns)).stdout
    codes = section(text, "exit codes").splitlines()
    below = codes[codes.index(next(r for r in codes if r.startswith("  75 "))) + 1]
    assert below.startswith("       ") and below[7] != " ", codes  # under the meanings


def test_every_command_says_where_its_duration_format_and_exit_codes_are(lines_dir):
    for name, sub in commands().items():
        text = run_cli(name, "--help").stdout
        if any(a.type is not None and "SECONDS" in str(a.metavar) for a in sub._actions):
            assert "1h30m, 2d" in text, name
        if name != "run":
            assert "Exit codes and variables: inturn --help, or man inturn." in text, name


def test_the_man_page_says_help_and_version_once():
    page = man_page(build_parser(), __version__)
    assert "show this help message" not in page
    assert page.count("\\fB\\-h\\fR, \\fB\\-\\-help\\fR") == 1
    assert "\\fBinturn \\-\\-version\\fR" in page  # in the synopsis
    assert "\n\\fB\\-\\-version\\fR\nprint inturn's version and exit\n" in page


@pytest.mark.parametrize(
    "script",
    sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if "__main__" in p.read_text()),
)
def test_each_benchmark_script_answers_help_without_running(script):
    """``--help`` prints the usage and exits: it never starts a benchmark of many minutes."""
    shown = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--help"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )
    assert (shown.returncode, shown.stderr) == (0, ""), shown
    assert shown.stdout.startswith(f"usage: {script}"), shown.stdout


# --------------------------------------------------------------------------- the man page


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with inturn installed from a wheel built from a copy of
    this checkout, as ``pip install .`` builds it (without the network: the build uses the
    setuptools of the test environment)."""
    try:
        import setuptools
    except ImportError:
        missing_component("setuptools is not installed", "pip install -e '.[test]'")
    if int(setuptools.__version__.split(".")[0]) < 77:
        missing_component("setuptools is too old to build inturn", "pip install -e '.[test]'")
    place = tmp_path_factory.mktemp("install")
    source = place / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    env = child_env()
    env.pop("PYTHONPATH")  # the new environment must find only what was installed
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(place / "dist"), source],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (place / "dist").glob("inturn-*.whl")
    venv = place / "venv"
    made = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=600, check=False
    )
    assert made.returncode == 0
    done = subprocess.run(
        [*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return venv


def test_the_source_distribution_carries_the_whole_test_suite(tmp_path):
    """A test file without the modules it imports (conftest.py, observer.py, ...) fails at
    collection: the sdist carries every file of tests/ and what the suite runs beside it."""
    source = tmp_path / "source"
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, timeout=60
    )
    if tracked.returncode != 0:
        missing_component("this checkout is not a git work tree", "run the tests in a clone")
    files = tracked.stdout.splitlines()
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    built = subprocess.run(
        [
            sys.executable,
            "-c",
            "from setuptools import build_meta as b; print(b.build_sdist('dist'))",
        ],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    archive = source / "dist" / built.stdout.strip().splitlines()[-1]
    with tarfile.open(archive) as sdist:
        inside = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    wanted = [n for n in files if n.split("/")[0] in ("tests", "benchmarks", "examples", "scripts")]
    assert wanted and not [n for n in wanted if n not in inside]
    assert not [n for n in inside if "__pycache__" in n or n.endswith(".pyc")]


def man(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``man ARGS`` as a user of that environment runs it (its bin/ first on PATH)."""
    env = child_env(MANWIDTH="100", MAN_KEEP_FORMATTING="", LANG="C.UTF-8")
    env.pop("PYTHONPATH")
    env.pop("MANPATH", None)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env["PATH"]])
    return subprocess.run(
        [ensure_program("man", "man-db"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_pip_install_installs_the_man_page_made_from_the_parser(installed):
    page = installed / "share" / "man" / "man1" / "inturn.1"
    assert page.read_text() == man_page(build_parser(), __version__)
    found = man(installed, "-w", "inturn")
    assert (found.returncode, found.stdout.strip()) == (0, str(page)), found
    version = subprocess.run(
        [str(installed / "bin" / "inturn"), "--version"], capture_output=True, text=True
    )
    assert version.stdout == f"inturn {__version__}\n"


def test_man_inturn_shows_every_command_option_exit_code_and_variable(installed):
    shown = man(installed, "--warnings", "-P", "cat", "inturn")
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr  # no roff warnings
    text = re.sub(r".\x08", "", shown.stdout)  # any overstriking left: plain text
    assert text.startswith("INTURN(1)")
    for heading in ("NAME", "SYNOPSIS", "COMMANDS", "EXAMPLES", "EXIT STATUS", "ENVIRONMENT"):
        assert re.search(rf"^{heading}$", text, re.MULTILINE), heading
    for name, sub in commands().items():
        assert re.search(rf"^   inturn {name}$", text, re.MULTILINE), name
        for action in sub._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for flag in action.option_strings:
                assert re.search(rf"(^ +|, ){re.escape(flag)}\b", text, re.MULTILINE), (name, flag)
    status = text[text.index("EXIT STATUS") : text.index("ENVIRONMENT")]
    for code in exit_codes():
        assert re.search(rf"^       {code}(  |$)", status, re.MULTILINE), code
    environment = text[text.index("ENVIRONMENT") :]
    for variable in variables():
        assert re.search(rf"^       {variable}(  |$)", environment, re.MULTILINE), variable


@pytest.mark.parametrize("width", [60, 80, 100])
def test_the_page_never_splits_a_word_to_be_typed(tmp_path, width):
    """Filled to any width, the page keeps every name whole: a variable, an option or a
    command split by hyphenation (IN-TURN_DIR, --back-end) is copied wrong."""
    page = tmp_path / "inturn.1"
    page.write_text(man_page(build_parser(), __version__))
    env = child_env(MANWIDTH=str(width), LANG="C.UTF-8")
    shown = subprocess.run(
        [ensure_program("man", "man-db"), "-l", "-P", "cat", str(page)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    split = [row for row in shown.stdout.splitlines() if re.search(r"\w[-\u2010]$", row)]
    assert not split, split


def test_the_page_survives_text_that_roff_would_read_as_requests():
    parser = argparse.ArgumentParser(prog="inturn", description=".TH not a request")
    commands = parser.add_subparsers()
    odd = commands.add_parser("odd", description="'quoted start\nback\\slash -hyphen")
    odd.add_argument("--x", help=".SH neither")
    page = man_page(parser, "1")
    assert "\n.TH not" not in page and "\n.SH neither" not in page and "\n'quoted" not in page
    assert "back\\eslash \\-hyphen" in page
