"""The build step pyproject.toml cannot say: the man page inturn(1), written from the
command's own parser (``inturn.cli.manpage``) and installed as ``share/man/man1/inturn.1``
under the prefix that ``pip install`` uses, where ``man inturn`` finds it."""

import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
MAN_PAGE = os.path.join("build", "man", "inturn.1")  # relative, as data_files wants


def write_man_page() -> None:
    sys.path.insert(0, os.path.join(HERE, "src"))
    try:
        from inturn import __version__
        from inturn.cli.manpage import man_page
        from inturn.cli.parser import build_parser
    finally:
        sys.path.pop(0)
    target = os.path.join(HERE, MAN_PAGE)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = f"{target}.{os.getpid()}"
    with open(partial, "w", encoding="utf-8") as out:
        out.write(man_page(build_parser(), __version__))
    os.replace(partial, target)


write_man_page()
setup(data_files=[("share/man/man1", [MAN_PAGE])])
