"""What `MetaTrainer.select_adaptation` can sweep on a given trainer: settings it cannot vary are refused up front.

A setting the sweep cannot vary would score every value the same (bit-identical query logits), and the first value
listed would be saved in `adaptation_config.json` as if it had won. Shared by `select_adaptation` and the recipes,
which check their `--adaptation_grid` before meta-training.
"""

from __future__ import annotations

import dataclasses
import itertools
from types import SimpleNamespace
from typing import Any

from .adaptation_config import AdaptationConfig

# The collator edits each support set with the trainer's own augmentation settings, before the sweep sees it.
AUGMENTATION_SETTINGS = ("support_augmentation", "augmented_views", "augmentation_strength")
# With a learned inner loop, the step sizes and the logit scale are its meta-learned values.
LEARNED_SETTINGS = ("inner_learning_rate", "logit_scale")

# Settings an episode's adaptation never reads: the tokenisation and encoder are fixed per trainer, and the
# strength grid and folds only act in `FewShotClassifier.fit` (episodes adapt with `episode_strength()`).
UNSWEEPABLE = (
    "base_model",
    "max_length",
    "pooling",
    "normalize_embeddings",
    "learn_inner_learning_rates",
    "adapter_strength_grid",
    "adapter_strength_folds",
)


def grid_combinations(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of a settings grid, in order (the first value of each setting first)."""
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"`grid` must be a non-empty dict of setting -> list of values, got {grid!r}.")
    known = set(AdaptationConfig.field_names()) - set(UNSWEEPABLE)
    for name, values in grid.items():
        if name not in known:
            raise ValueError(
                f"`grid` key {name!r} is not a setting `select_adaptation` can sweep; choose from {sorted(known)}."
            )
        if not isinstance(values, list | tuple) or not values:
            raise ValueError(f"`grid[{name!r}]` must be a non-empty list of values, got {values!r}.")
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[name] for name in names))]


# Settings an adaptation reads only when another setting lets it: name -> (when it is read, why it is not).
CONDITIONAL_SETTINGS = {
    "head_l2": (lambda c, names: c.head_fit_steps > 0, "`head_fit_steps` is 0 (no head is fitted)"),
    "head_prior": (lambda c, names: c.head_fit_steps > 0, "`head_fit_steps` is 0 (no head is fitted)"),
    "inner_learning_rate": (lambda c, names: c.inner_steps > 0, "`inner_steps` is 0 (no inner step is taken)"),
    "label_name_weight": (
        lambda c, names: c.use_label_names and names,
        "no class name is embedded (`use_label_names` is off, or the collator tokenises no names)",
    ),
    "adapter_strength_fallback": (
        lambda c, names: c.adapter_strength == "auto",
        "`adapter_strength` is a number (the fallback only stands in for 'auto')",
    ),
}


def check_sweepable(grid: dict[str, list], current: Any, *, names_in_collator: bool, learned_inner_loop: bool) -> None:
    """Refuse a grid that lists a value the sweep could not use.

    Args:
        grid: setting name -> candidate values.
        current: the trainer's adaptation settings (values equal to these are allowed: they change nothing).
        names_in_collator: whether the episode collator tokenises the class names (`use_label_names` at build).
        learned_inner_loop: whether the trainer meta-learns its step sizes (`learn_inner_learning_rates`).
    """
    for name, values in grid.items():
        if not isinstance(values, list | tuple):
            continue  # the shape of the grid is checked where the combinations are built
        other = [v for v in values if v != getattr(current, name, None)]
        if not other:
            continue
        if name in AUGMENTATION_SETTINGS:
            raise ValueError(
                f"`{name}` cannot be swept by `select_adaptation` (grid values {list(values)}): the episode collator "
                f"edits every support set with the trainer's own setting ({getattr(current, name)!r}), so each value "
                f"would score the same and the first would be saved untested. Drop `{name}` from the grid, or "
                "meta-train once per value."
            )
        if name == "use_label_names" and True in other and not names_in_collator:
            raise ValueError(
                f"`use_label_names` cannot be swept to True (grid values {list(values)}): this trainer was built "
                "with `use_label_names=False`, so its collator never tokenised the class names and the sweep would "
                "score the same logits. Build the trainer with `use_label_names=True` (then `[True, False]` sweeps "
                "both), or drop it from the grid."
            )
        if name in LEARNED_SETTINGS and learned_inner_loop:
            raise ValueError(
                f"`{name}` cannot be swept with `learn_inner_learning_rates=True` (grid values {list(values)}): the "
                "adaptation uses the meta-learned step sizes and logit scale, so every value would score the same. "
                f"Drop `{name}` from the grid."
            )
    _check_every_setting_is_read(grid, current, names_in_collator)


def _check_every_setting_is_read(grid: dict[str, list], current: Any, names_in_collator: bool) -> None:
    """Refuse a swept setting that no combination of the grid reads (e.g. `head_l2` when every combination has
    `head_fit_steps=0`): its values would all score the same."""
    swept = {name: values for name, values in grid.items() if isinstance(values, list | tuple) and values}
    conditional = [
        name
        for name in swept
        if name in CONDITIONAL_SETTINGS and any(v != getattr(current, name, None) for v in swept[name])
    ]
    if not conditional:
        return
    combinations = [dict(zip(swept, values)) for values in itertools.product(*swept.values())]
    for name in conditional:
        is_read, reason = CONDITIONAL_SETTINGS[name]
        settings = [{**current.to_dict(), **combination} for combination in combinations]
        if not any(is_read(SimpleNamespace(**values), names_in_collator) for values in settings):
            raise ValueError(
                f"`{name}` cannot be swept by `select_adaptation` (grid values {list(grid[name])}): {reason} in every "
                "combination, so each value would score the same and the first would be saved untested. Sweep the "
                f"setting that enables it too, or drop `{name}` from the grid."
            )


def check_grid(grid: dict[str, list], config: Any, *, names_in_collator: bool, learned_inner_loop: bool) -> None:
    """Every value and every combination of `grid` checked against `config` (an [`AdaptationConfig`]), before any
    training: unknown or unsweepable keys, invalid values (`head_init=protos`, `inner_steps=-3`), combinations the
    settings refuse (a zero head never fitted), and what [`check_sweepable`] refuses. Errors name the grid and the
    combination."""
    if not grid:
        return
    combinations = grid_combinations(grid)
    base = dataclasses.replace(config)  # a plain copy whose fields `replace` validates
    for combination in combinations:
        try:
            dataclasses.replace(base, **combination)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"`adaptation_grid` combination {combination} is not a valid adaptation setting: {err} Fix or drop "
                "that value before meta-training."
            ) from None
    check_sweepable(grid, config, names_in_collator=names_in_collator, learned_inner_loop=learned_inner_loop)
