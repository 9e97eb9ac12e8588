"""`MetaTrainingArguments`: `TrainingArguments` plus the episode, inner-loop and adaptation settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .adaptation import ALGORITHMS, AdaptationConfig


@dataclass
class MetaTrainingArguments(TrainingArguments):
    """Arguments of [`MetaTrainer`].

    One episode is one micro-batch, so the meta-batch (episodes per meta-step) is
    `gradient_accumulation_steps x number of processes`. The Trainer's `learning_rate`, optimizer, scheduler,
    `max_grad_norm`, logging and checkpointing apply to the outer (meta) update.

    Defaults that differ from `TrainingArguments`:
        - `per_device_train_batch_size=1` and `per_device_eval_batch_size=1` (one episode per micro-batch; any
          other value is an error),
        - `remove_unused_columns=False` (episode columns are not model inputs),
        - `learning_rate=1e-3`, `gradient_accumulation_steps=4`, `num_train_epochs=1`, `logging_steps=10`,
          `save_strategy="no"`.

    Example:
        ```python
        >>> args = MetaTrainingArguments(output_dir="out", algorithm="fomaml", inner_steps=5, inner_learning_rate=0.05,
        ...                              gradient_accumulation_steps=4, max_steps=200)
        ```
    """

    # Algorithm
    algorithm: str = field(
        default="fomaml",
        metadata={"help": "Meta-learning algorithm: 'fomaml' (first-order MAML) or 'reptile'.", "choices": ALGORITHMS},
    )
    # Inner loop
    inner_steps: int = field(default=5, metadata={"help": "SGD steps on the support set of each episode."})
    inner_learning_rate: float = field(default=0.05, metadata={"help": "SGD learning rate of the inner loop."})
    # Task head and embeddings (saved with the adapter and reused at adaptation time)
    head_init: str = field(
        default="prototypes",
        metadata={"help": "Per-episode head: 'prototypes' (Proto-MAML) or 'zero'.", "choices": ("prototypes", "zero")},
    )
    head_fit_steps: int = field(
        default=100,
        metadata={"help": "L-BFGS iterations fitting the head to the support embeddings before the inner loop."},
    )
    head_l2: float = field(default=0.03, metadata={"help": "Pull of the fitted head towards the prototypes."})
    pooling: str = field(
        default="mean", metadata={"help": "Sentence pooling: 'mean' or 'cls'.", "choices": ("mean", "cls")}
    )
    normalize_embeddings: bool = field(default=True, metadata={"help": "L2-normalise embeddings (cosine head)."})
    logit_scale: float = field(default=20.0, metadata={"help": "Scale of the cosine-head logits."})
    max_length: int = field(default=64, metadata={"help": "Tokenisation max length (longer texts are truncated)."})
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id of the base model, written to saved adapters when it was loaded from a folder."},
    )

    # Changed defaults of TrainingArguments.
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Episodes per micro-batch (must be 1)."})
    per_device_eval_batch_size: int = field(default=1, metadata={"help": "Episodes per eval batch (must be 1)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep episode columns (must be False)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Outer (meta) learning rate."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Episodes per meta-step and process."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training episodes."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X meta-steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoint strategy: 'no', 'steps' or 'epoch'."})

    def __post_init__(self):
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(self, name) != 1:
                raise ValueError(
                    f"`{name}` must be 1 (one episode per micro-batch), got {getattr(self, name)}; raise "
                    "`gradient_accumulation_steps` to put more episodes in a meta-step."
                )
        if self.remove_unused_columns:
            raise ValueError("`remove_unused_columns` must be False: episode columns are not model inputs.")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"`algorithm` must be one of {ALGORITHMS}, got {self.algorithm!r}.")
        if self.algorithm == "reptile" and self.inner_steps < 1:
            raise ValueError(
                f"`inner_steps` must be >= 1 for Reptile (theta - phi_T is 0 otherwise), got {self.inner_steps}."
            )
        self.adaptation_config()  # validates the inner-loop and head settings with one set of messages
        super().__post_init__()

    def adaptation_config(self, base_model: str | None = None) -> AdaptationConfig:
        """The adaptation settings these arguments train for (and that are saved with the adapter)."""
        return AdaptationConfig(
            pooling=self.pooling,
            normalize_embeddings=self.normalize_embeddings,
            head_init=self.head_init,
            head_fit_steps=self.head_fit_steps,
            head_l2=self.head_l2,
            logit_scale=self.logit_scale,
            inner_steps=self.inner_steps,
            inner_learning_rate=self.inner_learning_rate,
            max_length=self.max_length,
            base_model=base_model,
        )
