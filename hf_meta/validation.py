"""Input checks shared by every layer: ints (a `bool` is not an int), finite numbers.

Each check returns a bool or raises with the argument named in backticks, what was received and the fix, so the
classifier, the episode builders, the adaptation settings and self-training word their errors the same way.
"""

from __future__ import annotations

import math
from typing import Any


def is_int(value: Any) -> bool:
    """Whether `value` is an int and not a `bool` (`True` is an `int` to Python, never a count to hf_meta)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether `value` is a finite int or float and not a `bool`."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
