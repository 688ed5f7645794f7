"""``python -m inturn`` is the ``inturn`` command."""

import sys

from .cli import main

sys.exit(main())
