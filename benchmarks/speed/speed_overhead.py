"""Overhead of `MetaTrainer` over the compute it cannot avoid.

`overhead_ratio` = seconds per meta-training episode of `MetaTrainer` / seconds of exactly the forward and backward
passes that episode needs (the inner SGD steps on the support set, then one query pass), run bare on pre-tokenised
tensors. 5-way 5-shot 5-query CLINC150 episodes; medians over `--episodes` episodes per round, two alternating
rounds of (trainer, bare) so that neither always runs first on a cold process. Both use the prototype head adapted
by SGD (`head_fit_steps=0`); the trainer with the fitted head (the default) is timed beside them.

    python benchmarks/speed/speed_overhead.py
    python benchmarks/speed/speed_overhead.py --quick --output outputs/speed.json   # smoke run

Writes the `overhead` part and `overhead_ratio` of `benchmarks/speed/results/speed.json` (other parts are kept).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import torch
import torch.nn.functional as F
from _common import (
    make_parser,
    make_trainer,
    median,
    merge_json,
    parse,
    peak_rss_mb,
    print_table,
    speed_setup,
    trainer_seconds_per_episode,
)

from hf_meta.adaptation_config import AdaptationConfig
from hf_meta.episode_collator import EpisodeCollator, split_episode
from hf_meta.modeling import meta_parameters

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files


def bare_seconds_per_episode(trainer, episodes) -> list[float]:
    """The inner steps and the query pass of every episode but the first, as plain autograd calls."""
    peft_model = trainer.model.eval()
    params = list(meta_parameters(peft_model).values())
    collator = EpisodeCollator(
        trainer.processing_class, AdaptationConfig(max_length=trainer.args.max_length, use_label_names=False)
    )
    hidden_size = peft_model.config.hidden_size

    def embed(batch):
        hidden = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    seconds = []
    for row in episodes.select(range(1, len(episodes))):
        batch = collator([row])  # tokenised outside the timed region
        support, query = split_episode(batch, "support"), split_episode(batch, "query")
        head = torch.randn(int(batch["num_classes"]), hidden_size, requires_grad=True)
        start = time.perf_counter()
        for _ in range(trainer.args.inner_steps):
            loss = F.cross_entropy(20 * embed(support) @ head.T, support["labels"])
            torch.autograd.grad(loss, [*params, head])
        loss = F.cross_entropy(20 * embed(query) @ head.T, query["labels"])
        torch.autograd.grad(loss, params)
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "speed.json")
    parser.add_argument("--episodes", type=int, default=10, help="Timed episodes per round (after one warm-up).")
    args = parse(parser, argv, quick=dict(episodes=1))
    torch.manual_seed(0)

    trainer_s, bare_s = [], []
    for _ in range(2):
        model, tokenizer, lora, episodes = speed_setup(args, num_episodes=args.episodes + 1)
        trainer = make_trainer(model, tokenizer, lora, episodes, "bench_overhead")
        trainer_s += trainer_seconds_per_episode(trainer)
        bare_s += bare_seconds_per_episode(trainer, episodes)
    model, tokenizer, lora, episodes = speed_setup(args, num_episodes=args.episodes + 1)
    fitted = make_trainer(model, tokenizer, lora, episodes, "bench_overhead", head_fit_steps=100)
    result = {
        "trainer_seconds_per_episode_fitted_head": median(trainer_seconds_per_episode(fitted)),
        "trainer_seconds_per_episode": median(trainer_s),
        "bare_seconds_per_episode": median(bare_s),
        "overhead_ratio": median(trainer_s) / median(bare_s),
        "episodes": len(bare_s),
        "peak_rss_mb": peak_rss_mb(),
    }
    print_table([{"measurement": key, "value": value} for key, value in result.items()], ["measurement", "value"])
    merge_json(args.output, "overhead", result, {"overhead_ratio": result["overhead_ratio"]})


if __name__ == "__main__":
    main()
