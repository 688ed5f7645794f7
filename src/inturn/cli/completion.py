"""``inturn completion bash|zsh|fish``: shell completion scripts made from the parser itself.

The commands, their options, which options take a value and what the arguments are all come
from ``build_parser()``, so a command or option added there is completed without a change
here. What an argument is, is read from the parser: a ``NAME`` is a line name, the rest of
``inturn run`` is a command with its own arguments, a ``DIR`` a folder, choices are offered
as they are. Line names come from ``inturn status --names``, run at the moment of completing
with the ``--dir``, ``--backend`` or ``--machine`` typed on the command line, by the same
``inturn`` that is being completed.

Nothing read from a line name is ever evaluated by the shell: bash filters the names itself
(never ``compgen -W``, which expands ``$(...)``), zsh and fish add them as plain words.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

from .manual import subcommands

SHELLS = ("bash", "zsh", "fish")


class Option(NamedTuple):
    flags: tuple[str, ...]
    help: str
    value: str  # "" for a flag, else what its value is: "dir", "file", "choice" or "text"
    metavar: str
    choices: tuple[str, ...]


class Argument(NamedTuple):
    kind: str  # "line", "command" (a command and its arguments), "file", "choice" or "text"
    times: str  # "1", "?" (may be left out), "+" (one or more), "*", or "rest" (all that follow)
    metavar: str
    choices: tuple[str, ...]


class Command(NamedTuple):
    name: str
    help: str
    options: tuple[Option, ...]
    arguments: tuple[Argument, ...]


def describe(parser: argparse.ArgumentParser) -> tuple[Command, list[Command]]:
    """The top level (its options) and each command, as the parser defines them."""
    commands = [_command(name, sub, about) for name, about, sub in subcommands(parser)]
    return _command("", parser, ""), commands


def _command(name: str, parser: argparse.ArgumentParser, help_text: str) -> Command:
    options, arguments = [], []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
        choices = tuple(str(c) for c in action.choices or ())
        if action.option_strings:
            if action.nargs == 0:
                value = ""
            elif choices:
                value = "choice"
            elif metavar in ("DIR", "FOLDER"):
                value = "dir"
            elif metavar in ("FILE", "PATH"):
                value = "file"
            else:
                value = "text"
            help_text_of = (action.help or "").replace("%%", "%")
            options.append(
                Option(tuple(action.option_strings), help_text_of, value, metavar, choices)
            )
            continue
        if action.nargs == argparse.REMAINDER and "COMMAND" in metavar:
            kind, times = "command", "rest"
        elif action.nargs == argparse.REMAINDER:  # words handed over as they are (send)
            kind, times = "file", "*"
        else:
            kind = "choice" if choices else "line" if metavar == "NAME" else "text"
            times = action.nargs if action.nargs in ("?", "+", "*") else "1"
        arguments.append(Argument(kind, times, metavar, choices))
    return Command(name, help_text, tuple(options), tuple(arguments))


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for ``shell``, made from ``parser``."""
    top, commands = describe(parser)
    if shell == "bash":
        return _bash(top, commands)
    if shell == "zsh":
        return _zsh(top, commands)
    return _fish(top, commands)


def short(text: str) -> str:
    """The first clause of a help text, for a menu of completions."""
    cut = len(text)
    for mark in (": ", "; ", " ("):
        found = text.find(mark)
        if found >= 12:
            cut = min(cut, found)
    return text[:cut].strip()


def _arguments_words(command: Command) -> str:
    """What the arguments are, for the bash and fish walkers: ``line?``, ``line+``,
    ``command``, ``file*``, ``choice=bash,zsh,fish``, ``text``."""
    words = []
    for argument in command.arguments:
        if argument.kind == "command":
            words.append("command")
            continue
        kind = _kind(argument.kind, argument.choices)
        words.append(kind + ("" if argument.times == "1" else argument.times))
    return " ".join(words)


def _kind(kind: str, choices: tuple[str, ...]) -> str:
    """``choice=a,b,c`` for a choice, else the kind itself."""
    return f"choice={','.join(choices)}" if kind == "choice" else kind


