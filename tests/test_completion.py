"""``inturn completion bash|zsh|fish`` in the real shells.

bash and zsh complete in a real terminal (tmux): the test types a command line and Tab, and
reads what the shell made of it. fish is asked with ``complete -C``, its own completion engine
run without a terminal. Each shell installs the script the way the README says, from the
installed console script, and completes line names from ``inturn status --names``, which that
same script runs. What must be completed (every command, every option) is read from the
parser, so a command added there is checked here without a change.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inturn.cli.completion import short
from inturn.cli.manual import EXAMPLES
from inturn.cli.parser import build_parser

from conftest import HERE, child_env, inturn_words, run_cli
from terminal import PROMPT, Pane, ensure_program

HOSTILE = "$(touch {pwned})"  # a line name that would run a command if it were ever evaluated


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(found.choices)


@pytest.fixture
def lines(lines_dir: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Lines to complete: plain, with a colon, with a space, hostile; one more elsewhere."""
    pwned = tmp_path / "pwned"
    names = ["build", "deploy:prod", "my line", HOSTILE.format(pwned=pwned)]
    for name in names:
        assert run_cli("run", name, "--", "true").returncode == 0
    other = tmp_path / "other"
    assert run_cli("run", "--dir", str(other), "elsewhere", "--", "true").returncode == 0
    yield {"pwned": pwned, "other": other, "names": names}
    assert not pwned.exists(), "a line name was run as a command"


def script_folder() -> str:
    return str(Path(inturn_words()[0]).parent)


def test_line_names_are_listed_one_a_line_for_scripts(lines):
    result = run_cli("status", "--names")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.splitlines() == sorted(lines["names"])
    elsewhere = run_cli("status", "--names", "--dir", str(lines["other"]))
    assert elsewhere.stdout == "elsewhere\n"
    refused = run_cli("status", "--names", "build")
    assert refused.returncode == 2 and "--names lists every line" in refused.stderr


def test_a_name_with_a_control_character_is_left_out_with_a_warning(lines_dir):
    assert run_cli("run", "two\nrows", "--", "true").returncode == 0
    assert run_cli("run", "fine", "--", "true").returncode == 0
    result = run_cli("status", "--names")
    assert (result.returncode, result.stdout) == (0, "fine\n")
    assert result.stderr == (
        "inturn: warning: left out the line two\\x0arows: its name has control characters\n"
    )


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_each_script_is_printed_and_names_the_shell(lines_dir, shell):
    result = run_cli("completion", shell)
    assert result.returncode == 0 and result.stderr == ""
    assert f"{shell} completion for inturn" in result.stdout
    for command in commands():
        assert command in result.stdout
    refused = run_cli("completion", "tcsh")
    assert refused.returncode == 2 and "invalid choice: 'tcsh'" in refused.stderr


def test_every_option_is_described_by_what_it_does():
    """A menu shows the first clause of an option's help: it must say what the option does,
    not only where it applies ("with --watch or top")."""
    for name, sub in commands().items():
        for action in sub._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                about = short(action.help or "")
                assert about and not about.startswith("with "), (name, action.option_strings)
    assert short(commands()["top"]._option_string_actions["--interval"].help or "") == (
        "read the line again every SECONDS for arrivals and clocks"
    )


# --------------------------------------------------------------------------- bash and zsh


def complete(pane: Pane, typed: str, expected: str) -> None:
    """Type ``typed`` and Tab: the command line must become ``expected``; then erase it."""
    pane.text(typed)
    pane.keys("Tab")
    want = (PROMPT + expected).rstrip()
    pane.until(lambda rows: [r for r in rows if r][-1] == want, f"{typed!r} completed")
    pane.keys("C-u")
    pane.until(lambda rows: [r for r in rows if r][-1] == PROMPT.rstrip(), "an empty line")


