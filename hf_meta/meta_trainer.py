"""`MetaTrainer`: episodic first-order MAML / Reptile over the LoRA parameters of a pretrained encoder."""

from __future__ import annotations

import os

import datasets
import torch
from peft import LoraConfig, PeftModel
from torch.utils.data import SequentialSampler
from transformers import PreTrainedModel, Trainer, set_seed
from transformers.trainer_utils import EvalLoopOutput
from transformers.utils import logging

from .adaptation import AdaptationConfig, EpisodeCollator, episode_accuracy, episode_meta_gradient
from .collections import HUB_REPO_IDS
from .episodes import EPISODE_FEATURES
from .io_utils import atomic_directory
from .meta_training_args import MetaTrainingArguments
from .metrics import mean_ci95
from .model_card import PLOT_FILE, render_model_card
from .modeling import FunctionalEncoder, hub_id_of, meta_parameters, with_lora

logger = logging.get_logger(__name__)


class MetaTrainer(Trainer):
    """A `transformers.Trainer` that meta-learns a LoRA initialisation from episodes.

    Each micro-batch is one episode (see [`build_episodes`]). [`training_step`] adapts fast copies of the LoRA
    weights on the support set (`inner_steps` SGD steps, head initialised from the support prototypes) and writes
    the episode's meta-gradient into the LoRA parameters' `.grad`: the query-loss gradient at the adapted weights
    (first-order MAML) or `theta - phi_T` (Reptile). Accumulation, clipping, the optimizer, the scheduler,
    logging, progress bars and checkpoints are the Trainer's. The base model is frozen and never copied.

    Args:
        model: a transformers encoder (`AutoModel`) or a `PeftModel` around one.
        args: a [`MetaTrainingArguments`].
        peft_config: the `LoraConfig` to wrap `model` with; default: [`default_lora_config`] (rank 8 on the
            attention query/value projections of every layer, Gaussian init).
        train_dataset / eval_dataset: episode datasets from [`build_episodes`].
        processing_class: the tokenizer; each episode is tokenised once, by [`EpisodeCollator`].

    Example:
        ```python
        >>> from transformers import AutoModel, AutoTokenizer
        >>> from hf_meta import MetaTrainer, MetaTrainingArguments, build_episodes, load_collection
        >>> clinc = load_collection("clinc150", data_dir="../shared/data")
        >>> train = build_episodes(clinc["train"], n_way=5, k_shot=5, num_query=5, num_episodes=400, seed=0)
        >>> trainer = MetaTrainer(model=AutoModel.from_pretrained(path), args=MetaTrainingArguments("out"),
        ...                       train_dataset=train, processing_class=AutoTokenizer.from_pretrained(path))
        >>> trainer.train()
        >>> trainer.evaluate(eval_episodes)["eval_accuracy"]
        ```
    """

    def __init__(
        self,
        model: PreTrainedModel | PeftModel,
        args: MetaTrainingArguments | None = None,
        peft_config: LoraConfig | None = None,
        train_dataset: datasets.Dataset | None = None,
        eval_dataset: datasets.Dataset | dict[str, datasets.Dataset] | None = None,
        processing_class=None,
        data_collator=None,
        **kwargs,
    ):
        if args is None:
            args = MetaTrainingArguments(output_dir="hf_meta_output")
        if not isinstance(args, MetaTrainingArguments):
            raise TypeError(
                f"`args` must be a `MetaTrainingArguments`, got {type(args).__name__}; build one with the same "
                "fields plus the inner-loop settings."
            )
        if processing_class is None and data_collator is None:
            raise ValueError("`processing_class` (the tokenizer) is required to tokenise the episodes.")
        for name, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            for split in dataset.values() if isinstance(dataset, dict) else [dataset]:
                _check_episode_dataset(name, split)
        set_seed(args.seed)  # the LoRA init is drawn here, before Trainer seeds: make it depend on `args.seed` only
        model = with_lora(model, peft_config)
        base_model = hub_id_of(model, args.base_model_id)
        for config in model.peft_config.values():
            # The saved adapter_config.json must name a Hub id that others can load, never a local path.
            config.base_model_name_or_path = base_model
        self.adaptation_config: AdaptationConfig = args.adaptation_config(base_model)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator or EpisodeCollator(processing_class, args.max_length),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self.encoder = FunctionalEncoder(self.model, args.pooling, args.normalize_embeddings)
        self._query_accuracies: list[float] = []
        # What the model card reports; recipes fill these with the collections and the measured results table.
        self.card_collections: list[str] = []
        self.card_results: list[dict] = []
        self.card_results_description: str = ""

    # ---- Training -------------------------------------------------------------------------------------------

    def _get_train_sampler(self, *args, **kwargs):
        # Episodes are already i.i.d. draws: a fixed order makes the episodes of each meta-step the same for any
        # number of processes, and a resumed run sees exactly the episodes it would have seen.
        return SequentialSampler(self.train_dataset)

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """Adapt on one episode and add its meta-gradient, divided by the accumulation steps, to the LoRA `.grad`."""
        # Dropout off: the meta-learned adaptation is the deterministic one that runs at test time.
        self.model.eval()
        inputs = self._prepare_inputs(inputs)
        meta = meta_parameters(self.model)
        with self.compute_loss_context_manager():
            outcome = episode_meta_gradient(
                self.encoder, dict(meta), inputs, self.adaptation_config, self.args.algorithm
            )
        scale = 1.0 / self.current_gradient_accumulation_steps
        for name, param in meta.items():
            grad = outcome.meta_gradient[name].to(param.dtype) * scale
            param.grad = grad if param.grad is None else param.grad.add_(grad)
        if self.accelerator.sync_gradients and self.accelerator.num_processes > 1:
            self._average_meta_gradients(list(meta.values()))
        if outcome.accuracy is not None:
            self._query_accuracies.append(outcome.accuracy)
        return (outcome.loss * scale).to(self.args.device)

    def _average_meta_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """One all-reduce per meta-step (inner steps never communicate): every process ends with the mean."""
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        flat = self.accelerator.reduce(flat, reduction="mean")
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def floating_point_ops(self, inputs) -> int:
        """Forward+backward FLOPs of one episode: 6 x parameters x tokens, over every inner step and the query."""
        steps = max(self.args.inner_steps, 1)
        tokens = inputs["support_attention_mask"].numel() * steps + inputs["query_attention_mask"].numel()
        return 6 * self.model.get_base_model().num_parameters(exclude_embeddings=True) * tokens

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._query_accuracies:
            # Query accuracy at the adapted weights over the episodes since the last log (this process's share).
            logs["query_accuracy"] = round(sum(self._query_accuracies) / len(self._query_accuracies), 4)
            self._query_accuracies.clear()
        super().log(logs, start_time)

    # ---- Evaluation -----------------------------------------------------------------------------------------

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ) -> EvalLoopOutput:
        """Adapt on every eval episode's support set; report mean query accuracy, its 95% CI, and the query loss.

        Adaptation works on copies of the LoRA weights, so the meta-parameters are left untouched.
        """
        logger.info(f"***** Running {description} on {len(dataloader)} episodes *****")
        self.model.eval()
        self.callback_handler.eval_dataloader = dataloader  # sizes the Trainer's evaluation progress bar
        results = []
        for inputs in dataloader:
            inputs = self._prepare_inputs(inputs)
            with self.compute_loss_context_manager():
                accuracy, loss = episode_accuracy(
                    self.encoder, dict(meta_parameters(self.model)), inputs, self.adaptation_config
                )
            results.append([accuracy, loss])
            self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)
        local = torch.tensor(results, dtype=torch.float64, device=self.args.device).reshape(-1, 2)
        gathered = self.accelerator.gather_for_metrics(local).cpu()
        accuracy, ci95 = mean_ci95(gathered[:, 0].tolist())
        metrics = {
            f"{metric_key_prefix}_accuracy": accuracy,
            f"{metric_key_prefix}_accuracy_ci95": ci95,
            f"{metric_key_prefix}_loss": float(gathered[:, 1].mean()),
        }
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=len(gathered))

    # ---- Saving ---------------------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the LoRA adapter (safetensors), the tokenizer and `adaptation_config.json`, atomically."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        with atomic_directory(output_dir) as staging:
            super()._save(str(staging), state_dict=state_dict)
            self.adaptation_config.save_pretrained(staging)
        logger.info(f"Saved the meta-initialised adapter and its adaptation settings to {output_dir}")

    def create_model_card(self, model_name: str | None = None, tags: str | list[str] | None = None, **kwargs) -> None:
        """Write `README.md`: our template with `base_model`, `library_name: peft`, settings and measured results.

        Called by `Trainer.push_to_hub` after saving (peft writes a generic card on save; this one replaces it).
        """
        if not self.is_world_process_zero():
            return
        results = list(self.card_results)
        last_eval = next((log for log in reversed(self.state.log_history) if "eval_accuracy" in log), None)
        if not results and last_eval is not None:
            results = [
                {
                    "dataset": "evaluation episodes",
                    "shots": "episodic",
                    "method": f"hf_meta_{self.args.algorithm}",
                    "accuracy": last_eval["eval_accuracy"],
                    "ci95": last_eval.get("eval_accuracy_ci95"),
                }
            ]
        max_steps = self.state.max_steps or self.args.max_steps
        card = render_model_card(
            adaptation_config=self.adaptation_config,
            algorithm=self.args.algorithm,
            collections=[HUB_REPO_IDS.get(name, name) for name in self.card_collections],
            results=results,
            results_description=self.card_results_description,
            repo_id=self.hub_model_id if getattr(self, "hub_model_id", None) else self.args.hub_model_id,
            model_name=model_name,
            training=(
                f"{max_steps} meta-steps of {self.args.gradient_accumulation_steps * self.args.world_size} "
                f"episodes, outer learning rate {self.args.learning_rate}"
            ),
            plot_file=PLOT_FILE if os.path.isfile(os.path.join(self.args.output_dir, PLOT_FILE)) else None,
            extra_tags=[tags] if isinstance(tags, str) else list(tags or []),
        )
        card.save(os.path.join(self.args.output_dir, "README.md"))


def _check_episode_dataset(name: str, dataset) -> None:
    if dataset is None:
        return
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"`{name}` must be a `datasets.Dataset` of episodes, got {type(dataset).__name__}.")
    missing = [column for column in EPISODE_FEATURES if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"`{name}` lacks the episode column(s) {missing} (columns: {dataset.column_names}); build it with "
            "`hf_meta.build_episodes(...)`."
        )
