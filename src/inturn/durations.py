"""Reading and writing spans of time: ``90``, ``1.5``, ``500ms``, ``10m``, ``1h30m``."""

from __future__ import annotations

import math
import re

from .errors import UsageError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds from ``text``: a plain number of seconds, or numbers with units (ms, s, m, h,
    d) one after another, largest first: ``1h30m``. Raises ``ValueError`` if it is neither."""
    spoken = text.strip().lower()
    try:
        value = float(spoken)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"not a duration: {text!r}")
        return value
    total = 0.0
    position = 0
    last_scale = math.inf
    for match in re.finditer(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)", spoken):
        if match.start() != position:
            break
        scale = _UNITS[match.group(2)]
        if scale >= last_scale:
            raise ValueError(f"not a duration: {text!r} (give units largest first, as 1h30m)")
        total += float(match.group(1)) * scale
        position, last_scale = match.end(), scale
    if not spoken or position != len(spoken):
        raise ValueError(f"not a duration: {text!r} (use seconds, or units as in 90s, 10m, 1h30m)")
    return total


def seconds_parameter(text: str, what: str, low: float, high: float) -> float:
    """A duration given as a URL parameter, within ``low``..``high`` seconds, or one clear line."""
    try:
        value = parse_duration(text)
    except ValueError:
        value = math.nan
    if not low <= value <= high:
        raise UsageError(f"{what}={text!r}: give a duration from {low:g}s to {high:g}s")
    return value


def duration(seconds: float | None) -> str:
    """``45s``, ``1m12s``, ``2h03m``, ``3d04h``: short enough for a status line, and in days
    past one, for a turn held for weeks (a single instance) reads badly in hours. Never
    negative: a time taken on another host's clock may be a little ahead of ours."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"
