"""What ``--help`` and the man page say beyond the options: examples, exit codes, variables.

Written once here, so that ``inturn --help``, ``inturn run --help`` and ``inturn(1)`` agree.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

# (command line, what it does), per subcommand; "" is the top level.
EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "run": (
        ("inturn run nightly -- ./backup.sh", "wait in line, run, free the turn"),
        ("inturn run -n nightly -- ./backup.sh", "busy? exit 75 at once, naming the holder"),
        ("inturn run -w 10m -c 'make all' build", "give up after 10 minutes in line; sh -c"),
        ("inturn run -s 2 render -- ./render.sh a", "two at a time"),
        ("inturn run --shared index -- ./query.sh", "readers together, a writer alone"),
        ("inturn run -q -n cleanup -- ./tidy.sh", "for cron: silent when busy (exit 75)"),
    ),
    "status": (
        ("inturn status", "every line: who holds it, how many wait"),
        ("inturn status nightly", "holders, then waiters in arrival order"),
        ("inturn status --json nightly", "the same for scripts"),
        ("inturn status --prune", "forget unused lines first"),
    ),
    "top": (
        ("inturn top", "every line, live"),
        ("inturn top nightly", "one line, live; q quits"),
    ),
    "wait": (("inturn wait -w 1h deploy", "until everyone now in line has finished"),),
    "forget": (("inturn forget nightly old-job", "remove lines nobody uses any more"),),
    "send": (
        ("inturn send my-editor -- notes.txt", "the running instance opens it; prints its reply"),
        (
            "inturn send -v -w 30 my-editor -- a.txt",
            "say when it took it; wait 30 s for the answer",
        ),
        ("inturn send --data '{\"line\": 12}' my-editor -- a.txt", "send a JSON value along"),
    ),
    "completion": (
        ('eval "$(inturn completion bash)"', "in ~/.bashrc"),
        (
            "mkdir -p ~/.zfunc && inturn completion zsh > ~/.zfunc/_inturn",
            "with fpath=(~/.zfunc $fpath) in ~/.zshrc",
        ),
        ("inturn completion fish | source", "in ~/.config/fish/config.fish"),
    ),
}
EXAMPLES[""] = (
    EXAMPLES["run"][0],
    EXAMPLES["run"][1],
    EXAMPLES["run"][2],
    EXAMPLES["status"][1],
    EXAMPLES["top"][0],
    EXAMPLES["wait"][0],
)

# (code, when); the order a reader looks them up in.
EXIT_CODES: tuple[tuple[str, str], ...] = (
    ("N", "inturn run: the command's own exit code (128+N if signal N killed it)"),
    ("0", "status, top, wait, forget, completion: done; send: the reply is printed"),
    (
        "1",
        "inturn send: the running instance answered with an error (its handler raised, or "
        "it refused you)",
    ),
    (
        "75",
        "run: busy with --no-wait or --max-waiting, or --timeout ran out; wait: --timeout "
        "ran out (for both, --conflict-exit-code changes it); forget: the line is in use; "
        "send: no answer within --timeout",
    ),
    (
        "76",
        "a server backend lost the turn: while the command ran (it was stopped), or as the "
        "turn came (it never started)",
    ),
    ("77", "a later --newest-wins run replaced this one; its command never started"),
    (
        "69",
        "a server backend is unavailable, try again later: it does not answer, is starting "
        "or shutting down, or has no connection left (a waiter's too, once it lost its place "
        "and could not join again for 60 s); inturn send: also no instance runs or listens, "
        "or it ended before it answered",
    ),
    ("126", "the command cannot be run (not executable, a folder; on Windows, not a program)"),
    ("127", "the command was not found (or the interpreter on its #! line)"),
    (
        "130",
        "interrupted by Ctrl-C while waiting, or before the command started (128+N for "
        "another signal N); for SIGINT inturn dies of the signal",
    ),
    ("141", "whoever read the output stopped reading (inturn status | head -1)"),
    (
        "2",
        "usage error, unusable setup (a wrong password, a missing database or grant, a host "
        "name that does not exist) or system error: one inturn: line says which",
    ),
)

# (variable, meaning)
ENVIRONMENT: tuple[tuple[str, str], ...] = (
    (
        "INTURN_DIR",
        "folder of your own lines (default /tmp/inturn-UID; on macOS inturn in "
        "your cache folder; %LOCALAPPDATA%\\inturn on Windows); --dir beats it",
    ),
    (
        "INTURN_MACHINE_DIR",
        "folder of the lines --machine shares between the users of the "
        "machine (default /tmp, where their files are named inturn:NAME:...; "
        "%ProgramData%\\inturn on Windows)",
    ),
    (
        "INTURN_BACKEND",
        "a postgresql:// or redis:// URL where lines live, to take turns across "
        "machines (local: this machine's folders); --backend or --dir beats it, and it "
        "beats INTURN_DIR and INTURN_MACHINE_DIR",
    ),
    ("INTURN_NAME", "given to the command of inturn run: the line's name"),
    ("INTURN_TICKET", "given to the command: its ticket, a number that only grows"),
    (
        "INTURN_ABANDONED",
        "given to the command: 1 if the previous holder died holding the turn, else 0",
    ),
    (
        "INTURN_FDS",
        "given to the command: the descriptors through which it holds the turn (a run of "
        "the same line that it starts closes them first)",
    ),
)

DURATIONS = (
    "Durations are seconds (90, 1.5), or numbers with units largest first (500ms, 10m, "
    "1h30m, 2d; ms s m h d, in any case: 10M is ten minutes)."
)


DURATION_COMMANDS = ("", "run", "wait", "status", "top", "send")  # whose options take one
SEE_ALSO = "Exit codes and variables: inturn --help, or man inturn."


def epilog(command: str) -> str:
    """The end of ``inturn COMMAND --help`` (``""``: of ``inturn --help``): its examples,
    then, for the top level and ``run``, the exit codes and the environment (the other
    commands say where to find them)."""
    parts = [_table("examples:", EXAMPLES.get(command, ()), code_first=True)]
    if command in DURATION_COMMANDS:
        parts.append(DURATIONS)
    if command in ("", "run"):
        parts.append(_table("exit codes:", EXIT_CODES))
        parts.append(_table("environment:", ENVIRONMENT))
    if command == "":
        parts.append("See inturn COMMAND --help, and man inturn.")
    else:
        parts.append(SEE_ALSO if command != "run" else "See also man inturn.")
    return "\n\n".join(p for p in parts if p)


def _table(title: str, rows: Sequence[tuple[str, str]], code_first: bool = False) -> str:
    if not rows:
        return ""
    lines = [title]
    if code_first:  # a command line, then what it does on the next line
        for left, right in rows:
            lines.append(f"  {left}")
            lines.append(f"      {right}")
        return "\n".join(lines)
    width = max(len(left) for left, _ in rows)
    for left, right in rows:  # one line a row: the help's formatter wraps it to the terminal
        lines.append(f"  {left.ljust(width)}  {right}")
    return "\n".join(lines)


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """Each command of ``parser``: its name, its one-line help and its own parser."""
    found: list[tuple[str, str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            found.extend((name, helps.get(name, ""), sub) for name, sub in action.choices.items())
    return found
