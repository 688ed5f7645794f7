"""The layers of the package, enforced from its imports (every import, lazy ones included).

cli           the command: may import anything below it
listing       every line of one place (lines, forget_unused): uses line
line          the Python API (Line, Turn, turn, single_instance, send)
queue         the algorithm, written once
messages      single-instance messages (the protocol, the listener), written once
backends      the primitives (base) and each backend; nothing above them
core          errors, records, rule, named_tuples, names, durations, forks, win32: nothing but
              each other
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "inturn"
CORE = {"errors", "records", "rule", "named_tuples", "names", "durations", "forks", "win32"}
MAY_IMPORT = {
    "core": {"core"},
    "backends": {"core", "backends", "backends.base"},
    "backends.base": {"core"},
    "queue": {"core", "backends.base"},
    "messages": {"core", "backends.base"},
    "line": {"core", "backends", "backends.base", "queue", "messages"},
    "listing": {"core", "backends", "backends.base", "line"},
    # __init__ and __main__ re-export
    "package": {"core", "backends.base", "queue", "messages", "line", "listing"},
    "cli": {
        "core",
        "backends",
        "backends.base",
        "queue",
        "messages",
        "line",
        "listing",
        "cli",
        "package",
    },
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")[1:]  # without "inturn"
    if not parts:
        return "package"
    if parts[0] == "__main__":
        return "cli"
    if parts[0] in CORE:
        return "core"
    if parts[:2] == ["backends", "base"]:
        return "backends.base"
    return parts[0]


def imports_of(path: Path) -> set[str]:
    """The ``inturn`` modules that ``path`` imports, anywhere in it."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "inturn")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "inturn":
                continue
            folder = PACKAGE.parent / Path(*target.split("."))
            modules = [a.name for a in node.names if (folder / f"{a.name}.py").exists()]
            found.update(f"{target}.{name}" for name in modules)  # from . import win32
            if len(modules) < len(node.names):
                found.add(target)
    return found


def test_every_module_imports_only_what_its_layer_may():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        allowed = MAY_IMPORT[layer(here)]
        for target in sorted(imports_of(path)):
            if layer(target) not in allowed:
                wrong.append(f"{here} ({layer(here)}) imports {target} ({layer(target)})")
    assert not wrong, "\n".join(wrong)


def test_nothing_but_the_command_imports_the_command():
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        if layer(here) != "cli":
            assert not [t for t in imports_of(path) if t.startswith("inturn.cli")], here


def test_architecture_names_every_module():
    """ARCHITECTURE.md's map of the package names each module, so a new one is placed in it."""
    text = (PACKAGE.parent.parent / "ARCHITECTURE.md").read_text()
    tree = text[text.index("src/inturn/") : text.index("```", text.index("src/inturn/"))]
    missing = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.stem not in ("__init__", "__main__")
        and not re.search(rf"\b{re.escape(path.stem)}\b", tree)
    ]
    assert not missing, missing
