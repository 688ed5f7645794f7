"""The man page inturn(1), written from the command's own parser and ``manual.py``.

``setup.py`` calls ``man_page()`` when the package is built and installs the result as
``share/man/man1/inturn.1``, so every command and option the parser knows is in the page
without anyone writing it twice.
"""

from __future__ import annotations

import argparse

from .manual import DURATIONS, ENVIRONMENT, EXAMPLES, EXIT_CODES, subcommands


def man_page(parser: argparse.ArgumentParser, version: str) -> str:
    """The page, in the man(7) macros that man-db, groff and mandoc all read."""
    out = [
        f'.TH INTURN 1 "" "inturn {_escape(version)}" "User Commands"',
        ".nh",  # no hyphenation: it split names to be typed (IN-TURN_DIR, --back-end)
        ".SH NAME",
        "inturn \\- make processes take turns: wait in line, first come first served",
        ".SH SYNOPSIS",
    ]
    commands = subcommands(parser)
    for name, _, sub in commands:
        out.append(".PP")
        out.append(f"\\fBinturn {_escape(name)}\\fR {_escape(_usage(sub, name))}")
    out.append(".PP")
    out.append("\\fBinturn\\fR [\\fICOMMAND\\fR] \\fB\\-\\-help\\fR")
    out.append(".PP")
    out.append("\\fBinturn \\-\\-version\\fR")
    out.append(".SH DESCRIPTION")
    out.append(_escape(parser.description or ""))
    out.append(".PP")
    out.append(
        _escape(
            "Whatever runs under one line name runs one at a time (or N at a time with "
            "--slots N), in the order it arrived: a late arrival waits in line, asleep, instead "
            "of failing or retrying. A holder that dies frees its turn at once, and the next "
            "holder is told that it was abandoned. inturn status shows who holds a line, who "
            "waits, in what order and since when."
        )
    )
    out.append(".PP")
    out.append(_escape(DURATIONS))
    out.append(".SH OPTIONS")
    for action in parser._actions:  # -h and --version: said once here, not in every command
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        out.append(".TP")
        out.append(_term(action))
        out.append(_escape(HELP if isinstance(action, argparse._HelpAction) else action.help or ""))
    out.append(".SH COMMANDS")
    for name, summary, sub in commands:
        out.append(f".SS inturn {_escape(name)}")
        out.append(_escape(sub.description or summary))
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            out.append(".TP")
            out.append(_term(action))
            out.append(_escape(action.help or ""))
    out.append(".SH EXAMPLES")
    for name, _, _ in commands:
        for command, meaning in EXAMPLES.get(name, ()):
            out.append(".TP")
            out.append(f"\\f(CW{_escape(command)}\\fR")
            out.append(_escape(meaning))
    out.append(".SH EXIT STATUS")
    for code, meaning in EXIT_CODES:
        out.append(".TP")
        out.append(f"\\fB{_escape(code)}\\fR")
        out.append(_escape(meaning))
    out.append(".SH ENVIRONMENT")
    for variable, meaning in ENVIRONMENT:
        out.append(".TP")
        out.append(f"\\fB{_escape(variable)}\\fR")
        out.append(_escape(meaning))
    out.append(".SH SEE ALSO")
    out.append(".BR flock (1),")
    out.append(".BR timeout (1),")
    out.append(".BR run\\-one (1)")
    return "\n".join(out) + "\n"


HELP = "show the help of inturn, or of inturn COMMAND (its options and examples), and exit"


def _usage(sub: argparse.ArgumentParser, name: str) -> str:
    """A command's usage on one line, without its ``inturn NAME`` (roff fills it)."""
    formatter = argparse.HelpFormatter(f"inturn {name}", width=10_000)
    formatter.add_usage(sub.usage, sub._actions, sub._mutually_exclusive_groups, prefix="")
    text = formatter.format_help().strip()
    return text.removeprefix(f"inturn {name}").strip()


def _term(action: argparse.Action) -> str:
    """The head of an option's or argument's entry: ``-w, --timeout SECONDS``."""
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    if not action.option_strings:
        return f"\\fI{_escape(metavar)}\\fR"
    flags = ", ".join(f"\\fB{_escape(flag)}\\fR" for flag in action.option_strings)
    if action.nargs == 0:
        return flags
    return f"{flags} \\fI{_escape(metavar)}\\fR"


def _escape(text: str) -> str:
    """Text as roff prints it: backslashes and hyphens kept, no line taken for a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = [("\\&" + line) if line[:1] in (".", "'") else line for line in text.split("\n")]
    return "\n".join(lines)
