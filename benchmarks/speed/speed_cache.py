"""The frozen-layer cache in meta-training: LoRA on the top 2 layers with the cache against without it.

With LoRA only in the top layers, the layers below never change during an episode; the encoder computes their
output once per episode and reuses it in every inner step (`FunctionalEncoder.frozen_depth`). Three settings, each
timed as the median seconds per 5-way 5-shot 5-query CLINC150 meta-training episode over `--episodes`:
LoRA on every layer, LoRA on the top 2 layers without the cache, and with it. The cache changes speed only, so the
fresh-adapter accuracy on `--accuracy_episodes` held-out episodes is measured for the two placements, not twice.

- `top_layer_cache_speedup`: top-2 seconds without the cache / with it;
- `top2_vs_all_layers_speedup`: all-layers seconds / top-2 seconds with the cache.

    python benchmarks/speed/speed_cache.py
    python benchmarks/speed/speed_cache.py --quick --output outputs/speed.json   # smoke run

Writes the `cache` part and `top_layer_cache_speedup` of `benchmarks/speed/results/speed.json` (other parts kept).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import torch
from _common import (
    data_dir,
    make_parser,
    make_trainer,
    median,
    merge_json,
    parse,
    print_table,
    speed_setup,
    trainer_seconds_per_episode,
)

from hf_meta.bench.protocols import intent_episodes

RESULTS = Path(__file__).resolve().parent / "results"  # this folder's results files

SETTINGS = (("all_layers", None, True), ("top2_no_cache", 2, False), ("top2_cache", 2, True))


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "speed.json")
    parser.add_argument("--episodes", type=int, default=10, help="Timed episodes per setting (after one warm-up).")
    parser.add_argument("--accuracy_episodes", type=int, default=40, help="Held-out episodes for the accuracy.")
    args = parse(parser, argv, quick=dict(episodes=1, accuracy_episodes=2))
    torch.manual_seed(0)

    held_out = intent_episodes(
        ["clinc150"], data_dir(args), args.accuracy_episodes, n_way=5, k_shot=5, num_query=5, seed=7
    )
    result, rows = {}, []
    for name, top_layers, cache in SETTINGS:
        model, tokenizer, lora, episodes = speed_setup(args, num_episodes=args.episodes + 1, top_layers=top_layers)
        trainer = make_trainer(model, tokenizer, lora, episodes, f"bench_{name}")
        if not cache:
            trainer.encoder.frozen_depth = 0  # the plain path: every inner step recomputes the lower layers
        row = {"setting": name}
        if cache:  # before meta-training: the fresh adapter
            accuracy = trainer.evaluate(held_out)["eval_accuracy"]
            result[f"{name}_fresh_adapter_accuracy"] = row["fresh_adapter_accuracy"] = accuracy
        result[name] = row["seconds_per_episode"] = median(trainer_seconds_per_episode(trainer))
        rows.append(row)
    result["top_layer_cache_speedup"] = result["top2_no_cache"] / result["top2_cache"]
    result["top2_vs_all_layers_speedup"] = result["all_layers"] / result["top2_cache"]
    result["episodes"] = args.episodes
    print_table(rows, ["setting", "seconds_per_episode", "fresh_adapter_accuracy"])
    print(f"top_layer_cache_speedup {result['top_layer_cache_speedup']:.3f}")
    print(f"top2_vs_all_layers_speedup {result['top2_vs_all_layers_speedup']:.3f}")
    merge_json(args.output, "cache", result, {"top_layer_cache_speedup": result["top_layer_cache_speedup"]})


if __name__ == "__main__":
    main()