def _single_quoted(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


# --------------------------------------------------------------------------- bash

_BASH = r"""# bash completion for inturn, made by: inturn completion bash
# Install: eval "$(inturn completion bash)" in ~/.bashrc, or save it as
# ~/.local/share/bash-completion/completions/inturn

_inturn_spec() {  # $1: a command; sets flags, valued (option=kind) and args (what follows)
    case $1 in
@SPEC@
        *) return 1 ;;
    esac
}

_inturn_words() {  # COMP_WORDS with the pieces that = and : split off put back together
    local line=$COMP_LINE i w gap j=-1
    words=() at=() cword=0
    for ((i = 0; i < ${#COMP_WORDS[@]}; i++)); do
        w=${COMP_WORDS[i]}
        gap=${line%%[![:space:]]*}
        line=${line:${#gap}}
        if ((j >= 0)) && [[ -z $gap ]]; then
            words[j]+=$w
        else
            words[++j]=$w
            at[j]=$i
        fi
        line=${line:${#w}}
        ((i == COMP_CWORD)) && cword=$j
    done
}

_inturn_dequote() {  # $1 as the shell would pass it, for plain quoting; sets REPLY
    REPLY=$1
    case $REPLY in
        \'*\') REPLY=${REPLY:1:${#REPLY}-2} ;;
        \"*\") REPLY=${REPLY:1:${#REPLY}-2} ;;
        *) REPLY=${REPLY//\\/} ;;
    esac
    [[ $REPLY == '~' || $REPLY == '~/'* ]] && REPLY=$HOME${REPLY:1}
}

_inturn_add() {  # each line of stdin, as one more completion (mapfile needs bash 4)
    local line
    while IFS= read -r line; do COMPREPLY+=("$line"); done
}

_inturn_offer() {  # $1: the word so far; then inturn's own words (no quoting needed)
    local so_far=$1 word
    shift
    for word; do
        [[ $word == "$so_far"* ]] && COMPREPLY+=("$word")
    done
}

_inturn_lines() {  # line names starting with $1, from inturn status --names
    local so_far=$1 where=() i name quoted
    for ((i = 1; i < end; i++)); do
        case ${words[i]} in
            --machine) where+=(--machine) ;;
            --dir | --backend)
                _inturn_dequote "${words[i + 1]}"
                where+=("${words[i]}" "$REPLY")
                ;;
            --dir=* | --backend=*)
                _inturn_dequote "${words[i]#*=}"
                where+=("${words[i]%%=*}=$REPLY")
                ;;
        esac
    done
    _inturn_dequote "$so_far"
    so_far=$REPLY
    _inturn_dequote "${words[0]}"
    while IFS= read -r name; do
        if [[ $name == "$so_far"* ]]; then
            printf -v quoted %q "$name"
            COMPREPLY+=("$quoted")
        fi
    done < <("$REPLY" status --names "${where[@]}" 2>/dev/null)
}

_inturn_value() {  # $1: what the value is; $2: the value so far
    case $1 in
        dir)
            compopt -o filenames 2>/dev/null
            _inturn_add < <(compgen -d -- "$2")
            ;;
        file)
            compopt -o filenames 2>/dev/null
            _inturn_add < <(compgen -f -- "$2")
            ;;
        choice=*)
            local IFS=,
            # shellcheck disable=SC2086
            _inturn_offer "$2" ${1#choice=}
            ;;
    esac
}

_inturn_kind_of() {  # $1: an option; sets REPLY to what its value is, or fails for a flag
    local entry
    for entry in $valued; do
        if [[ ${entry%%=*} == "$1" ]]; then
            REPLY=${entry#*=}
            return 0
        fi
    done
    return 1
}

_inturn() {
    local words at cword
    _inturn_words
    local cur=${words[cword]} sub= flags= valued= args= commands= end=${#words[@]}
    local i w n=0 ended=0 expect= rest=-1 kinds
    _inturn_spec ''
    COMPREPLY=()
    for ((i = 1; i < cword; i++)); do
        w=${words[i]}
        if [[ -n $expect ]]; then
            expect=
            continue
        fi
        if [[ -z $sub ]]; then
            [[ $w == -* ]] && continue
            sub=$w
            _inturn_spec "$sub" || return 0
            continue
        fi
        if ((!ended)); then
            if [[ $w == -- ]]; then
                ended=1
                continue
            fi
            if [[ $w == -?* ]]; then
                _inturn_kind_of "$w" && expect=$REPLY
                continue
            fi
        fi
        read -ra kinds <<<"$args"
        case ${kinds[n]} in
            command)
                rest=$i
                end=$i
                break
                ;;
            *+ | *\*) ;;
            *) ((n++)) ;;
        esac
    done
    if ((rest >= 0)); then  # within the command that inturn run runs
        if declare -F _command_offset >/dev/null; then
            _command_offset "${at[rest]}"
        else
            compopt -o default 2>/dev/null
        fi
        return 0
    fi
    if [[ -n $expect ]]; then
        _inturn_value "$expect" "$cur"
        return 0
    fi
    if [[ -z $sub ]]; then
        if [[ $cur == -* ]]; then
            # shellcheck disable=SC2086
            _inturn_offer "$cur" $flags
        else
            # shellcheck disable=SC2086
            _inturn_offer "$cur" $commands
        fi
        return 0
    fi
    read -ra kinds <<<"$args"
    if [[ ${kinds[n]} == command ]]; then  # its first word: options end at NAME
        _inturn_add < <(compgen -c -- "$cur")
        return 0
    fi
    if ((!ended)) && [[ $cur == --*=* ]] && _inturn_kind_of "${cur%%=*}"; then
        _inturn_value "$REPLY" "${cur#*=}"
        return 0
    fi
    if ((!ended)) && [[ $cur == -* ]]; then
        local entry options=()
        for entry in $valued; do options+=("${entry%%=*}"); done
        # shellcheck disable=SC2086
        _inturn_offer "$cur" $flags "${options[@]}"
        return 0
    fi
    case ${kinds[n]} in
        line*) _inturn_lines "$cur" ;;
        file*) _inturn_value file "$cur" ;;
        choice=*) _inturn_value "${kinds[n]%[?+*]}" "$cur" ;;
    esac
    if [[ $cur == *[=:]* ]]; then  # bash replaces only what follows the last = or :
        local keep=${cur%"${cur##*[=:]}"}
        COMPREPLY=("${COMPREPLY[@]#"$keep"}")
    fi
    return 0
}

complete -F _inturn inturn
"""


def _bash(top: Command, commands: list[Command]) -> str:
    def case(pattern: str, command: Command, extra: str = "") -> str:
        flags = [f for o in command.options if not o.value for f in o.flags]
        valued: list[str] = []
        for option in (o for o in command.options if o.value):
            kind = _kind(option.value, option.choices)
            valued.extend(f"{flag}={kind}" for flag in option.flags)
        return (
            f"        {pattern})\n"
            f"            flags={_single_quoted(' '.join(flags))}\n"
            f"            valued={_single_quoted(' '.join(valued))}\n"
            f"            args={_single_quoted(_arguments_words(command))}{extra}\n"
            "            ;;"
        )

    names = " ".join(c.name for c in commands)
    cases = [case("''", top, f"\n            commands={_single_quoted(names)}")]
    cases.extend(case(_single_quoted(c.name), c) for c in commands)
    return _BASH.replace("@SPEC@", "\n".join(cases))


# --------------------------------------------------------------------------- zsh

_ZSH = r"""#compdef inturn
# zsh completion for inturn, made by: inturn completion zsh
# Install: save it as _inturn in a folder of $fpath (before compinit runs), e.g.
#   mkdir -p ~/.zfunc && inturn completion zsh > ~/.zfunc/_inturn
#   with   fpath=(~/.zfunc $fpath)   in ~/.zshrc
# or, for this shell only: source <(inturn completion zsh)

_inturn_lines() {  # line names from inturn status --names, with the --dir/--backend/--machine typed
  local -a where names
  local i
  for (( i = 1; i <= $#words; i++ )); do
    case $words[i] in
      --machine) where+=(--machine) ;;
      --dir|--backend) where+=($words[i] ${(Q)words[i+1]}) ;;
      --dir=*|--backend=*) where+=(${(Q)words[i]}) ;;
    esac
  done
  names=(${(f)"$($_inturn_prog status --names $where 2>/dev/null)"})
  _wanted lines expl 'line name' compadd -a - names
}

_inturn_command() {  # the command inturn run runs (after NAME and --), as if typed alone
  shift words
  (( CURRENT-- ))
  if [[ $words[1] == -- ]]; then
    shift words
    (( CURRENT-- ))
  fi
  if (( CURRENT == 1 )); then
    _command_names -e
  else
    _normal
  fi
}

_inturn() {
  local curcontext=$curcontext state state_descr line ret=1
  local _inturn_prog=${(Q)words[1]}
  [[ $_inturn_prog == '~'* ]] && _inturn_prog=$HOME${_inturn_prog#\~}
  typeset -A opt_args
  _arguments -C @TOP@ \
    '1: :->command' \
    '*:: :->args' && ret=0
  case $state in
    command)
      local -a commands
      commands=(
@COMMANDS@
      )
      _describe -t commands 'inturn command' commands && ret=0
      ;;
    args)
      curcontext=${curcontext%:*:*}:inturn-$words[1]:
      case $words[1] in
@CASES@
      esac
      ;;
  esac
  return ret
}

if [[ $funcstack[1] == _inturn ]]; then
  _inturn "$@"
else
  compdef _inturn inturn
fi
"""


def _zsh_text(text: str) -> str:
    """Text inside ``[...]`` of an _arguments spec, within single quotes."""
    escaped = text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    return escaped.replace(":", "\\:").replace("'", "'\\''")


def _zsh_option(option: Option) -> str:
    flags = option.flags
    exclude = f"({' '.join(flags)})" if len(flags) > 1 else ""
    if option.flags in (("-h", "--help"),):
        exclude = "(- *)"
    about = f"[{_zsh_text(short(option.help))}]"
    if not option.value:
        value = ""
    else:
        message = _zsh_text(option.metavar.lower())
        action = {
            "dir": "_files -/",
            "file": "_files",
            "choice": f"({' '.join(option.choices)})",
        }.get(option.value, " ")
        value = f":{message}:{action}"
    if len(flags) == 1:
        flag = flags[0]
        if option.value:
            flag += "=" if flag.startswith("--") else "+"
        return f"'{exclude}{flag}{about}{value}'"
    marked = [f + ("" if not option.value else "=" if f.startswith("--") else "+") for f in flags]
    return f"'{exclude}'{{{','.join(marked)}}}'{about}{value}'"


def _zsh_argument(argument: Argument) -> str:
    message = _zsh_text(argument.metavar.lower().replace("_", " "))
    action = {
        "line": "_inturn_lines",
        "command": "_inturn_command",
        "file": "_files",
        "choice": f"({' '.join(argument.choices)})",
    }.get(argument.kind, " ")
    if argument.kind == "line":
        message = "line name"
    if argument.times == "rest":
        return f"'*::{message}:{action}'"
    if argument.times in ("+", "*"):
        return f"'*:{message}:{action}'"
    optional = ":" if argument.times == "?" else ""
    return f"':{optional}{message}:{action}'"


def _zsh(top: Command, commands: list[Command]) -> str:
    top_specs = " ".join(_zsh_option(o) for o in top.options)
    listed = "\n".join(
        f"        {_single_quoted(c.name.replace(':', chr(92) + ':') + ':' + short(c.help))}"
        for c in commands
    )
    cases = []
    for command in commands:
        # After the first word of a command to run, its words are its own, not inturn's.
        flags = "-s -S -A '-*'" if any(a.times == "rest" for a in command.arguments) else "-s -S"
        specs = [_zsh_option(o) for o in command.options]
        specs.extend(_zsh_argument(a) for a in command.arguments)
        joined = " \\\n            ".join(specs)
        cases.append(
            f"        {_single_quoted(command.name)})\n"
            f"          _arguments {flags} \\\n            {joined} && ret=0\n"
            "          ;;"
        )
    return (
        _ZSH.replace("@TOP@", top_specs)
        .replace("@COMMANDS@", listed)
        .replace("@CASES@", "\n".join(cases))
    )


# --------------------------------------------------------------------------- fish

_FISH = r"""# fish completion for inturn, made by: inturn completion fish
# Install: mkdir -p ~/.config/fish/completions &&
#   inturn completion fish > ~/.config/fish/completions/inturn.fish
# or, in ~/.config/fish/config.fish: inturn completion fish | source

function __inturn_spec --argument-names command
    # Two lines: the options that take a value, and what the arguments are.
    switch $command
@SPEC@
        case '*'
            return 1
    end
end

function __inturn_state
    # Where the word being completed stands: the command, then "option", "value", an
    # argument's kind ("line", "command", ...) or "inside" (with the first word of the command
    # run by inturn run); an empty command before one is given.
    set -l tokens (commandline -opc)
    set -l command ''
    set -l valued
    set -l kinds
    set -l n 1
    set -l ended 0
    set -l expect 0
    set -l i 1
    for token in $tokens[2..-1]
        set i (math $i + 1)
        if test $expect = 1
            set expect 0
            continue
        end
        if test -z "$command"
            string match -q -- '-*' $token; and continue
            set command $token
            set -l spec (__inturn_spec $command); or begin
                echo $command unknown
                return
            end
            set valued (string split -n ' ' -- $spec[1])
            set kinds (string split -n ' ' -- $spec[2])
            continue
        end
        if test $ended = 0
            if test "$token" = --
                set ended 1
                continue
            end
            if string match -q -- '-?*' $token
                contains -- $token $valued; and set expect 1
                continue
            end
        end
        switch "$kinds[$n]"
            case command
                echo $command inside $i
                return
            case '*+' '*\*'
            case '*'
                set n (math $n + 1)
        end
    end
    if test $expect = 1
        echo $command value
    else if test -z "$command"
        echo - command
    else if test "$kinds[$n]" = command
        echo $command command (math (count $tokens) + 1)
    else if test $ended = 0; and string match -q -- '-*' (commandline -ct)
        echo $command option
    else
        echo $command (string replace -r '=.*|[?+*]$' '' -- "$kinds[$n]")
    end
end

function __inturn_at --argument-names command what
    # Whether the word being completed is $what of inturn $command ("-": no command yet).
    set -l state (string split ' ' -- (__inturn_state))
    test "$state[1]" = "$command"; and test "$state[2]" = "$what"
end

function __inturn_options --argument-names command
    # Whether inturn $command may take an option here (not within the command it runs).
    set -l state (string split ' ' -- (__inturn_state))
    test "$state[1]" = "$command"; and not contains -- "$state[2]" inside command
end

function __inturn_lines
    set -l tokens (commandline -opc)
    set -l where
    for i in (seq 2 (count $tokens))
        switch $tokens[$i]
            case --machine
                set -a where --machine
            case --dir --backend
                set -a where $tokens[$i] $tokens[(math $i + 1)]
            case '--dir=*' '--backend=*'
                set -a where $tokens[$i]
        end
    end
    $tokens[1] status --names $where 2>/dev/null
end

function __inturn_command
    # The command inturn run runs, and its arguments, completed as if typed alone.
    set -l state (string split ' ' -- (__inturn_state))
    set -l tokens (commandline -opc)
    set -l words (commandline -ct)
    if test $state[3] -le (count $tokens)
        set words (string escape -- $tokens[$state[3]..-1]) $words
    end
    complete -C (string join ' ' -- $words)
end

complete -c inturn -e
complete -c inturn -f
@COMPLETES@
"""


def _fish_option(condition: str, option: Option) -> str:
    parts = ["complete -c inturn", f"-n {_single_quoted(condition)}"]
    for flag in option.flags:
        if flag.startswith("--"):
            parts.append(f"-l {flag[2:]}")
        elif len(flag) == 2:
            parts.append(f"-s {flag[1]}")
        else:
            parts.append(f"-o {flag[1:]}")
    if option.value:
        parts.append("-r" if option.value == "file" else "-x")
        if option.value == "dir":
            parts.append("-a '(__fish_complete_directories (commandline -ct))'")
        elif option.value == "file":
            parts.append("-F")
        elif option.value == "choice":
            parts.append(f"-a {_single_quoted(' '.join(option.choices))}")
    parts.append(f"-d {_single_quoted(short(option.help))}")
    return " ".join(parts)


def _fish(top: Command, commands: list[Command]) -> str:
    cases = []
    for command in commands:
        valued = " ".join(f for o in command.options if o.value for f in o.flags)
        cases.append(
            f"        case {_single_quoted(command.name)}\n"
            f"            echo {_single_quoted(valued)}\n"
            f"            echo {_single_quoted(_arguments_words(command))}"
        )
    lines = []
    for option in top.options:
        lines.append(_fish_option("__inturn_at - command", option))
    for command in commands:
        lines.append(
            f"complete -c inturn -n '__inturn_at - command' -a {_single_quoted(command.name)} "
            f"-d {_single_quoted(short(command.help))}"
        )
    for command in commands:
        name = command.name
        for option in command.options:
            lines.append(_fish_option(f"__inturn_options {name}", option))
        for argument in command.arguments:
            if argument.kind == "line":
                lines.append(
                    f"complete -c inturn -n '__inturn_at {name} line' -a '(__inturn_lines)'"
                )
            elif argument.kind == "command":
                lines.append(
                    f"complete -c inturn -n '__inturn_at {name} command; "
                    f"or __inturn_at {name} inside' -a '(__inturn_command)'"
                )
            elif argument.kind == "file":
                lines.append(f"complete -c inturn -n '__inturn_at {name} file' -F")
            elif argument.kind == "choice":
                choices = _single_quoted(" ".join(argument.choices))
                lines.append(f"complete -c inturn -n '__inturn_at {name} choice' -a {choices}")
    return _FISH.replace("@SPEC@", "\n".join(cases)).replace("@COMPLETES@", "\n".join(lines))