def listed(pane: Pane, typed: str) -> list[str]:
    """Type ``typed`` and Tab Tab: the words the shell lists; then erase the line."""
    pane.text(typed)
    pane.keys("Tab", "Tab")
    rows = pane.until(lambda rows: len([r for r in rows if r]) > 1, f"a list for {typed!r}")
    words = [w for row in rows if not row.startswith(PROMPT) for w in row.split()]
    pane.keys("C-u")
    pane.type("clear")
    pane.until(lambda rows: [r for r in rows if r] == [PROMPT.rstrip()], "a clear screen")
    return words


def handed_word(path: Path) -> str:
    """How bash and zsh write a completed file name: its blank escaped."""
    return str(path).replace(" ", "\\ ")


def terminal_with(shell: str, tmp_path: Path) -> Pane:
    if shell == "bash":
        setup = 'eval "$(inturn completion bash)"'  # as the README says
    else:
        folder = tmp_path / "zfunc"
        folder.mkdir()
        (folder / "_inturn").write_text(run_cli("completion", "zsh").stdout)
        setup = f"fpath=({shlex.quote(str(folder))} $fpath)\nautoload -U compinit\ncompinit -u -D"
    return Pane(tmp_path, columns=200, rows=30, shell=shell, setup=setup, path=script_folder())


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_commands_options_and_line_names_complete_at_the_terminal(lines, panes, tmp_path, shell):
    pane = terminal_with(shell, tmp_path)
    panes.append(pane)
    other = str(lines["other"])
    complete(pane, "inturn st", "inturn status ")
    complete(pane, "inturn completion z", "inturn completion zsh ")
    complete(pane, "inturn run --no-w", "inturn run --no-wait ")
    complete(pane, "inturn status dep", "inturn status deploy:prod ")
    complete(pane, "inturn run -n -w 5m b", "inturn run -n -w 5m build ")
    complete(pane, "inturn status my", "inturn status my\\ line ")
    complete(pane, "inturn forget build dep", "inturn forget build deploy:prod ")
    complete(pane, "inturn run -c 'make all' bu", "inturn run -c 'make all' build ")
    complete(pane, f"inturn status --dir {other} e", f"inturn status --dir {other} elsewhere ")
    complete(pane, f"inturn status --dir={other} e", f"inturn status --dir={other} elsewhere ")
    complete(pane, f"inturn status --dir {other[:-2]}", f"inturn status --dir {other}/")
    complete(pane, "inturn run build -- tmu", "inturn run build -- tmux ")
    complete(pane, "inturn run build tmu", "inturn run build tmux ")
    handed = tmp_path / "handed over.txt"  # send's words are files, not commands
    handed.write_text("notes")
    typed = shlex.quote(str(tmp_path)) + "/hand"
    complete(pane, f"inturn send build -- {typed}", f"inturn send build -- {handed_word(handed)} ")
    assert set(listed(pane, "inturn ")) >= set(commands())
    shown = listed(pane, "inturn status ")
    assert {"build", "deploy:prod"} <= set(shown)
    assert not lines["pwned"].exists()


# --------------------------------------------------------------------------- fish


