"""`MetaTrainingArguments`: `TrainingArguments` plus the meta-learning algorithm and the adaptation settings."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .adaptation_config import AdaptationConfig
from .choices import Algorithm, check_choice


@dataclass
class MetaTrainingArguments(TrainingArguments, AdaptationConfig):
    """Arguments of [`MetaTrainer`]: `TrainingArguments`, the algorithm, and every [`AdaptationConfig`] field.

    The adaptation fields (`inner_steps`, `inner_learning_rate`, `head_fit_steps`, `pooling`, ...) are inherited
    from [`AdaptationConfig`], defined and validated there once; they are saved with the adapter and rerun by
    [`FewShotClassifier.fit`].

    One episode is one micro-batch, so the meta-batch (episodes per meta-step) is
    `gradient_accumulation_steps x number of processes`. The Trainer's `learning_rate`, optimizer, scheduler,
    `max_grad_norm`, mixed precision, logging and checkpointing apply to the outer (meta) update.

    Defaults that differ from `TrainingArguments`:
        - `per_device_train_batch_size=1` and `per_device_eval_batch_size=1` (one episode per micro-batch; any
          other value is an error),
        - `remove_unused_columns=False` (episode columns are not model inputs),
        - `learning_rate=1e-3`, `gradient_accumulation_steps=4`, `num_train_epochs=1`, `logging_steps=10`,
          `save_strategy="no"`, `dataloader_pin_memory=False` (an episode is a few kilobytes of token ids).

    Refused: DeepSpeed and FSDP. The inner loop evaluates the unsharded base model functionally at fast LoRA
    weights, which a sharded engine does not allow.

    Example:
        ```python
        >>> args = MetaTrainingArguments(output_dir="out", algorithm="fomaml", inner_steps=5, inner_learning_rate=0.05,
        ...                              gradient_accumulation_steps=4, max_steps=200)
        >>> args.adaptation_config().inner_steps
        5
        ```
    """

    algorithm: Algorithm = field(
        default="fomaml", metadata={"help": "Meta-learning algorithm: 'fomaml' (first-order MAML) or 'reptile'."}
    )
    precompute_frozen_states: bool = field(
        default=True,
        metadata={
            "help": "When LoRA leaves the bottom layers frozen, run them once per distinct sentence of the episodes "
            "(stored in the datasets cache) instead of once per episode."
        },
    )
    lora_delta_penalty: float = field(
        default=0.0,
        metadata={
            "help": "Weight of a penalty on the size of the LoRA update relative to the pretrained weights "
            "(`hf_meta.lora_delta.relative_lora_delta`), added to the meta-loss: keeps a broadly meta-trained "
            "adapter near the pretrained geometry. 0 turns it off."
        },
    )

    # Changed defaults of TrainingArguments.
    per_device_train_batch_size: int = field(
        default=1,
        metadata={
            "help": "Episodes per micro-batch. With `inner_steps=0` they share one support pass, one batched head "
            "fit and one query pass; otherwise they adapt one after another. The meta-batch is this x "
            "`gradient_accumulation_steps` x processes."
        },
    )
    per_device_eval_batch_size: int = field(default=1, metadata={"help": "Episodes per eval batch (must be 1)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep episode columns (must be False)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Outer (meta) learning rate."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Episodes per meta-step and process."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training episodes."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X meta-steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoint strategy: 'no', 'steps' or 'epoch'."})
    dataloader_pin_memory: bool = field(
        default=False, metadata={"help": "Pin episode tensors in memory (tiny batches: no gain, a warning on CPU)."}
    )

    def __post_init__(self):
        size = self.per_device_train_batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`per_device_train_batch_size` must be a positive int (episodes), got {size!r}.")
        penalty = self.lora_delta_penalty
        if isinstance(penalty, bool) or not isinstance(penalty, int | float) or not 0 <= penalty < float("inf"):
            raise ValueError(
                f"`lora_delta_penalty` must be a finite number >= 0, got {penalty!r}; 0 turns the penalty off."
            )
        if self.per_device_eval_batch_size != 1:
            raise ValueError(
                f"`per_device_eval_batch_size` must be 1 (one evaluation episode per batch), got "
                f"{self.per_device_eval_batch_size}."
            )
        if self.remove_unused_columns:
            raise ValueError("`remove_unused_columns` must be False: episode columns are not model inputs.")
        check_choice("algorithm", self.algorithm, Algorithm)
        if self.algorithm == "reptile" and self.inner_steps < 1:
            raise ValueError(
                f"`inner_steps` must be >= 1 for Reptile (theta - phi_T is 0 otherwise), got {self.inner_steps}."
            )
        if self.learn_inner_learning_rates and (self.inner_steps < 1 or self.algorithm != "fomaml"):
            raise ValueError(
                f"`learn_inner_learning_rates` needs `inner_steps` >= 1 and `algorithm='fomaml'` (got inner_steps="
                f"{self.inner_steps}, algorithm={self.algorithm!r}): with the fitted head alone there is no inner "
                "step to size. Set `--inner_steps 5`, or drop `--learn_inner_learning_rates`."
            )
        if self.deepspeed:
            raise ValueError(
                f"`deepspeed` is not supported (got {self.deepspeed!r}): the inner loop calls the unsharded base "
                "model at fast LoRA weights. Drop it; the LoRA meta-parameters are small enough for plain DDP."
            )
        if self.fsdp:
            raise ValueError(
                f"`fsdp` is not supported (got {self.fsdp!r}): the inner loop calls the unsharded base model at "
                "fast LoRA weights. Drop it; the LoRA meta-parameters are small enough for plain DDP."
            )
        self.validate_adaptation()
        super().__post_init__()

    def adaptation_config(self, base_model: str | None = None) -> AdaptationConfig:
        """The adaptation settings these arguments train for (saved with the adapter), naming `base_model`."""
        values = {name: getattr(self, name) for name in AdaptationConfig.field_names()}
        return AdaptationConfig(**{**values, "base_model": base_model or self.base_model})


def _output_dir_first(init):
    """`MetaTrainingArguments("out")` as `TrainingArguments("out")`: the one positional argument is `output_dir`
    (the dataclass's own first field is the inherited `pooling`); every other setting is passed by keyword."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if len(args) > 1:
            raise TypeError(
                f"`MetaTrainingArguments` takes `output_dir` as its only positional argument, got {len(args)} "
                f"({args!r}); pass the other settings by keyword, e.g. `MetaTrainingArguments('out', inner_steps=5)`."
            )
        if args:
            if "output_dir" in kwargs:
                raise TypeError("`output_dir` was given both positionally and by keyword; give it once.")
            kwargs["output_dir"] = args[0]
        init(self, **kwargs)

    return __init__


MetaTrainingArguments.__init__ = _output_dir_first(MetaTrainingArguments.__init__)
