"""The programs in ``examples/`` do what the README says they do, and type-check as users'
code would (``mypy --strict`` through ``py.typed``)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPORT_TIMEOUT, child_env, inturn_cmd, read_lines

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EDITOR = EXAMPLES / "editor.py"


def next_line(printed: queue.Queue[str], what: str) -> str:
    """The next line a process printed; failing, rather than hanging, if it never comes."""
    line = printed.get(timeout=REPORT_TIMEOUT)
    assert line, f"the process ended before {what}"
    return line


def test_the_editor_opens_the_files_of_later_starts_and_the_next_start_takes_over(
    lines_dir, tmp_path, processes
):
    env = child_env(INTURN_DIR=str(lines_dir))

    def start(*files: str) -> queue.Queue[str]:
        editor = subprocess.Popen(
            [sys.executable, str(EDITOR), *files],
            stdout=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        processes.append(editor)
        assert editor.stdout is not None
        return read_lines(editor.stdout)

    def later(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=REPORT_TIMEOUT
        )

    printed = start("notes.txt")
    first = processes[-1]
    assert next_line(printed, "it opened notes.txt").endswith(f"opened {tmp_path}/notes.txt\n")
    assert "running" in next_line(printed, "it said it runs")

    second = later(sys.executable, str(EDITOR), "todo.txt", "a.md")
    assert (second.returncode, second.stderr) == (0, ""), second
    assert second.stdout == (
        f"already running as pid {first.pid}, which opened: {tmp_path}/todo.txt, {tmp_path}/a.md\n"
    )
    assert next_line(printed, "it opened todo.txt").endswith(f"opened {tmp_path}/todo.txt\n")
    assert next_line(printed, "it opened a.md").endswith(f"opened {tmp_path}/a.md\n")
    assert ": from " in next_line(printed, "it named the sender")

    sent = later(*inturn_cmd("send", "example-editor", "--", "plan.txt"))
    assert (sent.returncode, sent.stderr) == (0, ""), sent
    assert json.loads(sent.stdout) == {"opened": [f"{tmp_path}/plan.txt"]}

    first.send_signal(signal.SIGTERM)
    assert first.wait(REPORT_TIMEOUT) == 0  # ended cleanly: the line is given back
    printed = start("again.txt")  # the next start is the first now
    assert next_line(printed, "it opened its file").endswith(f"opened {tmp_path}/again.txt\n")


def test_the_examples_type_check_under_mypy_strict(tmp_path):
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache")]
        + [str(path) for path in sorted(EXAMPLES.glob("*.py"))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=REPORT_TIMEOUT,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
