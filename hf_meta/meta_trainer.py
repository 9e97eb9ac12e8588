"""`MetaTrainer`: episodic first-order MAML / Reptile over the LoRA parameters of a pretrained encoder."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import datasets
import numpy as np
import torch
from peft import LoraConfig, PeftModel
from torch.utils.data import SequentialSampler
from transformers import PreTrainedModel, Trainer, set_seed
from transformers.trainer_utils import EvalLoopOutput, EvalPrediction
from transformers.utils import logging

from .adaptation import episode_query_logits
from .adaptation_config import AdaptationConfig
from .adapter_checks import clamp_max_length
from .checkpoint_checks import check_checkpoint
from .choices import OUT_OF_SCOPE
from .episode_collator import EpisodeCollator, episode_name_phrases
from .episodes import EPISODE_FEATURES
from .frozen_states import FrozenStates
from .inner_loop import is_multi_hot, task_accuracy, task_loss
from .io_utils import atomic_directory, last_complete_checkpoint
from .label_names import names_are_usable
from .learned_inner_loop import LearnedInnerLoop
from .lora_delta import relative_lora_delta
from .meta_batch import (
    batch_meta_gradient,
    batch_query_logits,
    episode_embeddings,
    query_logits_from_embeddings,
    shares_encoder_passes,
)
from .meta_training_args import MetaTrainingArguments
from .metrics import accuracy
from .model_card import render_model_card
from .modeling import FunctionalEncoder, hub_id_of, meta_parameters, with_lora
from .precision import MixedPrecision
from .selection import check_sweepable, grid_combinations
from .validation import check_int, non_finite

logger = logging.get_logger(__name__)

TRAINING_ARGS_JSON = "training_args.json"  # `Trainer` pickles them to training_args.bin; JSON cannot run code
# Evaluation episodes embedded in one encoder call when they share their weights: a few hundred sentences, so the
# length-sorted chunks are full and the activations of one call stay small.
EVAL_EPISODES_PER_PASS = 8


class MetaTrainer(Trainer):
    """A `transformers.Trainer` that meta-learns a LoRA initialisation from episodes.

    Each micro-batch holds `per_device_train_batch_size` episodes (see [`build_episodes`]). [`compute_loss`]
    adapts fast copies of the LoRA weights on each support set (the head fitted from the support embeddings, then
    `inner_steps` SGD steps) and returns a surrogate loss whose gradient is the episodes' mean meta-gradient: the
    query-loss gradient at the adapted weights (first-order MAML) or `theta - phi_T` (Reptile). The Trainer's
    `training_step` backpropagates it through `accelerator.backward`, so accumulation, mixed-precision loss
    scaling, clipping, the optimizer, the scheduler, logging, progress bars and checkpoints are the Trainer's. The
    base model is frozen, never copied.

    `trainer.evaluate()` adapts to every evaluation episode and reports the query accuracy with its 95% CI over
    episodes; `compute_metrics`, if given, receives an `EvalPrediction` of all query predictions and labels, and
    `trainer.predict()` returns them.

    Args:
        model: a transformers encoder (`AutoModel`) or a `PeftModel` around one.
        args: a [`MetaTrainingArguments`].
        peft_config: the `LoraConfig` to wrap `model` with; default: [`default_lora_config`] (rank 8 on the
            attention query/value projections of every layer, Gaussian init).
        train_dataset / eval_dataset: episode datasets from [`build_episodes`].
        processing_class: the tokenizer; each episode is tokenised once, by [`EpisodeCollator`].
        data_collator: an episode collator of your own instead; with LoRA leaving the bottom layers frozen it needs
            `precompute_frozen_states=False` (the precomputed states are read by hf_meta's collator only).

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
        base_model = hub_id_of(model, args.base_model)
        for config in model.peft_config.values():
            # The saved adapter_config.json must name a Hub id that others can load, never a local path.
            config.base_model_name_or_path = base_model
        self.adaptation_config: AdaptationConfig = args.adaptation_config(base_model)
        self.max_length = clamp_max_length(args.max_length, model)  # tokens the model can encode, at most
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator
            or EpisodeCollator(processing_class, self.adaptation_config, max_length=self.max_length),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        # The Trainer's `bf16` / `fp16` flags: accelerate autocasts the model's forward once `train()` prepares it;
        # the encoder autocasts its own passes too, so the frozen-state cache, `train_multitask` and an evaluation
        # before any `train()` run in the same precision.
        self.encoder = FunctionalEncoder(
            self.model, args.pooling, args.normalize_embeddings, mixed_precision=self.mixed_precision
        )
        if args.precompute_frozen_states and self.encoder.frozen_depth > 0:
            if data_collator is not None:
                raise ValueError(
                    f"`precompute_frozen_states=True` reads the frozen layers' outputs through hf_meta's own episode "
                    f"collator, so it cannot apply to the `data_collator` given ({type(data_collator).__name__}). "
                    "Pass `precompute_frozen_states=False` to use that collator (the frozen layers then run in every "
                    "episode), or drop `data_collator`."
                )
            self.data_collator = self._collator_with_frozen_states(processing_class)
        # Meta-SGD: the learned step sizes and logit scale are meta-parameters too; they live beside the model (not
        # in it, so the saved adapter stays plain LoRA) and join the optimizer in `create_optimizer`.
        self.inner_loop: LearnedInnerLoop | None = None
        if args.learn_inner_learning_rates:
            names = list(meta_parameters(self.model))
            self.inner_loop = LearnedInnerLoop(names, args.inner_learning_rate, args.logit_scale).to(args.device)
        # Episodes carry no `labels` key; the loss is divided by the accumulation steps by `training_step`.
        self.model_accepts_loss_kwargs = False
        self._query_accuracy = torch.zeros(2, dtype=torch.float64)  # (sum of accuracies, episodes) since last log
        self.multitask: dict[str, Any] | None = None  # set by `train_multitask`: how the adapter was trained

    def _collator_with_frozen_states(self, tokenizer) -> EpisodeCollator:
        """An episode collator that reads token ids and frozen-layer states computed once per sentence."""
        texts = set()
        for dataset in [self.train_dataset, *_splits(self.eval_dataset)]:
            if dataset is not None:
                for column in ("support_text", "query_text"):
                    texts.update(text for episode in dataset[column] for text in episode)
                if self.args.use_label_names:  # the name phrases are embedded in every inner step too
                    for class_names in dataset["class_names"]:
                        if names_are_usable(class_names):
                            texts.update(episode_name_phrases(class_names))
        # The main process computes (or finds) the Arrow file; the others then read the same file.
        with self.args.main_process_first(desc="frozen-layer states"):
            states = FrozenStates.build(self.encoder, tokenizer, texts, max_length=self.max_length)
        return EpisodeCollator(tokenizer, self.adaptation_config, max_length=self.max_length, frozen_states=states)

    # ---- Training -------------------------------------------------------------------------------------------

    @property
    def mixed_precision(self) -> MixedPrecision:
        """`"bf16"` / `"fp16"` under the Trainer's `bf16=True` / `fp16=True`, else `"no"`."""
        return "bf16" if self.args.bf16 else "fp16" if self.args.fp16 else "no"

    def create_optimizer(self, *args, **kwargs):
        """The Trainer's optimizer over the LoRA weights, plus the learned inner loop's parameters (no decay)."""
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.inner_loop is not None and not any(
            p is self.inner_loop.log_learning_rates for group in optimizer.param_groups for p in group["params"]
        ):
            optimizer.add_param_group({"params": list(self.inner_loop.parameters()), "weight_decay": 0.0})
        return optimizer

    def _get_train_sampler(self, *args, **kwargs):
        # Episodes are already i.i.d. draws: a fixed order makes the episodes of each meta-step the same for any
        # number of processes, and a resumed run sees exactly the episodes it would have seen.
        return SequentialSampler(self.train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """A surrogate loss whose value is the episodes' mean query loss and whose gradient is their mean
        meta-gradient.

        The Trainer's `training_step` then divides it by the accumulation steps and calls `accelerator.backward`,
        so gradient accumulation, loss scaling in mixed precision, clipping and the optimizer are the Trainer's.
        The meta-gradient is averaged over processes here, once per micro-batch: the inner loop calls the base model
        functionally, never through the DDP wrapper, so DDP's own gradient hooks are never armed. With
        `lora_delta_penalty`, the penalty (`hf_meta.lora_delta`) is added to the value and to the gradient.
        """
        if return_outputs:
            raise ValueError("`MetaTrainer.compute_loss` has no model outputs to return; episodes are adapted.")
        self.model.eval()  # dropout off: the meta-learned adaptation is the deterministic one run at test time
        meta = meta_parameters(self.model)
        _check_finite_weights(meta, f"before meta-step {self.state.global_step + 1}")
        episodes = inputs["episodes"] if "episodes" in inputs else [inputs]
        outcome, accuracies = batch_meta_gradient(
            self.encoder, dict(meta), episodes, self.adaptation_config, self.args.algorithm, self.inner_loop
        )
        gradients = [outcome.meta_gradient[name].to(param.dtype) for name, param in meta.items()]
        extra = dict(self.inner_loop.named_parameters()) if self.inner_loop is not None else {}
        gradients += [outcome.inner_loop_gradient[name].to(param) for name, param in extra.items()]
        if self.accelerator.num_processes > 1:
            gradients = self._average_across_processes(gradients)
        if not (torch.isfinite(outcome.loss) and all(torch.isfinite(g).all() for g in gradients)):
            raise FloatingPointError(
                f"Non-finite meta-gradient or loss ({outcome.loss.item()}) at meta-step {self.state.global_step + 1}; "
                "the outer `learning_rate` or the `inner_learning_rate` is likely too large for this model."
            )
        if accuracies:
            self._query_accuracy += torch.tensor([sum(accuracies), len(accuracies)], dtype=torch.float64)
        params = [*meta.values(), *extra.values()]
        surrogate = sum((param * grad).sum() for param, grad in zip(params, gradients))
        loss = outcome.loss.to(surrogate) + surrogate - surrogate.detach()
        if self.args.lora_delta_penalty:
            # Differentiated here, not averaged: every process holds the same weights, so the same gradient.
            loss = loss + self.args.lora_delta_penalty * relative_lora_delta(self.model).to(loss)
        return loss

    def _average_across_processes(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """One all-reduce of the flattened tensors: every process gets the mean."""
        flat = self.accelerator.reduce(torch.cat([t.reshape(-1) for t in tensors]).to(self.args.device), "mean")
        return [chunk.view_as(t).to(t.device) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    def floating_point_ops(self, inputs) -> int:
        """Forward+backward FLOPs of a micro-batch: 6 x parameters x tokens, over every inner step and the query."""
        steps = max(self.args.inner_steps, 1)
        episodes = inputs["episodes"] if "episodes" in inputs else [inputs]
        tokens = sum(e["support_attention_mask"].numel() * steps + e["query_attention_mask"].numel() for e in episodes)
        return 6 * self.model.get_base_model().num_parameters(exclude_embeddings=True) * tokens

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: every process calls it at the same step, so the reduce is matched
            totals = self._query_accuracy
            if self.accelerator.num_processes > 1:
                totals = self.accelerator.reduce(totals.to(self.args.device), "sum").cpu()
            if totals[1] > 0:
                # Query accuracy at the adapted weights over every process's episodes since the last log.
                logs["query_accuracy"] = round(float(totals[0] / totals[1]), 4)
            self._query_accuracy.zero_()
            with torch.no_grad():  # how far the adapter has moved the pretrained weights (the same on every process)
                logs["lora_delta"] = float(f"{relative_lora_delta(self.model).item():.4g}")
        super().log(logs, start_time)

    def train_multitask(
        self,
        pools: list[datasets.Dataset],
        num_sentences: int,
        *,
        batch_size: int = 64,
        shares: list[float] | None = None,
    ) -> dict[str, Any]:
        """Train the LoRA initialisation by supervised multitask transfer instead of meta-learning.

        Ordinary cross-entropy over each pool's own classes, a batch of `batch_size` texts from one pool per step
        (see [`hf_meta.multitask.train_multitask_lora`]), with this trainer's LoRA, pooling, head, learning rate
        and seed. Where the source collections resemble the target it transfers as well as meta-learning or better,
        at about the same cost (see the project's results); the adapter then adapts exactly like a meta-learned
        one, so `evaluate`, `select_adaptation`, `save_model`, `create_model_card` and `push_to_hub` work as after
        `train`, and the card says how the adapter was trained.

        Args:
            pools: labelled source collections (`text`, and `label` a `ClassLabel` carrying the class names).
            num_sentences: labelled sentences to see in all, e.g. as many as the episodes of a meta-training run
                hold; rounded up to whole batches.
            batch_size: texts per step, all from one pool.
            shares: probability of each pool per batch (default: equal).

        Returns:
            `{"sentences": ..., "collections": ..., "batch_size": ..., "learning_rate": ...}`, also written into
            the model card.

        Example:
            ```python
            >>> trainer = MetaTrainer(model, args, eval_dataset=validation_episodes, processing_class=tokenizer)
            >>> trainer.train_multitask([clinc["train"], hwu["train"]], num_sentences=50_000)
            >>> trainer.evaluate()["eval_accuracy"]       # on the held-out episodes, as after `train()`
            >>> trainer.save_model()
            ```
        """
        from .multitask import train_multitask_lora  # a plain Trainer of its own, built only when asked for

        if self.args.world_size > 1:
            raise ValueError(
                f"`train_multitask` runs in one process, and this run has {self.args.world_size}; launch it with "
                "one process (e.g. `recipes/accelerate_configs/cpu.yaml`), or meta-train with `train()`."
            )
        num_sentences = check_int(num_sentences, "num_sentences", minimum=1)
        batch_size = check_int(batch_size, "batch_size", minimum=1)
        steps = -(-num_sentences // batch_size)
        train_multitask_lora(
            self.model,
            self.processing_class,
            pools,
            num_sentences,
            self.adaptation_config,
            batch_size=batch_size,
            learning_rate=self.args.learning_rate,
            shares=shares,
            output_dir=os.path.join(self.args.output_dir, "multitask"),
            seed=self.args.seed,
            disable_tqdm=self.args.disable_tqdm,
            max_length=self.max_length,
            mixed_precision=self.mixed_precision,
        )
        self.multitask = {
            "sentences": steps * batch_size,
            "collections": len(pools),
            "batch_size": batch_size,
            "learning_rate": self.args.learning_rate,
        }
        _check_finite_weights(meta_parameters(self.model), "after multitask training")
        return dict(self.multitask)

    # ---- Evaluation -----------------------------------------------------------------------------------------

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ) -> EvalLoopOutput:
        """Adapt on every episode's support set and predict its query set; the meta-parameters are left untouched.

        Metrics: `accuracy` (mean over episodes) with `accuracy_ci95` (95% CI over episodes) from
        [`hf_meta.metrics.AccuracyWithCI`], `loss` (mean query loss), and whatever `compute_metrics` returns for
        an `EvalPrediction` of the query predictions (class ids, episode-local) and labels of every episode. A
        multi-label episode scores its query texts by subset accuracy (every class right at probability 0.5;
        in the `EvalPrediction`, 1 for an exact label set against a label of 1) and its loss is the binary
        cross-entropy. Out-of-scope queries (`build_episodes(..., num_out_of_scope=...)`) count in the loss only.
        """
        logger.info(f"***** Running {description} on {len(dataloader)} episodes *****")
        self.model.eval()
        self.callback_handler.eval_dataloader = dataloader  # sizes the Trainer's evaluation progress bar
        meta = dict(meta_parameters(self.model))
        episodes = []
        for group in _groups(dataloader, EVAL_EPISODES_PER_PASS):
            group = [self._prepare_inputs(inputs) for inputs in group]
            with self.compute_loss_context_manager():
                # episodes that start from the same weights share their encoder passes (`inner_steps=0`)
                group_logits = batch_query_logits(self.encoder, meta, group, self.adaptation_config, self.inner_loop)
            for inputs, logits in zip(group, group_logits):
                labels = inputs["query_labels"]
                loss = task_loss(logits.float(), labels).item()
                if is_multi_hot(labels):  # a multi-label episode: each query text right when its label set is exact
                    exact = ((logits >= 0) == (labels > 0.5)).all(-1)
                    episodes.append((exact.long().tolist(), [1] * len(exact), loss))
                else:  # out-of-scope queries (`OUT_OF_SCOPE`) count in the loss, not in the accuracy
                    kept = labels != OUT_OF_SCOPE
                    episodes.append((logits.argmax(-1)[kept].tolist(), labels[kept].tolist(), loss))
                self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)
        episodes = self.accelerator.gather_for_metrics(episodes, use_gather_object=True)
        predictions = np.array([p for preds, _, _ in episodes for p in preds], dtype=np.int64)
        label_ids = np.array([y for _, labels, _ in episodes for y in labels], dtype=np.int64)
        groups = [i for i, (preds, _, _) in enumerate(episodes) for _ in preds]
        scores = accuracy(predictions, label_ids, groups=groups)
        metrics = {"accuracy": scores["accuracy"], "accuracy_ci95": scores["accuracy_ci95"]}
        metrics["loss"] = float(np.mean([loss for _, _, loss in episodes]))
        if self.compute_metrics is not None:
            metrics.update(self.compute_metrics(EvalPrediction(predictions=predictions, label_ids=label_ids)))
        metrics = {
            key if key.startswith(f"{metric_key_prefix}_") else f"{metric_key_prefix}_{key}": value
            for key, value in metrics.items()
        }
        return EvalLoopOutput(predictions=predictions, label_ids=label_ids, metrics=metrics, num_samples=len(episodes))

    def select_adaptation(self, grid: dict[str, list], eval_dataset: datasets.Dataset | None = None) -> dict[str, Any]:
        """Choose adaptation settings by meta-validation: score every combination of `grid` on validation episodes
        (held-out source classes) and keep the best in `trainer.adaptation_config`, which `save_model` writes.

        Each combination adapts to every episode's support set from the current meta-parameters and is scored
        by the mean query accuracy over episodes; ties go to the earlier combination, so list the current value
        first. A setting the sweep cannot vary is refused before any scoring (see `hf_meta/selection.py`): those
        that change the tokenisation or the encoder (`max_length`, `pooling`, `normalize_embeddings`),
        `learn_inner_learning_rates`, `base_model`, the augmentation settings (applied once, when the episodes
        are collated), `inner_learning_rate` and `logit_scale` under a learned inner loop, `use_label_names=True`
        on a trainer built without it, and a setting that no combination reads (`head_l2` when every combination
        has `head_fit_steps=0`).

        Args:
            grid: setting name -> candidate values, e.g. `{"head_l2": [1.0, 0.3], "inner_steps": [0, 5]}`.
            eval_dataset: episodes to score on; default the trainer's `eval_dataset`.

        Returns:
            `{"best": {setting: value}, "accuracy": best score, "scores": [{"settings": ..., "accuracy": ...}]}`.

        Example:
            ```python
            >>> trainer.train()
            >>> trainer.select_adaptation({"head_prior": ["sum", "mean"], "label_name_weight": [1.0, 2.0]})["best"]
            {'head_prior': 'sum', 'label_name_weight': 1.0}
            >>> trainer.save_model()   # adaptation_config.json holds the chosen settings
            ```
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None or isinstance(dataset, dict):
            raise ValueError(
                "`select_adaptation` needs one episode dataset: pass `eval_dataset=` (validation episodes of "
                f"held-out source classes); the trainer's `eval_dataset` is {type(dataset).__name__}."
            )
        _check_episode_dataset("eval_dataset", dataset)
        combinations = grid_combinations(grid)
        names = getattr(self.data_collator, "use_label_names", self.args.use_label_names)
        check_sweepable(
            grid, self.adaptation_config, names_in_collator=names, learned_inner_loop=bool(self.inner_loop)
        )
        if len(combinations) > 64:
            logger.warning(f"`select_adaptation` scores {len(combinations)} combinations; each adapts every episode.")
        self.model.eval()
        meta = dict(meta_parameters(self.model))
        episodes = [self._prepare_inputs(batch) for batch in self.get_eval_dataloader(dataset)]
        scores = []
        embedded_at: dict[float, list] = {}  # per adapter strength: the settings swept here never change them
        for settings in combinations:
            config = dataclasses.replace(self.adaptation_config, **settings)  # validated in __post_init__
            if shares_encoder_passes(config, self.inner_loop):
                strength = config.episode_strength()
                if strength not in embedded_at:
                    embedded_at[strength] = [
                        embedded
                        for group in _groups(episodes, EVAL_EPISODES_PER_PASS)
                        for embedded in episode_embeddings(self.encoder, meta, group, config)
                    ]
                embedded, logits_per_episode = embedded_at[strength], []
                for start in range(0, len(episodes), EVAL_EPISODES_PER_PASS):  # the heads of a group in one fit
                    group = slice(start, start + EVAL_EPISODES_PER_PASS)
                    logits_per_episode += query_logits_from_embeddings(embedded[group], episodes[group], config)
            else:
                logits_per_episode = [
                    episode_query_logits(self.encoder, meta, inputs, config, self.inner_loop) for inputs in episodes
                ]
            accuracies = [
                task_accuracy(logits, inputs["query_labels"]) for logits, inputs in zip(logits_per_episode, episodes)
            ]
            accuracies = self.accelerator.gather_for_metrics(accuracies, use_gather_object=True)
            scores.append({"settings": settings, "accuracy": float(np.mean(accuracies))})
            logger.info(f"select_adaptation: {settings} -> query accuracy {scores[-1]['accuracy']:.4f}")
        best = max(scores, key=lambda row: row["accuracy"])  # the first of equal scores
        self.adaptation_config = dataclasses.replace(self.adaptation_config, **best["settings"])
        logger.info(f"select_adaptation kept {best['settings']} (query accuracy {best['accuracy']:.4f})")
        return {"best": best["settings"], "accuracy": best["accuracy"], "scores": scores}

    # ---- Saving ---------------------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the LoRA adapter (safetensors), the tokenizer, `adaptation_config.json` and the training
        arguments as JSON (never a pickle), atomically."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        _check_finite_weights(meta_parameters(self.model), "at save")
        with atomic_directory(output_dir) as staging:
            # The embeddings are never trained; without this peft looks the base model up on the Hub to decide.
            self.model.save_pretrained(staging, state_dict=state_dict, save_embedding_layers=False)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(staging)
            (staging / TRAINING_ARGS_JSON).write_text(self.args.to_json_string(), encoding="utf-8")
            self.saved_adaptation_config().save_pretrained(staging)
            if self.inner_loop is not None:
                self.inner_loop.save_pretrained(staging)
        logger.info(f"Saved the meta-initialised adapter and its adaptation settings to {output_dir}")

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`Trainer.train`; `resume_from_checkpoint=True` picks the newest checkpoint whose save finished."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(
                    f"`resume_from_checkpoint=True` found no complete checkpoint in `output_dir` "
                    f"{self.args.output_dir!r}; train from the start (`resume_from_checkpoint=None`) or pass a path."
                )
        if isinstance(resume_from_checkpoint, str | os.PathLike):
            check_checkpoint(resume_from_checkpoint)  # a damaged file named here, not deep in torch.load
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """The Trainer's resume (adapter weights; the optimizer and scheduler follow), plus the learned inner loop,
        which lives beside the model: without it a resumed run would restart its step sizes from the config."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_inner_loop(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """The Trainer's `load_best_model_at_end` (the best checkpoint's adapter), with that checkpoint's learned
        inner loop: the best LoRA weights must not be saved beside the last step's step sizes."""
        if self.state.best_model_checkpoint is not None:
            check_checkpoint(self.state.best_model_checkpoint)
        super()._load_best_model()
        if self.state.best_model_checkpoint is not None:
            self._load_inner_loop(self.state.best_model_checkpoint)

    def _load_inner_loop(self, resume_from_checkpoint: str) -> None:
        if self.inner_loop is None:
            return
        saved = LearnedInnerLoop.from_pretrained(resume_from_checkpoint)
        if saved.names != self.inner_loop.names:
            raise ValueError(
                f"The learned inner loop in {resume_from_checkpoint} sizes other tensors ({len(saved.names)}) than "
                f"this run's LoRA adapter ({len(self.inner_loop.names)}); resume with the LoRA config it was saved "
                "with."
            )
        with torch.no_grad():
            for name, param in self.inner_loop.named_parameters():
                param.copy_(getattr(saved, name).reshape(param.shape))
        logger.info(f"Resumed the learned inner loop from {resume_from_checkpoint}")

    def saved_adaptation_config(self) -> AdaptationConfig:
        """The settings written beside the adapter: with a learned inner loop, its logit scale."""
        if self.inner_loop is None:
            return self.adaptation_config
        return self.inner_loop.adaptation_config(self.adaptation_config)

    def create_model_card(
        self,
        model_name: str | None = None,
        tags: str | list[str] | None = None,
        *,
        datasets: str | list[str] | None = None,
        results: list[dict] | None = None,
        results_description: str = "",
        plot_file: str | None = None,
        **kwargs,
    ) -> None:
        """Write `README.md`: the card template with `base_model`, `library_name: peft`, settings and results.

        `Trainer.push_to_hub(**kwargs)` forwards its keyword arguments here, so a script passes what the card
        reports: `datasets` (the meta-training collections' Hub ids), `results` (rows with `dataset`, `shots`,
        `method`, `accuracy`, `ci95`), `results_description` and `plot_file` (an image in `output_dir`). Without
        `results`, the last `trainer.evaluate()` is reported. Other keyword arguments are ignored, as in `Trainer`.
        """
        if not self.is_world_process_zero():
            return
        results = list(results or [])
        last_eval = next((log for log in reversed(self.state.log_history) if "eval_accuracy" in log), None)
        if not results and last_eval is not None:
            results = [
                {
                    "dataset": "evaluation episodes",
                    "shots": "episodic",
                    "method": f"hf_meta_{'multitask' if self.multitask is not None else self.args.algorithm}",
                    "accuracy": last_eval["eval_accuracy"],
                    "ci95": last_eval.get("eval_accuracy_ci95"),
                }
            ]
        if plot_file is not None and not os.path.isfile(os.path.join(self.args.output_dir, plot_file)):
            raise FileNotFoundError(
                f"`plot_file` {plot_file!r} is not a file in `output_dir` {self.args.output_dir!r}."
            )
        max_steps = self.state.max_steps or self.args.max_steps
        training = (
            f"{max_steps} meta-steps of {self.args.gradient_accumulation_steps * self.args.world_size} "
            f"episodes, outer learning rate {self.args.learning_rate}"
        )
        if self.multitask is not None:
            training = (
                f"{self.multitask['sentences']} labelled sentences of {self.multitask['collections']} collections, "
                f"{self.multitask['batch_size']} texts of one collection per step, cross-entropy over that "
                f"collection's classes, learning rate {self.multitask['learning_rate']}"
            )
        card = render_model_card(
            adaptation_config=self.saved_adaptation_config(),
            learned_inner_loop=self.inner_loop.summary() if self.inner_loop is not None else None,
            algorithm="multitask" if self.multitask is not None else self.args.algorithm,
            collections=[datasets] if isinstance(datasets, str) else list(datasets or []),
            results=results,
            results_description=results_description,
            repo_id=self.hub_model_id if getattr(self, "hub_model_id", None) else self.args.hub_model_id,
            model_name=model_name,
            training=training,
            plot_file=plot_file,
            extra_tags=[tags] if isinstance(tags, str) else list(tags or []),
        )
        card.save(os.path.join(self.args.output_dir, "README.md"))


def _splits(dataset) -> list:
    return list(dataset.values()) if isinstance(dataset, dict) else [dataset]


def _check_finite_weights(weights: dict[str, torch.Tensor], when: str) -> None:
    bad = non_finite(weights)
    if bad:
        raise FloatingPointError(
            f"{len(bad)} LoRA tensor(s) hold NaN or inf {when} (e.g. {bad[0]}): meta-training diverged; lower the "
            "outer `learning_rate` or the `inner_learning_rate`, or set `max_grad_norm`."
        )


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


def _groups(items, size: int):
    """Consecutive lists of `size` items (the last one shorter) from any iterable, e.g. a dataloader."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
