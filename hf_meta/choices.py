"""The allowed values of hf_meta's string settings, as `Literal` types, and the one check that enforces them.

`HfArgumentParser` turns these types into command-line choices; the same types are checked at construction.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

Pooling = Literal["mean", "cls"]
HeadInit = Literal["prototypes", "zero"]
HeadPrior = Literal["mean", "sum"]
Algorithm = Literal["fomaml", "reptile"]


def check_choice(name: str, value: Any, choices: Any) -> None:
    """Refuse `value` unless it is one of the `Literal` type `choices`, naming the setting and what is allowed."""
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}.")
