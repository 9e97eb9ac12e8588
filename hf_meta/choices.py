"""The allowed values of hf_meta's string settings, as `Literal` types, and the one check that enforces them.

`HfArgumentParser` turns these types into command-line choices; the same types are checked at construction.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

Pooling = Literal["mean", "cls"]
HeadInit = Literal["prototypes", "zero"]
HeadPrior = Literal["mean", "sum"]
HeadSolver = Literal["auto", "newton", "lbfgs"]
Algorithm = Literal["fomaml", "reptile"]

# The class id of an episode's query text that belongs to none of its classes (`build_episodes(...,
# num_out_of_scope=...)`); its query loss is the cross-entropy to a uniform prediction (`inner_loop.example_losses`).
OUT_OF_SCOPE = -1


def check_choice(name: str, value: Any, choices: Any) -> None:
    """Refuse `value` unless it is one of the `Literal` type `choices`, naming the setting and what is allowed."""
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}.")
