"""Model cards for meta-initialised adapters and fitted classifiers, rendered from the Jinja templates shipped in
`hf_meta/templates/`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .adaptation_config import AdaptationConfig

TEMPLATE_NAME = "hf_meta_adapter.md"
CLASSIFIER_TEMPLATE_NAME = "hf_meta_classifier.md"
ALGORITHM_NAMES = {
    "fomaml": "first-order MAML",
    "reptile": "Reptile",
    "multitask": "supervised multitask transfer",  # `MetaTrainer.train_multitask`: no meta-learning
}
TAGS = ["hf_meta", "few-shot", "lora", "peft", "text-classification"]


def template_path(name: str = TEMPLATE_NAME) -> str:
    """The path of a card template, package data of `hf_meta` (`hf_meta/templates/<name>`)."""
    return str(resources.files("hf_meta").joinpath("templates", name))


def render_model_card(
    *,
    adaptation_config: AdaptationConfig,
    algorithm: str,
    collections: Sequence[str] = (),
    results: Sequence[dict] = (),
    results_description: str = "",
    repo_id: str | None = None,
    model_name: str | None = None,
    training: str = "",
    plot_file: str | None = None,
    extra_tags: Sequence[str] = (),
    learned_inner_loop: dict[str, float] | None = None,
) -> ModelCard:
    """Fill the template with the adapter's settings and measured results.

    Args:
        learned_inner_loop: the meta-learned step sizes by tensor name and `logit_scale`
            ([`LearnedInnerLoop.summary`]), listed in their own table.
        results: rows with `dataset`, `shots`, `method`, `accuracy` and `ci95` (fractions, not percents).
        plot_file: an image beside the card (e.g. accuracy against shots), linked from the results section.
    """
    base_model = adaptation_config.base_model
    if not base_model or os.path.isdir(base_model):
        raise ValueError(
            f"The card needs the base model's Hub id, got {base_model!r}; pass `base_model=` to "
            "`MetaTrainingArguments`."
        )
    method_tags = {"fomaml": ["meta-learning", "maml"], "reptile": ["meta-learning"]}.get(algorithm, [])
    tags = list(dict.fromkeys([*TAGS, *method_tags, algorithm, *extra_tags]))
    card_data = ModelCardData(
        base_model=base_model,
        library_name="peft",
        pipeline_tag="text-classification",
        datasets=list(collections) or None,
        tags=tags,
        model_name=model_name,
    )
    return ModelCard.from_template(
        card_data,
        template_path=template_path(),
        model_name=model_name or repo_id or "hf_meta adapter",
        base_model=base_model,
        repo_id=repo_id or "path/to/adapter",
        algorithm_name=ALGORITHM_NAMES.get(algorithm, algorithm),
        meta_learned=algorithm != "multitask",
        collections=list(collections),
        training=training,
        adaptation={k: v for k, v in adaptation_config.to_dict().items() if k != "base_model"},
        results=[dict(row) for row in results],
        results_description=results_description,
        plot_file=plot_file,
        learned_inner_loop=_short_names(learned_inner_loop),
    )


CLASSIFIER_TAGS = ["hf_meta", "few-shot", "lora", "peft", "text-classification"]


def render_classifier_card(
    *,
    adaptation_config: AdaptationConfig,
    base_model: str,
    classes: Sequence,
    shots: Sequence[int] | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    eval_results: dict | None = None,
    eval_description: str = "",
    datasets: Sequence[str] = (),
    extra_tags: Sequence[str] = (),
    learned_inner_loop: dict[str, float] | None = None,
    adapter_strength: float | None = None,
    cv_accuracy: float | None = None,
    multi_label: dict | None = None,
) -> ModelCard:
    """The card of a fitted [`FewShotClassifier`]: labels, shots per class, adaptation settings, evaluation.

    Args:
        base_model: the base encoder's Hub id (a local path is refused: the card's metadata must name the Hub).
        classes / shots: the labels and how many labelled examples of each `fit` saw.
        eval_results: scores to report, e.g. the dict returned by `clf.evaluate(texts, labels)`.
        eval_description: how it was evaluated (data, split, protocol), shown above the scores.
        learned_inner_loop: the meta-learned step sizes by tensor name and `logit_scale` that `fit` used
            ([`LearnedInnerLoop.summary`]), listed under the settings.
        adapter_strength / cv_accuracy: the share of the meta-learned LoRA delta `fit` used and, when it was
            chosen by cross-validation on the labelled examples, that cross-validated accuracy.
        multi_label: for a multi-label classifier, [`MultiLabelHead.summary`]: the default threshold, the classes
            with their own, and the cross-validated estimates; the card then describes the one-vs-rest head and
            its evaluation table shows micro-F1, macro-F1 and subset accuracy (from `eval_results`).

    Example:
        ```python
        >>> card = render_classifier_card(adaptation_config=clf.adaptation_config, base_model="org/encoder",
        ...                               classes=clf.classes_, shots=clf.shots_, repo_id="me/my-classifier")
        >>> card.save("README.md")
        ```
    """
    if not base_model or os.path.isdir(base_model) or os.path.isabs(base_model):
        raise ValueError(
            f"The card needs the base model's Hub id, got {base_model!r}; pass `base_model=` (e.g. "
            "`clf.push_to_hub(repo_id, base_model='org/encoder')`)."
        )
    classes = list(classes)
    shots = list(shots) if shots is not None else [None] * len(classes)
    card_data = ModelCardData(
        base_model=base_model,
        library_name="peft",
        pipeline_tag="text-classification",
        datasets=list(datasets) or None,
        tags=list(dict.fromkeys([*CLASSIFIER_TAGS, *(["multi-label"] if multi_label else []), *extra_tags])),
        model_name=model_name,
    )
    return ModelCard.from_template(
        card_data,
        template_path=template_path(CLASSIFIER_TEMPLATE_NAME),
        model_name=model_name or repo_id or "hf_meta few-shot classifier",
        base_model=base_model,
        repo_id=repo_id or "path/to/classifier",
        classes=classes,
        labels=list(zip(classes, shots)),
        num_examples=sum(s for s in shots if s is not None) if any(s is not None for s in shots) else "a few",
        adaptation={k: v for k, v in adaptation_config.to_dict().items() if k != "base_model"},
        eval_results=dict(eval_results or {}),
        eval_description=eval_description,
        learned_inner_loop=_short_names(learned_inner_loop),
        adapter_strength=adapter_strength,
        cv_accuracy=None if cv_accuracy is None else f"{100 * cv_accuracy:.1f}%",
        multi_label=_multi_label_rows(multi_label),
        eval_rows=_eval_rows(eval_results, bool(multi_label)),
    )


MULTI_LABEL_METRICS = {
    "micro_f1": "micro-F1",
    "macro_f1": "macro-F1",
    "subset_accuracy": "subset accuracy (exact label set)",
    "subset_accuracy_ci95": "subset accuracy, 95% CI half-width",
    "num_examples": "test texts",
}


def _eval_rows(eval_results: dict | None, multi_label: bool) -> list[tuple[str, Any]]:
    """The evaluation table: for a multi-label classifier its three scores first, under readable names."""
    results = dict(eval_results or {})
    if not multi_label:
        return list(results.items())
    first = [(MULTI_LABEL_METRICS[key], _shown(results.pop(key))) for key in MULTI_LABEL_METRICS if key in results]
    return first + [(key, _shown(value)) for key, value in results.items()]


def _shown(value: Any) -> Any:
    return f"{value:.4f}" if isinstance(value, float) else value


def _multi_label_rows(summary: dict | None) -> dict | None:
    """The multi-label section: the default threshold, how it was set, the per-class exceptions."""
    if not summary:
        return None
    estimates = {key: _shown(summary[key]) for key in ("cv_macro_f1", "cv_micro_f1", "cv_examples") if key in summary}
    return {
        "default_threshold": _shown(float(summary["default_threshold"])),
        "chosen": bool(summary.get("chosen")),
        "per_class": {str(c): _shown(float(t)) for c, t in (summary.get("per_class") or {}).items()},
        "estimates": estimates,
    }


def _short_names(learned: dict[str, float] | None) -> dict[str, float] | None:
    """Tensor names without peft's wrapper prefix and adapter suffix, so the table stays readable."""
    if not learned:
        return None
    return {name.removeprefix("base_model.model.").replace(".default.weight", ""): v for name, v in learned.items()}
