"""``python -m inturn`` is the ``inturn`` command."""

from .cli import command

command()