def fish_completes(script: Path, line: str) -> list[str]:
    """What fish would offer for ``line``: its own engine (``complete -C``), no terminal."""
    fish = ensure_program("fish")
    env = child_env()
    env["PATH"] = f"{script_folder()}:{env['PATH']}"
    env["XDG_CONFIG_HOME"] = str(script.parent / "config")
    command = f"source {shlex.quote(str(script))}; complete -C {shlex.quote(line)}"
    done = subprocess.run(
        [fish, "--no-config", "-c", command],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr == "", done
    return [row.split("\t")[0] for row in done.stdout.splitlines()]


def test_fish_completes_commands_options_and_line_names(lines, tmp_path):
    script = tmp_path / "inturn.fish"  # as ~/.config/fish/completions/inturn.fish
    script.write_text(run_cli("completion", "fish").stdout)
    other = str(lines["other"])
    assert fish_completes(script, "inturn st") == ["status"]
    assert fish_completes(script, "inturn completion ") == ["bash", "fish", "zsh"]
    assert fish_completes(script, "inturn run --no-w") == ["--no-wait"]
    assert fish_completes(script, "inturn status dep") == ["deploy:prod"]
    assert fish_completes(script, "inturn run -n -w 5m b") == ["build"]
    assert fish_completes(script, "inturn status my") == ["my line"]
    assert fish_completes(script, "inturn forget build dep") == ["deploy:prod"]
    assert fish_completes(script, "inturn run -c 'make all' bu") == ["build"]
    assert fish_completes(script, f"inturn status --dir {other} e") == ["elsewhere"]
    assert fish_completes(script, f"inturn status --dir {other[:-2]}") == [f"{other}/"]
    assert "tmux" in fish_completes(script, "inturn run build -- tmu")
    handed = tmp_path / "handed over.txt"  # send's words are files, not commands
    handed.write_text("notes")
    typed = f"inturn send build -- {tmp_path}/hand"
    assert fish_completes(script, typed) == [str(handed)]
    assert sorted(fish_completes(script, "inturn status ")) == sorted(lines["names"])
    assert sorted(fish_completes(script, "inturn ")) == sorted(commands())
    for name, sub in commands().items():
        offered = set(fish_completes(script, f"inturn {name} -"))
        flags = {f for a in sub._actions if a.help != argparse.SUPPRESS for f in a.option_strings}
        assert offered == flags, name
    assert not lines["pwned"].exists()


# --------------------------------------------------------------------------- installing


def readme_install_lines() -> list[str]:
    """The commands under "Completion and the man page" in the README, comments left out."""
    text = (HERE.parent / "README.md").read_text()
    block = text.split("### Completion and the man page", 1)[1]
    block = block.split("```sh\n", 1)[1].split("```", 1)[0]
    return [row for row in block.splitlines() if row and not row.startswith("#")]


def help_install_lines() -> list[str]:
    """The commands that ``inturn completion --help`` gives as its examples."""
    return [command for command, _ in EXAMPLES["completion"]]


@pytest.mark.parametrize("where", ["readme", "help"])
def test_the_install_commands_work_as_given_in_a_new_account(lines_dir, tmp_path, where):
    """Pasted as given, each install command works in its own shell for someone whose home
    has none of the folders it writes to, and the shell then completes from what it wrote."""
    given = readme_install_lines() if where == "readme" else help_install_lines()
    assert len(given) == 3, given
    assert run_cli("run", "build", "--", "true").returncode == 0
    home = tmp_path / "home"
    home.mkdir()
    env = child_env(HOME=str(home))
    env["PATH"] = f"{script_folder()}:{env['PATH']}"
    for variable in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "ZDOTDIR"):
        env.pop(variable, None)
    shells = {
        "bash": ["bash", "--norc", "--noprofile", "-c"],
        "zsh": [ensure_program("zsh"), "-f", "-c"],
        "fish": [ensure_program("fish"), "-c"],  # its user folders, as a user's fish has
    }
    then = {  # in the same shell, what shows that completion is set up (zsh: the file below)
        "bash": "; complete -p inturn",
        "zsh": "",
        "fish": "; complete -C 'inturn status bu'",
    }
    for shell, words in shells.items():
        (command,) = [c for c in given if f"completion {shell}" in c]
        done = subprocess.run(
            [*words, command + then[shell]], capture_output=True, text=True, env=env, timeout=60
        )
        assert (done.returncode, done.stderr) == (0, ""), (shell, command, done)
        if shell == "fish":
            assert [row.split("\t")[0] for row in done.stdout.splitlines()] == ["build"], done
    zsh_script = home / ".zfunc" / "_inturn"
    assert zsh_script.read_text() == run_cli("completion", "zsh").stdout
