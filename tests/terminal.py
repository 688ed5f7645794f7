"""Real terminals for tests: a shell in a tmux window of its own, typed into and read back.

A test types with ``send-keys`` and reads the screen with ``capture-pane``; what the terminal
is left in is asked of tmux itself (``#{alternate_on}``, ``#{cursor_flag}``, ``#{wrap_flag}``).
A test waits for what the screen shows, polling ``capture-pane`` with a bound that only
detects a hang. The shells and tmux are installed with apt-get when missing and the tests run
as root (as the other fixtures install what they need); elsewhere their tests are skipped,
or fail under ``CI=true``.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from conftest import child_env, missing_component

SCREEN_TIMEOUT = 60.0  # a passing test never waits this long for the screen
PROMPT = "ready> "
EXIT = re.compile(r"^exit=(\d+)$")
# One lock for every checkout on the machine: two suites may install at once.
APT_LOCK = os.path.join(tempfile.gettempdir(), "inturn-test-apt.lock")


def ensure_program(program: str, package: str | None = None) -> str:
    """``program``'s path, installed from Debian's ``package`` when missing and we may (root
    with apt-get); else a skip, or a failure under ``CI=true``."""
    found = shutil.which(program)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        fd = os.open(APT_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            for step in (["install"], ["update", "-qq"], ["install"]):
                if shutil.which(program) is not None:
                    break
                extra = ["-y", "-q", package or program] if step == ["install"] else []
                subprocess.run(
                    ["apt-get", "-o", "DPkg::Lock::Timeout=600", *step, *extra],
                    capture_output=True,
                    timeout=900,
                    env=env,
                    check=False,
                )
        finally:
            os.close(fd)
        found = shutil.which(program)
    if found is None:
        missing_component(f"{program} is not installed", f"apt-get install {package or program}")
    return found


class Pane:
    """A shell in a tmux window of its own (its own server, so tests in parallel never meet).

    ``shell`` is ``bash`` (the default), ``zsh`` or ``fish``; ``setup`` is run by the shell
    before its first prompt (its rc file); ``path`` goes first on its PATH.
    """

    def __init__(
        self,
        folder: Path,
        columns: int = 80,
        rows: int = 24,
        *,
        shell: str = "bash",
        setup: str = "",
        path: str | None = None,
    ) -> None:
        ensure_program("tmux")
        binary = ensure_program(shell)
        self.socket = f"inturn-test-{uuid.uuid4().hex[:12]}"
        env = child_env(HISTFILE="/dev/null", TERM="xterm-256color")
        env.pop("TMUX", None)
        if path is not None:
            env["PATH"] = os.pathsep.join([path, env.get("PATH", "")])
        if shell == "bash":
            rc = folder / "bashrc"
            rc.write_text(f"PS1={shlex.quote(PROMPT)}\n{setup}\n")
            command = [binary, "--noprofile", "--rcfile", str(rc), "-i"]
        elif shell == "zsh":
            home = folder / "zsh"
            home.mkdir(exist_ok=True)
            (home / ".zshrc").write_text(f"PS1={shlex.quote(PROMPT)}\nunsetopt beep\n{setup}\n")
            env["ZDOTDIR"] = str(home)
            command = [binary, "-i"]
        elif shell == "fish":
            rc = folder / "config.fish"
            rc.write_text(
                f"function fish_prompt; printf %s {shlex.quote(PROMPT)}; end\n"
                "set -g fish_greeting\n"
                f"{setup}\n"
            )
            env["XDG_CONFIG_HOME"] = str(folder / "fish-config")  # nothing of the machine's
            command = [binary, "--no-config", "-i", "-C", f"source {shlex.quote(str(rc))}"]
        else:
            raise ValueError(shell)
        self.env = env
        self.columns = columns
        self.tmux(
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            str(columns),
            "-y",
            str(rows),
            shlex.join(command),
        )
        self.until(lambda rows: PROMPT.rstrip() in rows, "the shell's prompt")

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=SCREEN_TIMEOUT,
        )
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    def type(self, text: str) -> None:
        # A command line that ends exactly at the right margin leaves its last row marked as
        # wrapping onto the next one (the shell moves the cursor there itself), so that
        # ``rows(joined=True)`` would glue the command's first output onto it: one more space
        # moves the end off the margin.
        if (len(PROMPT) + len(text)) % self.columns == 0:
            text += " "
        self.tmux("send-keys", "-t", "top", "-l", text)
        self.tmux("send-keys", "-t", "top", "Enter")

    def keys(self, *names: str) -> None:
        self.tmux("send-keys", "-t", "top", *names)

    def text(self, text: str) -> None:
        """Type ``text`` without Enter."""
        self.tmux("send-keys", "-t", "top", "-l", text)

    def rows(self, joined: bool = False) -> list[str]:
        """The screen, one string per row (``joined``: rows that wrapped put back together)."""
        text = self.tmux("capture-pane", "-p", "-t", "top", *(["-J"] if joined else []))
        return [row.rstrip() for row in text.split("\n")[:-1]]  # -J keeps trailing blanks

    def flag(self, name: str) -> str:
        return self.tmux("display-message", "-p", "-t", "top", f"#{{{name}}}").strip()

    def until(self, seen: Callable[[list[str]], bool], what: str) -> list[str]:
        deadline = time.monotonic() + SCREEN_TIMEOUT
        while True:
            rows = self.rows()
            if seen(rows):
                return rows
            if time.monotonic() > deadline:
                shown = "\n".join(rows)
                raise AssertionError(f"the screen never showed {what}; it shows:\n{shown}")
            time.sleep(0.05)

    def exit_code(self) -> int:
        """The exit code the shell echoed (``echo exit=$?``) once the command ended."""
        rows = self.until(lambda rows: any(EXIT.match(r) for r in rows), "the exit code")
        return int(next(m.group(1) for r in rows if (m := EXIT.match(r))))

    def foreground_pid(self) -> int:
        """The process the shell runs now (inturn)."""
        shell = int(self.flag("pane_pid"))
        children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def resize(self, columns: int, rows: int) -> None:
        self.tmux("resize-window", "-t", "top", "-x", str(columns), "-y", str(rows))
        self.columns = columns

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"],
            capture_output=True,
            env=self.env,
            timeout=SCREEN_TIMEOUT,
        )
