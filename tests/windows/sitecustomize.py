"""Imported by the tests' Windows Python as it starts (``import site`` in its ``._pth``).

Creates the file ``INTURN_TEST_STARTED`` names, so that the harness can tell a process that
Wine failed to start from one that ran and failed (``wine.WinProcess.never_ran``).
"""

import os

_MARK = os.environ.get("INTURN_TEST_STARTED")
if _MARK:
    with open(_MARK, "a"):
        pass
